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

`scan_stacks=True` computes the same function with `nn.scan` over stacks 1..n-1 (their
parameters stacked on a leading axis, under `stacks/`), the last stack apart (it has no
back-projections): XLA compiles one stack instead of n, so compilation no longer grows
with the depth of the network. `remat=True` recomputes each stack's activations in the
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


class _Stack(nn.Module):
  """One stack after the stem (the scanned layout's unit): hourglass, residuals, lin, the
  heatmaps, and, unless it is the last, the back-projections into the next stack's input.

  Its submodules' names are the per-stack names without the `stack_<s>_` prefix
  (`_PER_STACK_NAMES` maps them).
  """
  num_joints: int
  features: int
  depth: int
  num_modules: int
  train: bool
  project_back: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, inter, _=None):
    """inter (B, h, w, F) -> (the next stack's input (B, h, w, F), heatmaps (B, h, w, J))."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = Hourglass(self.depth, self.features, self.num_modules,
                  bn_axis_name=self.bn_axis_name, name="hourglass", **kw)(inter, self.train)
    for i in range(self.num_modules):
      y = layers.PreActBottleneck(self.features, bn_axis_name=self.bn_axis_name,
                                  name=f"res_{i}", **kw)(y, self.train)
    y = layers.Conv1x1(self.features, name="lin", **kw)(y)
    y = nn.relu(layers.batch_norm(self.train, axis_name=self.bn_axis_name, name="lin_bn",
                                  **kw)(y))
    heatmaps = layers.Conv1x1(self.num_joints, name="out", **kw)(y)
    if self.project_back:
      inter = (inter + layers.Conv1x1(self.features, name="feat_back", **kw)(y)
               + layers.Conv1x1(self.features, name="heat_back", **kw)(heatmaps))
    return inter, heatmaps


def _per_stack_name(scanned_name: str, s: int) -> str:
  """A `_Stack` submodule's name -> its name in the per-stack layout of stack `s`."""
  return f"hourglass_{s}" if scanned_name == "hourglass" else f"stack_{s}_{scanned_name}"


def _split_stack_name(name: str):
  """'hourglass_3' -> (3, 'hourglass'); 'stack_3_lin_bn' -> (3, 'lin_bn'); stem -> None."""
  match = re.fullmatch(r"hourglass_(\d+)|stack_(\d+)_(.+)", name)
  if match is None:
    return None
  if match.group(1) is not None:
    return int(match.group(1)), "hourglass"
  return int(match.group(2)), match.group(3)


def stack_variables(variables: dict, num_stacks: int) -> dict:
  """Per-stack layout (`scan_stacks=False`) -> scanned layout (`scan_stacks=True`).

  Every collection (params, batch_stats) of stacks 0..n-2 is stacked on a new leading
  axis under `stacks/`; stack n-1's goes under `last_stack/`; the stem is unchanged.
  """
  out = {}
  for collection, tree in variables.items():
    stem, per_stack = {}, [{} for _ in range(num_stacks)]
    for name, sub in tree.items():
      split = _split_stack_name(name)
      if split is None:
        stem[name] = sub
      else:
        per_stack[split[0]][split[1]] = sub
    if num_stacks > 1:
      stem["stacks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_stack[:-1])
    stem["last_stack"] = per_stack[-1]
    out[collection] = stem
  return out


def unstack_variables(variables: dict, num_stacks: int) -> dict:
  """Scanned layout -> per-stack layout (the inverse of `stack_variables`)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    stacked, last = tree.pop("stacks", {}), tree.pop("last_stack")
    for s in range(num_stacks - 1):
      for name, sub in stacked.items():
        tree[_per_stack_name(name, s)] = jax.tree.map(lambda x, s=s: x[s], sub)
    for name, sub in last.items():
      tree[_per_stack_name(name, num_stacks - 1)] = sub
    out[collection] = tree
  return out


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
      y = Hourglass(self.depth, self.num_features, self.num_modules,
                    bn_axis_name=self.bn_axis_name, name=f"hourglass_{s}", **kw)(inter, train)
      for i in range(self.num_modules):
        y = res(self.num_features, f"stack_{s}_res_{i}")(y, train)
      y = layers.Conv1x1(self.num_features, name=f"stack_{s}_lin", **kw)(y)
      y = nn.relu(bn(f"stack_{s}_lin_bn")(y))
      heatmaps = layers.Conv1x1(self.num_joints, name=f"stack_{s}_out", **kw)(y)
      outputs.append(heatmaps)
      if s < self.num_stacks - 1:
        inter = (inter
                 + layers.Conv1x1(self.num_features, name=f"stack_{s}_feat_back", **kw)(y)
                 + layers.Conv1x1(self.num_features, name=f"stack_{s}_heat_back",
                                  **kw)(heatmaps))
    return layers.stage_list(outputs)

  def _scanned_stacks(self, inter, train):
    """Stacks 0..n-2 as one `nn.scan`, then the last; -> list over stacks of heatmaps."""
    kw = dict(num_joints=self.num_joints, features=self.num_features, depth=self.depth,
              num_modules=self.num_modules, train=train, dtype=self.dtype,
              param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    outputs = []
    if self.num_stacks > 1:
      stack = nn.remat(_Stack) if self.remat else _Stack
      scanned = nn.scan(stack, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, length=self.num_stacks - 1)
      inter, heatmaps = scanned(name="stacks", **kw)(inter, None)
      outputs = list(heatmaps)  # (n-1, B, h, w, J) -> n-1 arrays.
    last = (nn.remat(_Stack) if self.remat else _Stack)(project_back=False,
                                                        name="last_stack", **kw)
    outputs.append(last(inter)[1])
    return outputs
