"""Building blocks shared by the pose models.

Every layer takes `dtype` (the compute dtype, e.g. bfloat16 for mixed precision) and
`param_dtype` (the storage dtype of the parameters, float32 by default), as flax layers do.
Arrays are NHWC throughout.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Torch's BatchNorm momentum 0.1 is flax's 0.9 (flax keeps `momentum` of the old value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_positive(name: str, value: Any, allowed: str = "an integer >= 1") -> None:
  """Raises a ValueError naming `name` unless `value` is a positive integer."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def scaled_channels(channels: int, width: float) -> int:
  """`channels` times the width multiplier, rounded, at least 1 (thin test models)."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, dtype: Dtype, param_dtype: Dtype,
               axis_name: Optional[str] = None, name: Optional[str] = None):
  """BatchNorm with Torch's momentum/epsilon; batch statistics only in train mode.

  With `axis_name=None` (the default) the statistics are per device: the pmap train step
  averages the updated `batch_stats` over devices itself (`jax.lax.pmean`).
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      dtype=dtype, param_dtype=param_dtype, axis_name=axis_name, name=name)


class Conv1x1(nn.Module):
  """A 1x1 convolution written as a Dense layer over the channel axis.

  Same function and parameter count as `nn.Conv(features, (1, 1))` (kernel (C, F) instead
  of (1, 1, C, F)); XLA's CPU backend runs the matmul form about 10% faster, and a
  (B*H*W, C) matrix faster than a (B, H, W, C) array: fwd+bwd of a 256 -> 128 1x1 at
  8x64x64 takes 60 ms instead of 82-90 (benchmarks/README.md, "layer by layer").

  Attributes:
    features: output channels F.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    """(B, H, W, C) -> (B, H, W, F)."""
    dense = nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype,
                     param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                     name="dense")
    return dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.features)


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x, kernel, padding, precision):
  """Stride-1 convolution, x (B, H, W, I) * kernel (kh, kw, I, O) -> (B, H', W', O)."""
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_nhwc_fwd(x, kernel, padding, precision):
  return _conv_nhwc(x, kernel, padding, precision), (x, kernel)


def _conv_nhwc_bwd(padding, precision, residuals, dy):
  x, kernel = residuals
  # Input gradient: dy convolved with the kernel turned 180 degrees, I and O swapped.
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  full = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding)]
  dx = lax.conv_general_dilated(dy, flipped, (1, 1), full, dimension_numbers=_NHWC,
                                precision=precision)
  # Kernel gradient: x's channels as the batch and its batch as the channels, correlated
  # with dy as the kernel: (I, H, W, B) * (H', W', B, O) -> (I, kh, kw, O).
  dk = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
                                padding, dimension_numbers=_NHWC, precision=precision)
  return dx, dk.transpose(1, 2, 0, 3)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_nhwc(inputs, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` whose gradients are convolutions of the same NHWC/HWIO form.

  Why: XLA:CPU runs a convolution with its fast (Eigen) kernels only in that form, and it
  rewrites JAX's gradient convolutions into it only in a program's top level; inside a
  loop (the scanned hourglass stacks, CPM's scanned stages) they ran as plain loops: the
  8-stack scanned train step took 246 s instead of 13 (benchmarks/README.md). Stride 1,
  no dilation or groups, padding within the kernel; anything else goes to lax as it is.
  """
  spatial = kernel.shape[:2]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(inputs.shape[1:3], spatial, window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  plain = (inputs.ndim == 4 and tuple(window_strides) == (1, 1)
           and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and feature_group_count == 1 and lax.conv_dimension_numbers(
               inputs.shape, kernel.shape, _NHWC) == dimension_numbers
           and all(0 <= p < k for (lo, hi), k in zip(padding, spatial) for p in (lo, hi)))
  if plain:
    return _conv_nhwc(inputs, kernel, padding, precision)
  return lax.conv_general_dilated(inputs, kernel, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  precision=precision)


def conv(features: int, kernel: int, dtype: Dtype, param_dtype: Dtype, stride: int = 1,
         padding: Any = "SAME", name: Optional[str] = None, use_bias: bool = True,
         kernel_init: Any = nn.initializers.lecun_normal()):
  """A k x k convolution (k = 1 becomes `Conv1x1`)."""
  if kernel == 1 and stride == 1:
    return Conv1x1(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                   kernel_init=kernel_init, name=name)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=kernel_init, conv_general_dilated=conv_nhwc, name=name)


class PreActBottleneck(nn.Module):
  """The hourglass paper's residual module (Newell et al. 2016, `Residual.lua`).

  Pre-activation bottleneck: BN-ReLU-1x1 (F/2), BN-ReLU-3x3 (F/2), BN-ReLU-1x1 (F), added to
  the input; the skip is a 1x1 projection only where the channel count changes.

  Attributes:
    features: output channels F.
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    """(B, H, W, C) -> (B, H, W, F)."""
    mid = self.features // 2
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = batch_norm(train, axis_name=self.bn_axis_name, name="bn1", **kw)(x)
    y = Conv1x1(mid, name="conv1", **kw)(nn.relu(y))
    y = batch_norm(train, axis_name=self.bn_axis_name, name="bn2", **kw)(y)
    y = conv(mid, 3, name="conv2", **kw)(nn.relu(y))
    y = batch_norm(train, axis_name=self.bn_axis_name, name="bn3", **kw)(y)
    y = Conv1x1(self.features, name="conv3", **kw)(nn.relu(y))
    skip = x
    if x.shape[-1] != self.features:
      skip = Conv1x1(self.features, name="skip", **kw)(x)
    return skip + y


class BasicBlock(nn.Module):
  """ResNet basic block (He et al. 2016): 3x3-BN-ReLU-3x3-BN + (projected) skip, ReLU."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    """(B, H, W, C) -> (B, H/stride, W/stride, F)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = conv(self.features, 3, stride=self.stride, use_bias=False, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(train, axis_name=self.bn_axis_name, name="bn1", **kw)(y))
    y = conv(self.features, 3, use_bias=False, name="conv2", **kw)(y)
    y = batch_norm(train, axis_name=self.bn_axis_name, name="bn2", **kw)(y)
    skip = x
    if self.stride != 1 or x.shape[-1] != self.features:
      skip = nn.Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False,
                     name="proj", **kw)(x)
      skip = batch_norm(train, axis_name=self.bn_axis_name, name="proj_bn", **kw)(skip)
    return nn.relu(skip + y)


def local_response_norm(x, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75):
  """AlexNet's cross-channel local response normalisation (Krizhevsky et al. 2012).

  b_c = a_c / (k + alpha / size * sum_{|c'-c| <= size//2} a_c'^2) ** beta  (Caffe's form).

  Args:
    x: (B, H, W, C).

  Returns:
    (B, H, W, C), same dtype; the sum is computed in float32.
  """
  sq = jnp.square(x.astype(jnp.float32))
  half = size // 2
  padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  channels = x.shape[-1]
  window = sum(padded[..., i:i + channels] for i in range(size))
  return (x / (k + alpha / size * window) ** beta).astype(x.dtype)


def upsample_nearest(x, factor: int = 2):
  """(B, H, W, C) -> (B, factor*H, factor*W, C) by repetition (Torch's UpSamplingNearest)."""
  x = jnp.repeat(x, factor, axis=1)
  return jnp.repeat(x, factor, axis=2)


def normalise_images(images, dtype: Dtype):
  """Images in [0, 1] -> zero-centred inputs in [-0.5, 0.5] of the compute dtype.

  Raises a ValueError unless images are (B, H, W, 3).
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"images must be float (B, H, W, 3) in [0, 1], got shape {tuple(images.shape)}.")
  return (images.astype(jnp.float32) - 0.5).astype(dtype)


def max_pool(x, window: int, stride: int, padding: Any = "SAME"):
  """Max pooling of (B, H, W, C) over `window` x `window` patches every `stride` pixels.

  Non-overlapping pooling (window == stride, H and W divisible by it: the hourglass's 2x2/2)
  is a reshape and a max, whatever `padding` (nothing needs padding). Same values as
  `nn.max_pool`, but its gradient is elementwise, where XLA's CPU backend turns the gradient
  of `reduce_window` into an iota, a second reduce_window and a scatter: ~6% of a 2-stack
  hourglass train step (benchmarks/README.md). Ties split the gradient equally instead of
  all to one element.
  """
  _, height, width, channels = x.shape
  if window == stride and height % window == 0 and width % window == 0:
    patches = x.reshape(-1, height // window, window, width // window, window, channels)
    return jnp.max(patches, axis=(2, 4))
  return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


def stage_list(outputs: Sequence[Any]) -> list:
  """Casts every stage's output to float32 (mixed precision returns f32 outputs)."""
  return [o.astype(jnp.float32) for o in outputs]


def stack_groups(tree: dict, split_name, count: int, stacked_name: str) -> dict:
  """Groups of layers 0..count-1 of `tree` stacked on a leading axis under `stacked_name`
  (the layout `nn.scan` gives repeated stages); every other entry unchanged.

  `split_name(name)` gives (group index, the layer's name inside the group) or None for a
  layer outside every group: `{'stage2_conv': a, 'stage3_conv': b}` with stage t -> t - 2
  becomes `{stacked_name: {'conv': stack([a, b])}}`.
  """
  rest, groups = {}, [{} for _ in range(count)]
  for name, sub in tree.items():
    split = split_name(name)
    if split is None or split[0] >= count:
      rest[name] = sub
    else:
      groups[split[0]][split[1]] = sub
  if count > 0 and any(groups):
    rest[stacked_name] = jax.tree.map(lambda *xs: jnp.stack(xs), *groups)
  return rest


def unstack_groups(tree: dict, name_of, count: int, stacked_name: str) -> dict:
  """The inverse of `stack_groups`; `name_of(layer name, index)` gives the flat name."""
  tree = dict(tree)
  stacked = tree.pop(stacked_name, {})
  for index in range(count):
    for name, sub in stacked.items():
      tree[name_of(name, index)] = jax.tree.map(lambda x, i=index: x[i], sub)
  return tree
