"""2D affine transforms as (3, 3) matrices, for numpy (host) and jax.numpy (device).

Every function picks its array module from its inputs: jax arrays (tracers included) give
jax.numpy results and are jittable; anything else gives numpy. Matrices act on homogeneous
column vectors (x, y, 1) in the pixel convention of docs/design.md (pixel centres at
integer coordinates), so ``apply_affine(compose(a, b), p) == apply_affine(a,
apply_affine(b, p))``. Use `compose` rather than ``a @ b`` on jax arrays: a plain matmul may
run in TF32 on GPUs.

Shapes are checked in Python on the static shapes, so the checks cost nothing under jit.
Values (finite, invertible) are checked only for concrete inputs: a traced value is unknown.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
  """jax.numpy if any input is a jax array or tracer, numpy otherwise."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _float(xp, x, name):
  x = xp.asarray(x)
  if not xp.issubdtype(x.dtype, xp.floating):
    if not (xp.issubdtype(x.dtype, xp.integer) or x.dtype == bool):
      raise ValueError(f"{name} must be a real number array, got dtype {x.dtype}.")
    x = x.astype(xp.float32)
  return x


def _is_concrete(x):
  return not isinstance(x, jax.core.Tracer)


def _check_finite(name, x):
  if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
    raise ValueError(f"{name} holds NaN or Inf values; expected finite numbers.")


def _check_matrix(name, m):
  if m.ndim < 2 or m.shape[-2:] != (3, 3):
    raise ValueError(f"{name} must have shape (..., 3, 3), got {m.shape}.")
  _check_finite(name, m)


def _stack_matrix(xp, rows):
  """[[a, b, c], [d, e, f]] of broadcastable arrays -> (..., 3, 3) with row (0, 0, 1)."""
  first = rows[0][0]
  zero, one = xp.zeros_like(first), xp.ones_like(first)
  rows = list(rows) + [[zero, zero, one]]
  return xp.stack([xp.stack(xp.broadcast_arrays(*r), axis=-1) for r in rows], axis=-2)


def _matmul(xp, a, b):
  # Full float32 precision: GPUs would otherwise run a jnp matmul in TF32 (~1e-3 relative
  # error, a third of a pixel on a 256 canvas).
  if xp is jnp:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  return a @ b


def compose(*matrices):
  """The product ``m1 @ m2 @ ...`` of (..., 3, 3) matrices (apply the last one first).

  In full float32 precision on every backend.
  """
  if not matrices:
    raise ValueError("compose needs at least one matrix.")
  xp = _xp(*matrices)
  out = None
  for i, m in enumerate(matrices):
    m = _float(xp, m, f"matrices[{i}]")
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
      raise ValueError(f"matrices[{i}] must have shape (..., 3, 3), got {m.shape}.")
    out = m if out is None else _matmul(xp, out, m)
  return out


def translation_matrix(offset):
  """offset (..., 2) -> (..., 3, 3): p -> p + offset."""
  xp = _xp(offset)
  offset = _float(xp, offset, "offset")
  if offset.ndim < 1 or offset.shape[-1] != 2:
    raise ValueError(f"offset must have shape (..., 2), got {offset.shape}.")
  tx, ty = offset[..., 0], offset[..., 1]
  zero, one = xp.zeros_like(tx), xp.ones_like(tx)
  return _stack_matrix(xp, [[one, zero, tx], [zero, one, ty]])


def scale_matrix(factor, factor_y=None):
  """factor (...) -> (..., 3, 3): p -> factor * p about the origin.

  Isotropic unless `factor_y` (same shape) is given. A batch of factors is never
  mistaken for an (sx, sy) pair, whatever its length.
  """
  xp = _xp(factor)
  sx = _float(xp, factor, "factor")
  sy = sx if factor_y is None else _float(xp, factor_y, "factor_y")
  if sx.shape != sy.shape:
    raise ValueError(
        f"scale_matrix: factor {sx.shape} and factor_y {sy.shape} must have the same shape.")
  zero = xp.zeros_like(sx)
  return _stack_matrix(xp, [[sx, zero, zero], [zero, sy, zero]])


def rotation_matrix(degrees):
  """degrees (...) -> (..., 3, 3), rotation about the origin.

  Positive angles turn the content counter-clockwise *as displayed* (the image's y axis
  points down), the convention of OpenCV's getRotationMatrix2D.
  """
  xp = _xp(degrees)
  theta = _float(xp, degrees, "degrees") * (np.pi / 180.0)
  c, s = xp.cos(theta), xp.sin(theta)
  zero = xp.zeros_like(c)
  return _stack_matrix(xp, [[c, s, zero], [-s, c, zero]])


def flip_matrix(width):
  """(3, 3) horizontal flip of an image `width` pixels wide: x -> width - 1 - x.

  Pixel centres are at integer x, so pixel 0 and pixel width-1 swap exactly.
  """
  xp = _xp(width)
  w = _float(xp, width, "width")
  one, zero = xp.ones_like(w), xp.zeros_like(w)
  return _stack_matrix(xp, [[-one, zero, w - 1.0], [zero, one, zero]])


def crop_matrix(center, scale, output_size, rotation_deg=0.0, flip=False):
  """The affine map from original-image pixels to an S x S canvas around a person.

  The person's centre goes to the canvas centre ((S - 1) / 2, (S - 1) / 2), a length of
  `scale` original pixels becomes S canvas pixels, the content is rotated by `rotation_deg`
  about the centre, and with `flip` the canvas is mirrored (x -> S - 1 - x). A flip maps the
  person's left joints onto right ones: swap them with `Skeleton.flip_permutation`.

  Args:
    center: (..., 2) person centre in original pixels.
    scale: (...) person size in original pixels (> 0), mapped onto the canvas side.
    output_size: int S, the canvas side in pixels (static).
    rotation_deg: (...) rotation, positive counter-clockwise as displayed.
    flip: bool or (...) bool array (traced under jit).

  Returns:
    (..., 3, 3) float matrices, original pixels -> canvas pixels.
  """
  xp = _xp(center, scale, rotation_deg, flip)
  center = _float(xp, center, "center")
  scale = _float(xp, scale, "scale")
  if center.ndim < 1 or center.shape[-1] != 2:
    raise ValueError(f"center must have shape (..., 2), got {center.shape}.")
  if scale.shape != center.shape[:-1] and scale.ndim != 0:
    raise ValueError(
        f"scale must have shape () or {center.shape[:-1]} (center's batch shape), got "
        f"{scale.shape}.")
  if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) \
      or output_size < 1:
    raise ValueError(f"output_size must be a positive int (the canvas side), got "
                     f"{output_size!r}.")
  batch = center.shape[:-1]
  for name, value in (("rotation_deg", rotation_deg), ("flip", flip)):
    shape = np.shape(value)
    if shape not in ((), batch):
      raise ValueError(f"{name} must have shape () or {batch} (center's batch shape), got "
                       f"{shape}.")
  _check_finite("center", center)
  _check_finite("scale", scale)
  _check_finite("rotation_deg", rotation_deg)
  if _is_concrete(scale) and np.any(np.asarray(scale) <= 0):
    raise ValueError("scale must be > 0 (the person's size in pixels).")
  size = float(output_size)
  half = (size - 1.0) / 2.0
  m = translation_matrix(-center)
  m = _matmul(xp, scale_matrix(size / scale), m)
  m = _matmul(xp, rotation_matrix(xp.asarray(rotation_deg, dtype=m.dtype)), m)
  m = _matmul(xp, translation_matrix(xp.full(m.shape[:-2] + (2,), half, dtype=m.dtype)), m)
  flipped = _matmul(xp, flip_matrix(xp.asarray(size, dtype=m.dtype)), m)
  flip = xp.asarray(flip)
  return xp.where(flip[..., None, None], flipped, m)


def apply_affine(m, pts):
  """Maps points through affine matrices.

  Args:
    m: (*M, 3, 3) matrices; *M broadcasts against the points' batch shape *P.
    pts: (*P, N, 2) points, or a single point (2,).

  Returns:
    The mapped points, the shape of `pts` (batch shapes broadcast).
  """
  xp = _xp(m, pts)
  m, pts = _float(xp, m, "m"), _float(xp, pts, "pts")
  _check_matrix("m", m)
  if pts.ndim < 1 or pts.shape[-1] != 2:
    raise ValueError(f"pts must have shape (..., N, 2) or (2,), got {pts.shape}.")
  _check_finite("pts", pts)
  single = pts.ndim == 1
  if single:
    pts = pts[None]
  # Elementwise rather than a matmul: exact float32 on every backend (no TF32).
  m = m[..., None, :, :]  # (*M, 1, 3, 3) against (*P, N).
  x, y = pts[..., 0], pts[..., 1]
  out = xp.stack([m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2],
                  m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]], axis=-1)
  return out[..., 0, :] if single else out


def invert_affine(m):
  """(..., 3, 3) affine matrices -> their inverses (closed form, batched)."""
  xp = _xp(m)
  m = _float(xp, m, "m")
  _check_matrix("m", m)
  a, b, tx = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  c, d, ty = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  det = a * d - b * c
  if _is_concrete(det) and np.any(np.abs(np.asarray(det)) < 1e-12):
    raise ValueError("m is singular (its 2x2 part has determinant 0); cannot invert.")
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  return _stack_matrix(
      xp, [[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)]])


# -- Person boxes: the centre and size a canvas is cut around. --

# Person box margin: `scale` = PERSON_MARGIN * the longest side of the annotated joints'
# bounding box. Joints sit inside the body outline (head top and ankles are its extremes,
# but hands, feet and hair stick out), so 1.25 leaves room for them; it is the usual margin
# of top-down pose pipelines.
PERSON_MARGIN = 1.25
# Smallest person `scale` in pixels; a box of one or two joints is a point.
MIN_SCALE_PX = 8.0


def person_center_scale(joints, visible, margin=PERSON_MARGIN):
  """Centre and size of the box around the annotated joints.

  Args:
    joints: (J, 2) original pixels.
    visible: (J,) 1 where annotated.
    margin: `scale` = margin * the longest side of the joints' bounding box.

  Returns:
    center (2,) float32 and scale () float32.
  """
  pts = np.asarray(joints, np.float64)[np.asarray(visible) > 0]
  lo, hi = pts.min(axis=0), pts.max(axis=0)
  center = (lo + hi) / 2
  scale = max(margin * float((hi - lo).max()), MIN_SCALE_PX)
  return center.astype(np.float32), np.float32(scale)


def box_center_scale(box, margin=PERSON_MARGIN):
  """Centre and size of a person box (x, y, w, h) in pixels, as `person_center_scale`."""
  x, y, w, h = [float(v) for v in box]
  center = np.array([x + w / 2 - 0.5, y + h / 2 - 0.5], np.float32)
  return center, np.float32(max(margin * max(w, h), MIN_SCALE_PX))
