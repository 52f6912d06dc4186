"""Gaussian heatmap targets and their decoding, in jax.numpy (jittable, vmappable).

Pixel convention (docs/design.md): heatmap pixel (i, j) has its centre at (x=i, y=j) and
covers [i - 0.5, i + 0.5]. A canvas point x maps to the heatmap of stride s at
``u = (x + 0.5) / s - 0.5`` (the canvas pixel edges -0.5 and S - 0.5 go to the heatmap's
edges -0.5 and S/s - 0.5).

Heatmaps are channels-last: (B, h, w, J), as Flax convolutions produce them.

Shape and dtype checks run in Python on static shapes, so they cost nothing under jit.
Value checks (NaN) run only on concrete inputs; inside jit a NaN joint is treated as
off-map (zero map, zero weight) so it cannot poison a loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

DECODE_METHODS = ("argmax", "quarter", "taylor")


def _is_concrete(x):
  return not isinstance(x, jax.core.Tracer)


def _check_float(name, x):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a float array, got dtype {x.dtype}.")


def canvas_to_heatmap(pts, stride):
  """Canvas pixels -> heatmap pixels for a heatmap `stride` times smaller (any shape)."""
  return (pts + 0.5) / stride - 0.5


def heatmap_to_canvas(pts, stride):
  """Heatmap pixels -> canvas pixels (the inverse of `canvas_to_heatmap`)."""
  return (pts + 0.5) * stride - 0.5


def render_gaussian(joints, visible, size, sigma):
  """Renders one unnormalised Gaussian (peak 1) per joint.

  Args:
    joints: (B, J, 2) float (x, y) in heatmap pixels (sub-pixel).
    visible: (B, J) visibility; > 0 means annotated.
    size: (h, w) of the heatmap (static ints).
    sigma: the Gaussian's standard deviation in heatmap pixels (> 0).

  Returns:
    heatmaps: (B, h, w, J) float32, exp(-d^2 / (2 sigma^2)) around each joint.
    weights: (B, J) float32, 1 for a visible joint inside the map ([-0.5, w - 0.5) x
      [-0.5, h - 0.5)), else 0; such joints also get an all-zero map.
  """
  joints = jnp.asarray(joints)
  visible = jnp.asarray(visible)
  if joints.ndim != 3 or joints.shape[-1] != 2:
    raise ValueError(f"joints must have shape (B, J, 2), got {joints.shape}.")
  if visible.shape != joints.shape[:2]:
    raise ValueError(
        f"visible must have shape (B, J) = {joints.shape[:2]}, got {visible.shape}.")
  if joints.shape[0] == 0:
    raise ValueError("joints is an empty batch (B = 0); expected B >= 1.")
  _check_float("joints", joints)
  if not isinstance(size, (tuple, list)) or len(size) != 2 or any(
      isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
    raise ValueError(f"size must be (h, w) positive ints, got {size!r}.")
  if not isinstance(sigma, jax.core.Tracer) and not float(sigma) > 0:
    raise ValueError(f"sigma must be > 0 heatmap pixels, got {sigma!r}.")
  if _is_concrete(joints) and _is_concrete(visible):
    bad = np.isnan(np.asarray(joints)).any(-1) & (np.asarray(visible) > 0)
    if bad.any():
      raise ValueError(
          f"joints holds NaN for {int(bad.sum())} visible joint(s); give missing joints "
          "any finite value and visible = 0.")
  return _render(joints.astype(jnp.float32), visible, tuple(int(s) for s in size), sigma)


@functools.partial(jax.jit, static_argnames=("size",))
def _render(joints, visible, size, sigma):
  h, w = size
  x, y = joints[..., 0], joints[..., 1]
  on_map = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)  # False for NaN.
  weights = ((visible > 0) & on_map).astype(jnp.float32)
  # Park masked joints at 0 so no NaN or Inf reaches the exponent (or its gradient).
  x = jnp.where(weights > 0, x, 0.0)
  y = jnp.where(weights > 0, y, 0.0)
  xs = jnp.arange(w, dtype=jnp.float32)
  ys = jnp.arange(h, dtype=jnp.float32)
  # Separable: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy.
  gx = jnp.exp(-(xs[None, None, :] - x[..., None]) ** 2 / (2.0 * sigma**2))  # (B, J, w)
  gy = jnp.exp(-(ys[None, None, :] - y[..., None]) ** 2 / (2.0 * sigma**2))  # (B, J, h)
  # An outer product by broadcasting, not einsum: a dot could run in TF32 on GPUs.
  heatmaps = (jnp.swapaxes(gy, 1, 2)[:, :, None, :] * jnp.swapaxes(gx, 1, 2)[:, None, :, :]
              * weights[:, None, None, :])
  return heatmaps, weights


def add_background(heatmaps):
  """CPM's extra background channel: (B, h, w, J) -> (B, h, w, J + 1).

  The background is 1 - max over joints (clipped to [0, 1]), as in the CPM release.
  Its loss weight is always 1: see `add_background_weight`.
  """
  heatmaps = jnp.asarray(heatmaps)
  if heatmaps.ndim != 4:
    raise ValueError(f"heatmaps must have shape (B, h, w, J), got {heatmaps.shape}.")
  background = jnp.clip(1.0 - jnp.max(heatmaps, axis=-1, keepdims=True), 0.0, 1.0)
  return jnp.concatenate([heatmaps, background.astype(heatmaps.dtype)], axis=-1)


def add_background_weight(weights):
  """(B, J) joint weights -> (B, J + 1) with weight 1 for the background channel."""
  weights = jnp.asarray(weights)
  if weights.ndim != 2:
    raise ValueError(f"weights must have shape (B, J), got {weights.shape}.")
  return jnp.concatenate([weights, jnp.ones_like(weights[:, :1])], axis=-1)


def flip_heatmaps(heatmaps, flip_permutation):
  """Heatmaps of a horizontally flipped image -> heatmaps of the original image.

  Mirrors the width axis and swaps left/right channels. Under our pixel convention the
  mirror is exact: heatmap pixel u of a width-w map and canvas pixel x = (u + 0.5) s - 0.5
  flip to w - 1 - u and S - 1 - x, which are the same point, so no one-pixel shift is needed
  (the shift some codebases add comes from a different pixel convention). A trailing
  background channel (K = J + 1, CPM) stays in place.

  Args:
    heatmaps: (B, h, w, K) with K = J or J + 1.
    flip_permutation: (J,) ints, `Skeleton.flip_permutation`.
  """
  heatmaps = jnp.asarray(heatmaps)
  perm = np.asarray(flip_permutation)
  if heatmaps.ndim != 4:
    raise ValueError(f"heatmaps must have shape (B, h, w, K), got {heatmaps.shape}.")
  k = heatmaps.shape[-1]
  if perm.ndim != 1 or k not in (perm.shape[0], perm.shape[0] + 1):
    raise ValueError(
        f"flip_permutation must have shape (K,) or (K - 1,) for K = {k} channels, got "
        f"{perm.shape}.")
  if sorted(perm.tolist()) != list(range(perm.shape[0])):
    raise ValueError("flip_permutation must be a permutation of 0..J-1.")
  if k == perm.shape[0] + 1:
    perm = np.concatenate([perm, [k - 1]])
  return heatmaps[:, :, ::-1, :][..., perm]


def _gaussian_blur(maps, kernel):
  """(B, h, w, J) maps smoothed by an odd `kernel` Gaussian (OpenCV's sigma for the size)."""
  sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel's rule.
  r = kernel // 2
  taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
  taps = taps / taps.sum()
  _, h, w, _ = maps.shape
  # Edge padding, as DARK pads the border before cv2.GaussianBlur. Separable, as a sum of
  # shifted copies: cheap to compile and fast for the small kernels used here.
  rows = jnp.pad(maps, [(0, 0), (r, r), (0, 0), (0, 0)], mode="edge")
  maps = sum(t * rows[:, k:k + h] for k, t in enumerate(taps))
  cols = jnp.pad(maps, [(0, 0), (0, 0), (r, r), (0, 0)], mode="edge")
  return sum(t * cols[:, :, k:k + w] for k, t in enumerate(taps))


@functools.partial(jax.jit, static_argnames=("method", "smoothing_kernel"))
def _decode(heatmaps, method, smoothing_kernel):
  """(B, h, w, J) float32 -> ((B, J, 2), (B, J)). See `decode`."""
  b, h, w, j = heatmaps.shape
  flat = heatmaps.reshape(b, h * w, j)
  index = jnp.argmax(flat, axis=1)  # (B, J)
  peak = jnp.take_along_axis(flat, index[:, None], axis=1)[:, 0]
  px, py = index % w, index // w
  coords = jnp.stack([px, py], axis=-1).astype(jnp.float32)
  if method == "argmax":
    return coords, peak

  def at(maps, offsets):
    """The maps' values at the argmax shifted by each (dy, dx): (len(offsets), B, J).

    Out-of-map neighbours repeat the border; they are only used where the stencil fits,
    or through a sign that the border rule then zeroes.
    """
    dy, dx = (jnp.array(d)[:, None, None] for d in zip(*offsets))
    idx = jnp.clip(py + dy, 0, h - 1) * w + jnp.clip(px + dx, 0, w - 1)  # (n, B, J)
    values = jnp.take_along_axis(
        maps.reshape(b, h * w, j), jnp.moveaxis(idx, 0, 1), axis=1)  # (B, n, J)
    return jnp.moveaxis(values, 1, 0)

  # Quarter offset: a quarter pixel toward the higher neighbour (Newell et al. 2016).
  right, left, down, up = at(heatmaps, [(0, 1), (0, -1), (1, 0), (-1, 0)])
  qx = jnp.where((px > 0) & (px < w - 1), jnp.sign(right - left), 0.0)
  qy = jnp.where((py > 0) & (py < h - 1), jnp.sign(down - up), 0.0)
  quarter = coords + 0.25 * jnp.stack([qx, qy], axis=-1)
  if method == "quarter":
    return quarter, peak

  # DARK (Zhang et al., CVPR 2020): a Gaussian is a quadratic in log space, so one Newton
  # step on the log heatmap from the argmax lands on the sub-pixel maximum.
  maps = heatmaps
  if smoothing_kernel:
    smoothed = _gaussian_blur(heatmaps, smoothing_kernel)
    # Keep each map's original peak height, as DARK does.
    top = jnp.maximum(jnp.max(smoothed, axis=(1, 2)), 1e-10)  # (B, J)
    maps = smoothed * (peak / top)[:, None, None, :]
  offsets = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (0, 2), (0, -2), (2, 0), (-2, 0),
             (1, 1), (-1, 1), (1, -1), (-1, -1)]
  # The log of the 13 stencil values only (not of whole maps).
  v = dict(zip(offsets, jnp.log(jnp.maximum(at(maps, offsets), 1e-10))))
  dx = 0.5 * (v[0, 1] - v[0, -1])
  dy = 0.5 * (v[1, 0] - v[-1, 0])
  dxx = 0.25 * (v[0, 2] - 2 * v[0, 0] + v[0, -2])
  dyy = 0.25 * (v[2, 0] - 2 * v[0, 0] + v[-2, 0])
  dxy = 0.25 * (v[1, 1] - v[-1, 1] - v[1, -1] + v[-1, -1])
  det = dxx * dyy - dxy**2
  # Newton's step only where the log map is locally a maximum (Hessian negative definite)
  # and the 5x5 stencil fits; elsewhere (borders, flat or odd maps) the quarter offset.
  ok = ((px >= 2) & (px <= w - 3) & (py >= 2) & (py <= h - 3) & (dxx < 0) & (det > 1e-12)
        & jnp.isfinite(det))
  safe_det = jnp.where(ok, det, 1.0)
  ox = -(dyy * dx - dxy * dy) / safe_det
  oy = -(dxx * dy - dxy * dx) / safe_det
  # The argmax pixel beats its neighbours, so a unimodal peak lies within one pixel of it.
  offset = jnp.clip(jnp.stack([ox, oy], axis=-1), -1.0, 1.0)
  return jnp.where(ok[..., None], coords + offset, quarter), peak


def decode(heatmaps, method="quarter", smoothing_kernel=None):
  """Heatmaps -> sub-pixel joint coordinates and confidences.

  Args:
    heatmaps: (B, h, w, J) float.
    method: 'argmax' (integer peak); 'quarter' (peak + 0.25 px toward the higher
      neighbour, per axis: the Stacked Hourglass decoding); 'taylor' (DARK: a second-order
      Taylor expansion of the log heatmap around the peak; falls back to 'quarter' at the
      border, where the 5x5 stencil does not fit).
    smoothing_kernel: for 'taylor', an odd Gaussian kernel size to smooth the heatmap
      first (DARK's modulation, e.g. 11 for sigma = 2 targets); None skips it.

  Returns:
    coords: (B, J, 2) float32 (x, y) in heatmap pixels.
    confidence: (B, J) the peak value of each (unsmoothed) map.
  """
  heatmaps = jnp.asarray(heatmaps)
  if heatmaps.ndim != 4:
    raise ValueError(f"heatmaps must have shape (B, h, w, J), got {heatmaps.shape}.")
  if 0 in heatmaps.shape:
    raise ValueError(f"heatmaps must be non-empty (B, h, w, J), got {heatmaps.shape}.")
  _check_float("heatmaps", heatmaps)
  if method not in DECODE_METHODS:
    raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}.")
  if smoothing_kernel is not None and (
      isinstance(smoothing_kernel, bool) or not isinstance(smoothing_kernel, int)
      or smoothing_kernel < 1 or smoothing_kernel % 2 == 0):
    raise ValueError(
        f"smoothing_kernel must be None or an odd positive int, got {smoothing_kernel!r}.")
  if smoothing_kernel is not None and method != "taylor":
    raise ValueError("smoothing_kernel only applies to method='taylor'.")
  if _is_concrete(heatmaps) and np.isnan(np.asarray(heatmaps)).any():
    raise ValueError("heatmaps holds NaN values.")
  return _decode(heatmaps.astype(jnp.float32), method, smoothing_kernel)
