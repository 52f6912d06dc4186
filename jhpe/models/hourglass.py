"""Stacked Hourglass Networks (Newell, Yang and Deng, ECCV 2016).

Follows the authors' released Torch code (`umich-vl/pose-hg-train`, `src/models/hg.lua`
and `layers/Residual.lua`) layer for layer:

  stem:  conv 7x7/2 (64) - BN - ReLU, residual(64 -> 128), maxpool 2x2/2,
         residual(128 -> 128), residual(128 -> F)            (S -> S/4)
  stack: hourglass(depth, F), num_modules x residual(F), lin = 1x1 conv (F) - BN - ReLU,
         1x1 conv -> J heatmaps (the stack's output);
         between stacks: inter <- inter + 1x1(lin) + 1x1(heatmaps).
  hourglass(n): up1 = num_modules x residual(x); low = maxpool(x), num_modules x residual,
         hourglass(n - 1) (or num_modules x residual at n = 1), num_modules x residual,
         nearest 2x upsampling; return up1 + low.

Residuals are `layers.PreActBottleneck`. Every stack has its own parameters (no sharing).
With 8 stacks, F = 256, J = 16 the model has 25.1M parameters (HRNet paper, Table 4).

`scan_stacks=True` computes the same function with `nn.scan` over all n stacks (their
parameters stacked on a leading axis under `stacks/`; the back-projections of stacks
0..n-2 under `back_projections/`, the last stack projecting with zeros into a carry nothing
reads, so that every stack is the same computation): XLA compiles one stack instead of n,
so compilation no longer grows with the depth of the network, and the program it loads
from the compilation cache is small. `remat=True` recomputes each stack's activations in the
backward pass (memory for compute, for large batches on accelerators). The two layouts
hold the same numbers: `stack_variables` / `unstack_variables` convert a variables dict
either way, so checkpoints of either layout serve research code that expects per-stack
names (`hourglass_3`, `stack_3_out`, ...).
"""

import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jhpe.models import layers

Dtype = Any


class Hourglass(nn.Module):
  """One recursive hourglass of `depth` levels (`hourglass(n, f, inp)` in hg.lua)."""
  depth: int
  features: int
  num_modules: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def _residuals(self, x, train, prefix):
    for i in range(self.num_modules):
      x = layers.PreActBottleneck(
          self.features, dtype=self.dtype, param_dtype=self.param_dtype,
          bn_axis_name=self.bn_axis_name, name=f"{prefix}_{i}")(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool):
    """(B, H, W, F) -> (B, H, W, F); H and W divisible by 2**depth."""
    up1 = self._residuals(x, train, "up1")
    low = layers.max_pool(x, 2, 2, padding="VALID")
    low = self._residuals(low, train, "low1")
    if self.depth > 1:
      low = Hourglass(self.depth - 1, self.features, self.num_modules, dtype=self.dtype,
                      param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name,
                      name="inner")(low, train)
    else:
      low = self._residuals(low, train, "low2")
    low = self._residuals(low, train, "low3")
    return up1 + layers.upsample_nearest(low, 2)


def _per_stack_name(sub_name: str, s: int) -> str:
  """A stack's layer name in the per-stack layout: 'hourglass' -> 'hourglass_3',
  'lin_bn' -> 'stack_3_lin_bn' (the released code's names)."""
  return f"hourglass_{s}" if sub_name == "hourglass" else f"stack_{s}_{sub_name}"


def _split_stack_name(name: str):
  """The inverse of `_per_stack_name`: 'stack_3_lin_bn' -> (3, 'lin_bn'); stem -> None."""
  match = re.fullmatch(r"hourglass_(\d+)|stack_(\d+)_(.+)", name)
  if match is None:
    return None
  if match.group(1) is not None:
    return int(match.group(1)), "hourglass"
  return int(match.group(2)), match.group(3)


def _stack_layers(module, inter, train, name_of):
  """One stack after the stem, its layers created in `module` under `name_of(layer)`:
  hourglass, residuals, lin and the heatmaps.

  inter (B, h, w, F) -> (lin's features y (B, h, w, F), heatmaps (B, h, w, J)).
  """
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  features, axis = module.num_features, module.bn_axis_name
  y = Hourglass(module.depth, features, module.num_modules, bn_axis_name=axis,
                name=name_of("hourglass"), **kw)(inter, train)
  for i in range(module.num_modules):
    y = layers.PreActBottleneck(features, bn_axis_name=axis, name=name_of(f"res_{i}"),
                                **kw)(y, train)
  y = layers.Conv1x1(features, name=name_of("lin"), **kw)(y)
  y = nn.relu(layers.batch_norm(train, axis_name=axis, name=name_of("lin_bn"), **kw)(y))
  return y, layers.Conv1x1(module.num_joints, name=name_of("out"), **kw)(y)


_BACK_PROJECTIONS = ("feat_back", "heat_back")


def _back_project(module, inter, y, heatmaps, name_of):
  """The next stack's input: inter + 1x1(y) + 1x1(heatmaps), (B, h, w, F)."""
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  feat_back, heat_back = (layers.Conv1x1(module.num_features, name=name_of(n), **kw)
                          for n in _BACK_PROJECTIONS)
  return inter + feat_back(y) + heat_back(heatmaps)


class _BackProjection(nn.Module):
  """The back-projections of one stack, applied inside the scan from its parameters."""
  num_features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inter, y, heatmaps):
    return _back_project(self, inter, y, heatmaps, lambda name: name)


class _Stack(nn.Module):
  """A stack, the unit `nn.scan` repeats (layers named without the `stack_<s>_` prefix).

  Its back-projections' parameters come in with the scanned inputs rather than being
  created here: the last stack has none (zeros stand in), so every stack, the last
  included, is the same computation.
  """
  num_joints: int
  num_features: int
  depth: int
  num_modules: int
  train: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, inter, back_projection):
    y, heatmaps = _stack_layers(self, inter, self.train, lambda name: name)
    projection = _BackProjection(self.num_features, self.dtype, self.param_dtype, parent=None)
    return projection.apply({"params": back_projection}, inter, y, heatmaps), heatmaps


def _split_back_projection_name(name: str):
  """'stack_3_feat_back' -> (3, 'feat_back'); every other layer -> None."""
  split = _split_stack_name(name)
  return split if split is not None and split[1] in _BACK_PROJECTIONS else None


def stack_variables(variables: dict, num_stacks: int) -> dict:
  """Per-stack layout (`scan_stacks=False`) -> scanned layout (`scan_stacks=True`).

  Every collection (params, batch_stats) of all n stacks is stacked on a new leading
  axis under `stacks/`, except the back-projections of stacks 0..n-2, stacked under
  `back_projections/` (the last stack has none); the stem keeps its names.
  """
  def stack(tree):
    tree = layers.stack_groups(tree, _split_back_projection_name, num_stacks - 1,
                               "back_projections")
    return layers.stack_groups(tree, _split_stack_name, num_stacks, "stacks")
  return {collection: stack(tree) for collection, tree in variables.items()}


def unstack_variables(variables: dict, num_stacks: int) -> dict:
  """Scanned layout -> per-stack layout (the inverse of `stack_variables`)."""
  def unstack(tree):
    tree = layers.unstack_groups(tree, _per_stack_name, num_stacks, "stacks")
    return layers.unstack_groups(tree, _per_stack_name, num_stacks - 1, "back_projections")
  return {collection: unstack(tree) for collection, tree in variables.items()}


class StackedHourglass(nn.Module):
  """Stacked hourglass network.

  Attributes:
    num_joints: J, heatmaps per stack.
    num_stacks: hourglasses (8 in the paper).
    num_features: F, channels inside the hourglasses (256).
    depth: recursion depth of each hourglass (4: 64x64 -> 4x4).
    num_modules: residual modules at each point of the hourglass (1 in the released code).
    dtype: compute dtype (e.g. jnp.bfloat16); outputs are float32 whatever it is.
    param_dtype: parameter dtype.
    bn_axis_name: BatchNorm's cross-device axis; None = per-device statistics (the pmap
      train step then averages `batch_stats` over devices itself).
    scan_stacks: `nn.scan` over the stacks (one compiled stack; the scanned parameter
      layout, see `stack_variables`).
    remat: recompute each stack's activations in the backward pass (with scan_stacks).
  """
  num_joints: int = 16
  num_stacks: int = 8
  num_features: int = 256
  depth: int = 4
  num_modules: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  scan_stacks: bool = False
  remat: bool = False

  output_kind = "heatmap"
  output_stride = 4
  background_channel = False  # See `jhpe.codecs.make_codec`.

  def __post_init__(self):
    layers.check_positive("num_joints", self.num_joints)
    layers.check_positive("num_stacks", self.num_stacks)
    layers.check_positive("depth", self.depth)
    layers.check_positive("num_modules", self.num_modules)
    layers.check_positive("num_features", self.num_features)
    if self.num_features % 2:
      raise ValueError(f"num_features must be even (the bottleneck halves it), got "
                       f"{self.num_features}.")
    if self.remat and not self.scan_stacks:
      raise ValueError("remat=True recomputes scanned stacks: it needs scan_stacks=True.")
    super().__post_init__()

  @property
  def num_output_channels(self) -> int:
    return self.num_joints

  @property
  def num_stages(self) -> int:
    return self.num_stacks

  @property
  def input_multiple(self) -> int:
    """Input sides must be multiples of this: stride 4 times 2**depth poolings."""
    return self.output_stride * 2 ** self.depth

  @nn.compact
  def __call__(self, images, train: bool = False):
    """Images (B, H, W, 3) in [0, 1] -> list over stacks of (B, H/4, W/4, J) float32.

    H and W must be multiples of 4 * 2**depth (64 by default).
    """
    x = layers.normalise_images(images, self.dtype)
    height, width = images.shape[1:3]
    m = self.input_multiple
    if height % m or width % m:
      raise ValueError(
          f"images: height and width must be multiples of 4 * 2**depth = {m} for "
          f"depth={self.depth}, got {height}x{width}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res = lambda f, name: layers.PreActBottleneck(  # pylint: disable=g-long-lambda
        f, bn_axis_name=self.bn_axis_name, name=name, **kw)
    bn = lambda name: layers.batch_norm(  # pylint: disable=g-long-lambda
        train, axis_name=self.bn_axis_name, name=name, **kw)

    # Stem: S -> S/4 with F channels.
    x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv", **kw)(x)
    x = nn.relu(bn("stem_bn")(x))
    x = res(128, "stem_res1")(x, train)
    x = layers.max_pool(x, 2, 2, padding="VALID")
    x = res(128, "stem_res2")(x, train)
    inter = res(self.num_features, "stem_res3")(x, train)

    if self.scan_stacks:
      return layers.stage_list(self._scanned_stacks(inter, train))
    outputs = []
    for s in range(self.num_stacks):
      name_of = lambda n, s=s: _per_stack_name(n, s)
      y, heatmaps = _stack_layers(self, inter, train, name_of)
      if s < self.num_stacks - 1:
        inter = _back_project(self, inter, y, heatmaps, name_of)
      outputs.append(heatmaps)
    return layers.stage_list(outputs)

  def _scanned_stacks(self, inter, train):
    """All n stacks as one `nn.scan`; -> list over stacks of heatmaps (B, h, w, J)."""
    projection = _BackProjection(self.num_features, self.dtype, self.param_dtype, parent=None)
    one_stack = lambda rng: projection.init(  # pylint: disable=g-long-lambda
        rng, inter[:1, :1, :1], inter[:1, :1, :1], jnp.zeros((1, 1, 1, self.num_joints)))[
            "params"]
    count = self.num_stacks - 1
    if count:
      back = self.param("back_projections",
                        lambda rng: jax.vmap(one_stack)(jax.random.split(rng, count)))
    else:  # Shapes only: one stack has no back-projection.
      back = jax.tree.map(lambda p: jnp.zeros((0,) + p.shape, p.dtype),
                          jax.eval_shape(one_stack, jax.random.key(0)))
    # The last stack projects with zeros, into a carry nothing reads.
    back = jax.tree.map(lambda p: jnp.concatenate([p, jnp.zeros((1,) + p.shape[1:], p.dtype)]),
                        back)
    stack = nn.remat(_Stack) if self.remat else _Stack
    scanned = nn.scan(stack, variable_axes={"params": 0, "batch_stats": 0},
                      split_rngs={"params": True}, length=self.num_stacks)
    _, heatmaps = scanned(
        self.num_joints, self.num_features, self.depth, self.num_modules, train,
        dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name,
        name="stacks")(inter, back)
    return list(heatmaps)  # (n, B, h, w, J) -> n arrays.
