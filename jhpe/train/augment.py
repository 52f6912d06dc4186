"""Device-side augmentation: pure, jittable functions of a PRNG key and a batch.

The host hands over fixed canvases (`jhpe.data.pipeline`); here, inside the jitted train
step, each image gets the papers' augmentation (Newell et al. 2016, Wei et al. 2016):
one random affine about the canvas centre (rotation +-30 degrees, scale 0.75..1.25, an
optional small shift), a horizontal flip with the left/right joint swap, and colour jitter.
The image is warped with bilinear sampling (zeros outside) and the joints go through the
same matrix; joints that leave the canvas become invisible. `canvas_to_original` is
updated too, so predictions on an augmented canvas still map back to the original image.

Batch keys used: 'image' (B, S, S, 3) uint8 or float in [0, 1], 'joints' (B, J, 2) canvas
pixels, 'visible' (B, J), optionally 'canvas_to_original' (B, 3, 3); the others pass
through unchanged.
"""

import jax
import jax.numpy as jnp

from jhpe import geometry


def _batch_ndim(rng):
  """0 for one key, 1 for a batch of keys (typed keys, or raw uint32 keys (..., 2))."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng.ndim
  return rng.ndim - 1


def _split(rng, num):
  """Splits a key, or each of a batch of keys (B,) -> a list of `num` (batches of) keys."""
  if _batch_ndim(rng) == 0:
    return list(jax.random.split(rng, num))
  keys = jax.vmap(lambda k: jax.random.split(k, num))(rng)  # (B, num[, 2])
  return [keys[:, i] for i in range(num)]


def _uniform(rng, batch_size, shape, minval, maxval):
  """(batch_size, *shape) uniform draws: from one key, or one key per example."""
  if _batch_ndim(rng) == 0:
    return jax.random.uniform(rng, (batch_size, *shape), minval=minval, maxval=maxval)
  return jax.vmap(lambda k: jax.random.uniform(k, shape, minval=minval,
                                               maxval=maxval))(rng)


def to_float(image):
  """uint8 [0, 255] or float images -> float32 [0, 1]."""
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def warp(images, matrices):
  """Warps images by affine maps with bilinear sampling, zeros outside.

  Args:
    images: (B, H, W, C) float.
    matrices: (B, 3, 3) maps from input pixels to output pixels (pixel centres at
      integers); the output has the input's size.

  Returns:
    (B, H, W, C) float32.
  """
  _, h, w, _ = images.shape
  inverse = geometry.invert_affine(matrices.astype(jnp.float32))
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing='ij')
  grid = jnp.stack([xs, ys], axis=-1).reshape(1, h * w, 2)
  src = geometry.apply_affine(inverse, grid)  # (B, H*W, 2) input pixels

  def sample(image, pts):
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    out = 0.
    for dx in (0, 1):
      for dy in (0, 1):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        value = image[jnp.clip(yi, 0, h - 1).astype(jnp.int32),
                      jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
        out = out + jnp.where(inside, weight, 0.)[:, None] * value
    return out.reshape(h, w, -1)

  return jax.vmap(sample)(images.astype(jnp.float32), src)


def flip_joints(joints, visible, width, flip_permutation):
  """Mirrors canvas joints (x -> W - 1 - x) and swaps left/right: (B, J, 2), (B, J)."""
  perm = jnp.asarray(flip_permutation)
  x = (width - 1.0) - joints[..., 0]
  flipped = jnp.stack([x, joints[..., 1]], axis=-1)
  return flipped[:, perm], visible[:, perm]


def flip_batch(batch, flip_permutation):
  """Deterministic horizontal flip of a whole batch (image, joints + swap, transform)."""
  out = dict(batch)
  image = batch['image']
  width = image.shape[2]
  out['image'] = image[:, :, ::-1]
  out['joints'], out['visible'] = flip_joints(
      batch['joints'], batch['visible'], width, flip_permutation)
  if 'canvas_to_original' in batch:
    f = geometry.flip_matrix(jnp.float32(width))  # its own inverse
    out['canvas_to_original'] = geometry.compose(batch['canvas_to_original'], f)
  return out


def random_affine(rng, batch_size, size, *, rotation_deg=30., scale_range=(0.75, 1.25),
                  shift_fraction=0.0, flip_prob=0.5):
  """Per-image canvas -> augmented-canvas matrices (B, 3, 3) and flip flags (B,).

  Rotation and scale are uniform (Newell et al.: +-30 degrees, 0.75..1.25) about the
  canvas centre; the shift is uniform in +-shift_fraction * size; the flip is applied
  last (x -> S - 1 - x).
  """
  k_rot, k_scale, k_shift, k_flip = _split(rng, 4)
  angle = _uniform(k_rot, batch_size, (), -rotation_deg, rotation_deg)
  scale = _uniform(k_scale, batch_size, (), scale_range[0], scale_range[1])
  shift = _uniform(k_shift, batch_size, (2,), -1., 1.) * (shift_fraction * size)
  flip = _uniform(k_flip, batch_size, (), 0., 1.) < flip_prob
  centre = jnp.full((batch_size, 2), (size - 1) / 2.0, jnp.float32)
  # compose() multiplies in full float32 precision (a plain @ may run in TF32 on a GPU).
  m = geometry.compose(
      geometry.translation_matrix(centre + shift), geometry.rotation_matrix(angle),
      geometry.scale_matrix(scale), geometry.translation_matrix(-centre))
  flipped = geometry.compose(geometry.flip_matrix(jnp.float32(size)), m)
  return jnp.where(flip[:, None, None], flipped, m), flip


def jitter_colors(rng, images, strength):
  """Brightness, contrast and saturation factors uniform in 1 +- strength: (B,H,W,3)."""
  b = images.shape[0]
  k_b, k_c, k_s = _split(rng, 3)
  factor = lambda k: _uniform(k, b, (1, 1, 1), 1 - strength, 1 + strength)
  images = images * factor(k_b)
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  images = mean + (images - mean) * factor(k_c)
  gray = (0.299 * images[..., 0:1] + 0.587 * images[..., 1:2]
          + 0.114 * images[..., 2:3])  # ITU-R 601 luma
  images = gray + (images - gray) * factor(k_s)
  return jnp.clip(images, 0., 1.)


def augment(rng, batch, *, flip_permutation, rotation_deg=30., scale_range=(0.75, 1.25),
            shift_fraction=0.0, flip_prob=0.5, color_jitter=0.2):
  """Augments a batch; returns it with 'image' float32 (B, S, S, 3) in [0, 1].

  Args:
    rng: a PRNG key, or (B,) keys, one per example (then an example's augmentation does
      not depend on the rest of the batch: use it to be invariant to how a global batch
      is split over devices; far faster than vmapping this function over examples).
    batch: the host batch (see the module docstring).
    flip_permutation: (J,) int, `Skeleton.flip_permutation` (joint i <- its mirror).
    rotation_deg: rotations are uniform in +-rotation_deg.
    scale_range: zoom factors, uniform (> 1 enlarges the person).
    shift_fraction: shifts uniform in +-shift_fraction of the canvas side.
    flip_prob: probability of the horizontal flip.
    color_jitter: brightness/contrast/saturation factors uniform in 1 +- this
      (0 disables).
  """
  image = batch['image']
  if image.ndim != 4 or image.shape[1] != image.shape[2] or image.shape[3] != 3:
    raise ValueError(f"batch['image'] must have shape (B, S, S, 3), got {image.shape}.")
  b, size = image.shape[0], image.shape[1]
  joints, visible = batch['joints'], batch['visible']
  perm = jnp.asarray(flip_permutation)
  if perm.shape != (joints.shape[1],):
    raise ValueError(f'flip_permutation must have shape ({joints.shape[1]},) for the '
                     f'{joints.shape[1]} joints, got {perm.shape}.')
  nd = _batch_ndim(rng)
  if nd not in (0, 1) or (nd == 1 and rng.shape[0] != b):
    raise ValueError(f'rng must be one key or a batch of {b} keys (one per example), '
                     f'got shape {rng.shape}.')
  k_affine, k_color = _split(rng, 2)
  m, flip = random_affine(k_affine, b, size, rotation_deg=rotation_deg,
                          scale_range=scale_range, shift_fraction=shift_fraction,
                          flip_prob=flip_prob)
  out = dict(batch)
  images = to_float(image)
  if color_jitter:
    # Before the warp: the jitter's image mean is then a reduction over the input, which
    # XLA's CPU backend computes ~100x faster than over the gather's output, and the
    # zero padding the warp brings in stays black.
    images = jitter_colors(k_color, images, color_jitter)
    # Materialise the jittered image: fused into the warp's gathers it is recomputed
    # for each of the four bilinear taps (2-3x slower on the CPU).
    images = jax.lax.optimization_barrier(images)
  out['image'] = warp(images, m)
  new = geometry.apply_affine(m, joints.astype(jnp.float32))
  # A flipped person's left joints now sit where the right ones were: swap them.
  new = jnp.where(flip[:, None, None], new[:, perm], new)
  vis = jnp.where(flip[:, None], visible[:, perm], visible).astype(jnp.float32)
  inside = jnp.all((new >= -0.5) & (new <= size - 0.5), axis=-1)
  out['visible'] = vis * inside
  out['joints'] = jnp.where(out['visible'][..., None] > 0, new, 0.)
  if 'canvas_to_original' in batch:
    out['canvas_to_original'] = geometry.compose(
        batch['canvas_to_original'], geometry.invert_affine(m))
  return out
