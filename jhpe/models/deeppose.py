"""DeepPose: human pose estimation via deep neural networks (Toshev and Szegedy, CVPR 2014).

Stage 1 regresses the 2J joint coordinates from the whole S x S image with an AlexNet-style
network (the paper's C(55x55x96)-LRN-P-C(27x27x256)-LRN-P-C(13x13x384)-C(13x13x384)-
C(13x13x256)-P-F(4096)-F(4096), then 2J outputs; dropout on the FC layers). Outputs are the
normalised canvas coordinates n = (x + 0.5) / S in [0, 1] (docs/design.md).

Cascade stages s >= 2 (the paper's eq. 6): for every joint i, a box b_i centred on the
stage s-1 estimate y_i with side sigma * diam(y) is cut out of the image by bilinear
sampling inside the jitted function and resized to crop_size x crop_size; the stage's own
regressor (separate parameters per stage) maps the crop to displacements in the box's
normalised frame, of which joint i's is kept; y_i^s = y_i^{s-1} + side * displacement_i.
diam(y) is the paper's "distance between opposing joints on the human torso, such as left
shoulder and right hip" (Sec. 3.2; `diameter='torso'`, the joints `diameter_joints`, which
`jhpe.train.config.build_model` fills in from the skeleton's `torso_joints`), or the
diagonal of the pose's bounding box (`diameter='bbox'`).

Training, two ways (`jhpe.train.cascade`):
- stage-wise, as the paper: stage s alone, its earlier stages frozen, on boxes centred on
  the ground truth and displaced by draws from stage s-1's training-set error statistics;
  the loss is on the box-normalised displacement. The train step calls this module with
  `refine_stage=s, centres=..., sides=...` and gets that stage's displacements alone.
- jointly (`train=True` without `refine_stage`): every stage at once, stage s seeing stage
  s-1's output through stop_gradient plus isotropic displacements of std `perturb_sigma`
  in normalised units (rngs={'perturb': key}; the same collection feeds dropout unless a
  'dropout' rng is also given), the loss on the refined coordinates.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jhpe.models import layers

Dtype = Any

BACKBONES = ("alexnet", "resnet")
DIAMETERS = ("torso", "bbox")
# AlexNet's conv1 /4 and three 3x3/2 'VALID' pools need an input of at least 57 px.
ALEXNET_MIN_SIZE = 57


class AlexNetRegressor(nn.Module):
  """AlexNet-style regressor (B, H, W, 3) -> (B, num_outputs).

  Attributes:
    num_outputs: 2J.
    width: multiplier of the conv channel counts (1.0 = 96, 256, 384, 384, 256).
    fc_features: width of the two hidden FC layers (4096).
    use_batchnorm: BatchNorm after every conv instead of LRN.
    dropout_rate: dropout on the FC layers (paper: 0.5 as in AlexNet).
  """
  num_outputs: int
  width: float = 1.0
  fc_features: int = 4096
  use_batchnorm: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ch = lambda c: layers.scaled_channels(c, self.width)

    def block(x, c, k, stride, name, norm):
      x = nn.Conv(ch(c), (k, k), (stride, stride), padding="SAME", name=name, **kw)(x)
      if self.use_batchnorm:
        x = layers.batch_norm(train, axis_name=self.bn_axis_name, name=f"{name}_bn",
                              **kw)(x)
        return nn.relu(x)
      x = nn.relu(x)
      return layers.local_response_norm(x) if norm else x

    # 220 -> 55 -> 27 -> 13 -> 6 (the paper's sizes; pools are 3x3/2 'VALID').
    x = block(x, 96, 11, 4, "conv1", norm=True)
    x = layers.max_pool(x, 3, 2, padding="VALID")
    x = block(x, 256, 5, 1, "conv2", norm=True)
    x = layers.max_pool(x, 3, 2, padding="VALID")
    x = block(x, 384, 3, 1, "conv3", norm=False)
    x = block(x, 384, 3, 1, "conv4", norm=False)
    x = block(x, 256, 3, 1, "conv5", norm=False)
    x = layers.max_pool(x, 3, 2, padding="VALID")
    x = x.reshape(x.shape[0], -1)
    for i in (6, 7):
      x = nn.relu(nn.Dense(self.fc_features, name=f"fc{i}", **kw)(x))
      x = _dropout(self, self.dropout_rate, x, train)
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros, name="out",
                    **kw)(x)


class ResNetRegressor(nn.Module):
  """A small ResNet (basic blocks, He et al. 2016) regressor (B, H, W, 3) -> (B, num_outputs).

  Attributes:
    num_outputs: 2J.
    blocks: basic blocks per stage (ResNet-18: (2, 2, 2, 2)); stage k has 64 * 2**k * width
      channels and stride 2 from the second stage on.
    width: channel multiplier.
  """
  num_outputs: int
  blocks: Sequence[int] = (2, 2, 2, 2)
  width: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ch = lambda c: layers.scaled_channels(c, self.width)
    x = nn.Conv(ch(64), (7, 7), (2, 2), padding="SAME", use_bias=False, name="stem", **kw)(x)
    x = nn.relu(layers.batch_norm(train, axis_name=self.bn_axis_name, name="stem_bn",
                                  **kw)(x))
    x = layers.max_pool(x, 3, 2)
    for k, n in enumerate(self.blocks):
      for b in range(n):
        stride = 2 if k > 0 and b == 0 else 1
        x = layers.BasicBlock(ch(64 * 2 ** k), stride, bn_axis_name=self.bn_axis_name,
                              name=f"block{k}_{b}", **kw)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros, name="out",
                    **kw)(x)


def _dropout(module: nn.Module, rate: float, x, train: bool):
  """Dropout drawing from 'dropout' if given, else from 'perturb' (the documented rng)."""
  if not train or rate == 0:
    return x
  collection = "dropout" if module.has_rng("dropout") else "perturb"
  return nn.Dropout(rate, deterministic=False, rng_collection=collection)(x)


def pose_diameter(joints, diameter_joints: Optional[Sequence[int]] = None):
  """The pose's size: distance between two torso joints, else its bounding-box diagonal.

  Args:
    joints: (B, J, 2) normalised coordinates.
    diameter_joints: (a, b) joint indices (e.g. left shoulder, right hip) or None.

  Returns:
    (B,) diameters in normalised units.
  """
  if diameter_joints is not None:
    a, b = diameter_joints
    return jnp.linalg.norm(joints[:, a] - joints[:, b], axis=-1)
  extent = jnp.max(joints, axis=1) - jnp.min(joints, axis=1)
  return jnp.linalg.norm(extent, axis=-1)


def crop_windows(images, centers, sides, size: int):
  """Bilinearly samples square windows, one per joint, resized to size x size.

  Args:
    images: (B, H, W, C).
    centers: (B, J, 2) window centres, normalised (x, y) coordinates.
    sides: (B,) window sides, normalised units (fractions of W in x and of H in y).
    size: output side in pixels.

  Returns:
    (B, J, size, size, C); outside the image the samples are 0.
  """
  height, width = images.shape[1:3]
  # Output pixel centres u in [0, size) sit at (u + 0.5) / size - 0.5 of the side.
  t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size - 0.5
  offsets = sides[:, None, None] * t  # (B, 1, size)
  xs = (centers[..., 0:1] + offsets) * width - 0.5  # (B, J, size), pixel coordinates
  ys = (centers[..., 1:2] + offsets) * height - 0.5
  grid_y = jnp.broadcast_to(ys[..., :, None], (*ys.shape, size))  # (B, J, size, size)
  grid_x = jnp.broadcast_to(xs[..., None, :], (*xs.shape[:-1], size, size))

  def sample(channel, gy, gx):  # (H, W), (J, s, s), (J, s, s) -> (J, s, s)
    return jax.scipy.ndimage.map_coordinates(channel, [gy, gx], order=1, mode="constant",
                                             cval=0.0)

  per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=-1)
  return jax.vmap(per_channel)(images.astype(jnp.float32), grid_y, grid_x)


class DeepPose(nn.Module):
  """DeepPose cascade of regressors.

  Attributes:
    num_joints: J.
    num_stages: 1 = no cascade.
    backbone: 'alexnet' (the paper's) or 'resnet' (small ResNet, BatchNorm).
    use_batchnorm: AlexNet with BatchNorm instead of LRN.
    width: channel multiplier of the backbone (1.0 = paper).
    fc_features: AlexNet's hidden FC width (4096).
    resnet_blocks: blocks per ResNet stage.
    dropout_rate: AlexNet FC dropout.
    crop_size: side of the refinement stages' crops in pixels (None: the input size, as in
      the paper, which feeds every stage 220 x 220).
    refiner_width: channel multiplier of the stages s >= 2 (None: `width`); cheaper
      refiners at CPU scale.
    box_scale: sigma, the crop side in units of the pose diameter (the paper: 1.0 on
      FLIC, 2.0 on LSP).
    min_box: smallest crop side, normalised units (guards degenerate early predictions).
    diameter: 'torso' (the paper: the distance between `diameter_joints`) or 'bbox' (the
      diagonal of the estimate's bounding box).
    diameter_joints: (left shoulder, right hip)-like indices, needed by 'torso' when
      num_stages > 1.
    perturb_sigma: std of the simulated displacements added in training, normalised units.
    dtype, param_dtype: compute and parameter dtypes; outputs are float32.
    bn_axis_name: BatchNorm's cross-device axis (None: the train step pmeans the stats).
  """
  num_joints: int = 14
  num_stages: int = 1
  backbone: str = "alexnet"
  use_batchnorm: bool = False
  width: float = 1.0
  fc_features: int = 4096
  resnet_blocks: Sequence[int] = (2, 2, 2, 2)
  dropout_rate: float = 0.5
  crop_size: Optional[int] = None
  refiner_width: Optional[float] = None
  box_scale: float = 1.0
  min_box: float = 0.05
  diameter: str = "torso"
  diameter_joints: Optional[Sequence[int]] = None
  perturb_sigma: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  output_kind = "regression"
  output_stride = None

  def __post_init__(self):
    layers.check_positive("num_joints", self.num_joints)
    layers.check_positive("num_stages", self.num_stages)
    layers.check_positive("fc_features", self.fc_features)
    if self.backbone not in BACKBONES:
      raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
    if not self.width > 0 or not (self.refiner_width is None or self.refiner_width > 0):
      raise ValueError(f"width and refiner_width must be positive multipliers, got "
                       f"{self.width!r}, {self.refiner_width!r}.")
    if self.diameter not in DIAMETERS:
      raise ValueError(f"diameter must be one of {DIAMETERS}, got {self.diameter!r}.")
    if self.diameter == "torso" and self.num_stages > 1 and self.diameter_joints is None:
      raise ValueError("diameter='torso' needs diameter_joints (two torso joints, e.g. "
                       "left shoulder and right hip), or use diameter='bbox'.")
    if self.crop_size is not None:
      layers.check_positive("crop_size", self.crop_size, "None or an integer >= 1")
    if not self.box_scale > 0 or not self.min_box > 0:
      raise ValueError(f"box_scale and min_box must be > 0, got {self.box_scale!r}, "
                       f"{self.min_box!r}.")
    if self.perturb_sigma < 0 or not 0 <= self.dropout_rate < 1:
      raise ValueError(f"perturb_sigma must be >= 0 and dropout_rate in [0, 1), got "
                       f"{self.perturb_sigma!r}, {self.dropout_rate!r}.")
    if self.diameter_joints is not None and (
        len(self.diameter_joints) != 2
        or not all(0 <= j < self.num_joints for j in self.diameter_joints)):
      raise ValueError(f"diameter_joints must be None or two joint indices in "
                       f"[0, {self.num_joints}), got {self.diameter_joints!r}.")
    if any(not isinstance(b, int) or b < 1 for b in self.resnet_blocks):
      raise ValueError(f"resnet_blocks must be positive integers, got "
                       f"{self.resnet_blocks!r}.")
    super().__post_init__()

  @property
  def num_output_channels(self) -> int:
    return 2 * self.num_joints

  @property
  def box_joints(self) -> Optional[tuple]:
    """The joints whose distance is diam(y), or None for the bounding-box diagonal."""
    if self.diameter == "torso" and self.diameter_joints is not None:
      return tuple(self.diameter_joints)
    return None

  def box_sides(self, joints):
    """(B, J, 2) normalised joints -> (B,) crop sides sigma * diam(joints), >= min_box."""
    return jnp.maximum(self.box_scale * pose_diameter(joints, self.box_joints),
                       self.min_box)

  def _regressor(self, name, width=None):
    kw = dict(num_outputs=2 * self.num_joints, width=width or self.width, dtype=self.dtype,
              param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name, name=name)
    if self.backbone == "resnet":
      return ResNetRegressor(blocks=tuple(self.resnet_blocks), **kw)
    return AlexNetRegressor(fc_features=self.fc_features,
                            use_batchnorm=self.use_batchnorm,
                            dropout_rate=self.dropout_rate, **kw)

  def _refine(self, images, stage: int, centres, sides, crop: int, train: bool):
    """Stage `stage`'s displacements (B, J, 2), in box units, for boxes at `centres`
    (B, J, 2) with sides `sides` (B,), normalised units."""
    batch, j = centres.shape[:2]
    crops = crop_windows(images, centres, sides, crop)  # (B, J, c, c, 3)
    crops = layers.normalise_images(crops.reshape(batch * j, crop, crop, 3), self.dtype)
    disp = self._regressor(f"stage{stage}", self.refiner_width)(crops, train)
    disp = disp.reshape(batch, j, j, 2)
    # The crop around joint i refines joint i (psi_i in the paper's eq. 6).
    return disp[:, jnp.arange(j), jnp.arange(j)].astype(jnp.float32)

  @nn.compact
  def __call__(self, images, train: bool = False, refine_stage: Optional[int] = None,
               centres=None, sides=None):
    """Images (B, S, S, 3) in [0, 1] -> list over stages of (B, J, 2) normalised (x, y).

    With `refine_stage=s` (2 <= s <= num_stages), `centres` (B, J, 2) and `sides` (B,):
    only stage s runs, on those boxes, and the result is its displacements (B, J, 2) in
    box units (the stage-wise training of `jhpe.train.cascade`).
    """
    crop = self.crop_size or images.shape[1]
    if self.backbone == "alexnet" and min(*images.shape[1:3], crop) < ALEXNET_MIN_SIZE:
      raise ValueError(
          f"images and crop_size must be at least {ALEXNET_MIN_SIZE} px for the AlexNet "
          f"backbone, got images {images.shape[1]}x{images.shape[2]}, crop_size {crop}.")
    if refine_stage is not None:
      if not 2 <= refine_stage <= self.num_stages:
        raise ValueError(f"refine_stage must be in [2, {self.num_stages}], got "
                         f"{refine_stage!r}.")
      return self._refine(images, refine_stage, centres, sides, crop, train)
    x = layers.normalise_images(images, self.dtype)
    batch = images.shape[0]
    j = self.num_joints
    # Stage 1: the whole image; outputs start at the image centre (zero-init last layer).
    out = self._regressor("stage1")(x, train).reshape(batch, j, 2)
    outputs = [0.5 + out.astype(jnp.float32)]
    for s in range(2, self.num_stages + 1):
      prev = jax.lax.stop_gradient(outputs[-1])
      if train and self.perturb_sigma > 0:
        prev = prev + self.perturb_sigma * jax.random.normal(
            self.make_rng("perturb"), prev.shape, prev.dtype)
      side = self.box_sides(prev)  # (B,)
      disp = self._refine(images, s, prev, side, crop, train)
      outputs.append(prev + side[:, None, None] * disp)
    return layers.stage_list(outputs)
