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
"""

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


class CPM(nn.Module):
  """Convolutional Pose Machine.

  Attributes:
    num_joints: P parts; the model outputs P + 1 belief maps (background last).
    num_stages: T >= 1 stages (6 released).
    width: multiplier of every hidden channel count (1.0 = released; e.g. 0.25 for CPU).
    center_sigma: centre-map sigma as a fraction of the input height (21 px at 368).
    dtype: compute dtype; outputs are float32.
    param_dtype: parameter dtype.
  """
  num_joints: int = 14
  num_stages: int = 6
  width: float = 1.0
  center_sigma: float = CENTER_SIGMA_AT_368 / 368
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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

  def _ch(self, c: int) -> int:
    return layers.scaled_channels(c, self.width)

  def _conv(self, c, k, name, relu=True, scale=True):
    f = self._ch(c) if scale else c
    # He initialisation for the ReLU layers: this deep plain (no BatchNorm) net trains
    # from scratch with it; LeCun's for the linear output layers.
    init = nn.initializers.he_normal() if relu else nn.initializers.lecun_normal()
    layer = layers.conv(f, k, self.dtype, self.param_dtype, name=name, kernel_init=init)
    return (lambda x: nn.relu(layer(x))) if relu else layer

  def _trunk(self, x, prefix):
    """The three 9x9 conv + pool blocks: (B, H, W, 3) -> (B, H/8, W/8, 128 w)."""
    for i in range(1, 4):
      x = self._conv(128, 9, f"{prefix}_conv{i}")(x)
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
    y = self._conv(32, 5, "stage1_conv4")(y)
    y = self._conv(512, 9, "stage1_conv5")(y)
    y = self._conv(512, 1, "stage1_conv6")(y)
    beliefs = self._conv(k, 1, "stage1_conv7", relu=False, scale=False)(y)
    outputs = [beliefs]
    if self.num_stages == 1:
      return layers.stage_list(outputs)

    # One image-feature trunk for all stages t >= 2 (computed once).
    trunk = self._trunk(x, "shared_trunk")
    center = center_map(height, width, 8, self.center_sigma * height)
    center = jnp.broadcast_to(jnp.asarray(center, self.dtype)[None, :, :, None],
                              (batch, *center.shape, 1))
    for t in range(2, self.num_stages + 1):
      feats = self._conv(32, 5, f"stage{t}_features")(trunk)
      y = jnp.concatenate([feats, beliefs.astype(self.dtype), center], axis=-1)
      for i in range(1, 4):
        y = self._conv(128, 11, f"stage{t}_mconv{i}")(y)
      y = self._conv(128, 1, f"stage{t}_mconv4")(y)
      beliefs = self._conv(k, 1, f"stage{t}_mconv5", relu=False, scale=False)(y)
      outputs.append(beliefs)
    return layers.stage_list(outputs)
