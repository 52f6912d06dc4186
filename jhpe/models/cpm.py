"""Convolutional Pose Machines (Wei, Ramakrishna, Kanade and Sheikh, CVPR 2016).

Follows the released Caffe model (`shihenw/convolutional-pose-machines-release`,
`model/_trained_MPI/pose_deploy.prototxt`, 6 stages, 368x368 input, P = 14 parts). Its layer
list (conv k x k -> channels; every conv but a stage's last is followed by ReLU; pools are
3x3/2 max pools in Caffe's ceil mode, i.e. 'SAME' here):

  centre:  pool_center_lower = avg-pool 9x9/8 of the Gaussian centre map (sigma 21 px)
  stage 1: conv1_stage1 9x9->128, pool, conv2_stage1 9x9->128, pool, conv3_stage1 9x9->128,
           pool, conv4_stage1 5x5->32, conv5_stage1 9x9->512, conv6_stage1 1x1->512,
           conv7_stage1 1x1->P+1
  shared trunk (stage 2's image layers, reused by every stage t >= 2 -- in the prototxt
           stage t >= 3 reads `pool3_stage2`):
           conv1_stage2 9x9->128, pool, conv2_stage2 9x9->128, pool, conv3_stage2 9x9->128,
           pool
  stage t >= 2: 32 features = conv 5x5->32 on the trunk (conv4_stage2 / conv1_stage{t}),
           concat [features (32), beliefs of stage t-1 (P+1), centre map (1)],
           Mconv1 11x11->128, Mconv2 11x11->128, Mconv3 11x11->128, Mconv4 1x1->128,
           Mconv5 1x1->P+1

Parameter count of that list for P = 14 (weights + biases):
  stage 1        4,386,095
  shared trunk   2,685,696
  each t >= 2    4,829,615   (x 5)
  total         31,219,866   == `CPM(num_joints=14)` (checked in tests/test_models.py).

Note: the released model shares conv1-3 of stage 2 (the trunk); the 5x5 conv that makes
each stage's 32-channel features has its own weights per stage, as here. The output has
P + 1 channels with the background LAST. There is no BatchNorm (as released).

`scan_stages=True` computes the same function with `nn.scan` over stages t >= 2 (their
parameters stacked on a leading axis under `stages/`; `stack_variables` /
`unstack_variables` convert either way): XLA compiles one refinement stage, not T - 1.
"""

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jhpe.models import layers

Dtype = Any

CENTER_SIGMA_AT_368 = 21.0


def center_map(height: int, width: int, stride: int = 8,
               sigma: float = CENTER_SIGMA_AT_368) -> np.ndarray:
  """The Gaussian centre map at the image centre, average-pooled to the belief maps' size.

  Built in numpy from static shapes, so it is a constant of the compiled function.

  Args:
    height, width: image size in pixels.
    stride: belief-map stride (the released model's 9x9/8 average pool).
    sigma: Gaussian sigma in image pixels.

  Returns:
    (ceil(H/stride), ceil(W/stride)) float32.
  """
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
  # Caffe's 9x9/8 average pool in ceil mode (zero padding counted, as Caffe does).
  k = stride + 1
  h, w = -(-height // stride), -(-width // stride)
  padded = np.zeros((h * stride + k, w * stride + k))
  padded[:height, :width] = g
  out = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      out[i, j] = padded[i * stride:i * stride + k, j * stride:j * stride + k].mean()
  return out.astype(np.float32)


def _conv(module, c, k, name, relu=True, scale=True):
  """A k x k conv of `module`'s width-scaled `c` channels (unscaled with scale=False)."""
  f = layers.scaled_channels(c, module.width) if scale else c
  # He initialisation for the ReLU layers: this deep plain (no BatchNorm) net trains
  # from scratch with it; LeCun's for the linear output layers.
  init = nn.initializers.he_normal() if relu else nn.initializers.lecun_normal()
  layer = layers.conv(f, k, module.dtype, module.param_dtype, name=name, kernel_init=init)
  return (lambda x: nn.relu(layer(x))) if relu else layer


def _refine(module, trunk, beliefs, center, name_of):
  """A stage t >= 2, its layers created in `module` under `name_of(layer)`: (trunk
  (B, h, w, 128 w), previous beliefs (B, h, w, P+1), centre (B, h, w, 1)) -> beliefs."""
  feats = _conv(module, 32, 5, name_of("features"))(trunk)
  y = jnp.concatenate([feats, beliefs.astype(module.dtype), center], axis=-1)
  for i in range(1, 4):
    y = _conv(module, 128, 11, name_of(f"mconv{i}"))(y)
  y = _conv(module, 128, 1, name_of("mconv4"))(y)
  return _conv(module, module.num_output_channels, 1, name_of("mconv5"), relu=False,
               scale=False)(y)


class _Stage(nn.Module):
  """A refinement stage, the unit `nn.scan` repeats (layers named without `stage<t>_`)."""
  num_output_channels: int
  width: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, beliefs, trunk, center):
    beliefs = _refine(self, trunk, beliefs, center, lambda name: name)
    return beliefs, beliefs


def _split_stage_name(name: str):
  """'stage3_mconv1' -> (1, 'mconv1') (index from stage 2); other layers -> None."""
  match = re.fullmatch(r"stage(\d+)_(.+)", name)
  if match is None or int(match.group(1)) < 2:
    return None
  return int(match.group(1)) - 2, match.group(2)


def stack_variables(variables: dict, num_stages: int) -> dict:
  """Per-stage layout (`scan_stages=False`) -> scanned layout (`scan_stages=True`): stages
  2..T stacked on a leading axis under `stages/`; stage 1 and the trunk unchanged."""
  return {c: layers.stack_groups(tree, _split_stage_name, num_stages - 1, "stages")
          for c, tree in variables.items()}


def unstack_variables(variables: dict, num_stages: int) -> dict:
  """Scanned layout -> per-stage layout (the inverse of `stack_variables`)."""
  return {c: layers.unstack_groups(tree, lambda name, i: f"stage{i + 2}_{name}",
                                   num_stages - 1, "stages")
          for c, tree in variables.items()}


class CPM(nn.Module):
  """Convolutional Pose Machine.

  Attributes:
    num_joints: P parts; the model outputs P + 1 belief maps (background last).
    num_stages: T >= 1 stages (6 released).
    width: multiplier of every hidden channel count (1.0 = released; e.g. 0.25 for CPU).
    center_sigma: centre-map sigma as a fraction of the input height (21 px at 368).
    dtype: compute dtype; outputs are float32.
    param_dtype: parameter dtype.
    scan_stages: `nn.scan` over stages t >= 2 (one compiled refinement stage; the scanned
      parameter layout, see `stack_variables`).
  """
  num_joints: int = 14
  num_stages: int = 6
  width: float = 1.0
  center_sigma: float = CENTER_SIGMA_AT_368 / 368
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_stages: bool = False

  output_kind = "heatmap"
  output_stride = 8
  # The last output channel is the background belief (P + 1 maps, as the paper).
  background_channel = True
  input_multiple = 8

  def __post_init__(self):
    layers.check_positive("num_joints", self.num_joints)
    layers.check_positive("num_stages", self.num_stages)
    if not self.width > 0:
      raise ValueError(f"width must be a positive multiplier (1.0 = released), got "
                       f"{self.width!r}.")
    if not self.center_sigma > 0:
      raise ValueError(f"center_sigma must be > 0, got {self.center_sigma!r}.")
    super().__post_init__()

  @property
  def num_output_channels(self) -> int:
    return self.num_joints + int(self.background_channel)

  def _trunk(self, x, prefix):
    """The three 9x9 conv + pool blocks: (B, H, W, 3) -> (B, H/8, W/8, 128 w)."""
    for i in range(1, 4):
      x = _conv(self, 128, 9, f"{prefix}_conv{i}")(x)
      x = layers.max_pool(x, 3, 2)
    return x

  @nn.compact
  def __call__(self, images, train: bool = False):
    """Images (B, H, W, 3) in [0, 1] -> list over stages of (B, H/8, W/8, P+1) float32.

    H and W must be multiples of 8. `train` is accepted for the common API (no BatchNorm
    or dropout here).
    """
    del train
    x = layers.normalise_images(images, self.dtype)
    batch, height, width = images.shape[:3]
    if height % 8 or width % 8:
      raise ValueError(
          f"images: height and width must be multiples of 8 (the belief-map stride), got "
          f"{height}x{width}.")
    k = self.num_output_channels

    # Stage 1: image only.
    y = self._trunk(x, "stage1")
    y = _conv(self, 32, 5, "stage1_conv4")(y)
    y = _conv(self, 512, 9, "stage1_conv5")(y)
    y = _conv(self, 512, 1, "stage1_conv6")(y)
    beliefs = _conv(self, k, 1, "stage1_conv7", relu=False, scale=False)(y)
    outputs = [beliefs]
    if self.num_stages == 1:
      return layers.stage_list(outputs)

    # One image-feature trunk for all stages t >= 2 (computed once).
    trunk = self._trunk(x, "shared_trunk")
    center = center_map(height, width, 8, self.center_sigma * height)
    center = jnp.broadcast_to(jnp.asarray(center, self.dtype)[None, :, :, None],
                              (batch, *center.shape, 1))
    if self.scan_stages:
      scanned = nn.scan(_Stage, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=self.num_stages - 1)
      _, stacked = scanned(k, self.width, self.dtype, self.param_dtype,
                           name="stages")(beliefs, trunk, center)
      return layers.stage_list(outputs + list(stacked))
    for t in range(2, self.num_stages + 1):
      beliefs = _refine(self, trunk, beliefs, center, lambda name, t=t: f"stage{t}_{name}")
      outputs.append(beliefs)
    return layers.stage_list(outputs)
