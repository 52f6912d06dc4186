"""Tests for jhpe.heatmaps: rendering, decoding, flipping, the pixel convention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import heatmaps
from jhpe import skeletons


SIZE, SIGMA = 64, 2.0
SKELETON = skeletons.LSP


def _random_joints(seed, shape, size, margin):
  rng = np.random.default_rng(seed)
  return rng.uniform(margin, size - 1 - margin, shape + (2,)).astype(np.float32)


@pytest.fixture(scope="module")
def rendered():
  """2,688 random sub-pixel joints 4+ px from the border, and their heatmaps.

  One shape for all the decoding tests, so each decoder compiles once.
  """
  joints = _random_joints(0, (192, SKELETON.num_joints), SIZE, margin=4)
  hm, _ = heatmaps.render_gaussian(joints, np.ones(joints.shape[:2]), (SIZE, SIZE), SIGMA)
  return joints, hm


def test_render_peak_value_and_location():
  joints = np.array([[[3.0, 5.0], [10.25, 2.5]]], np.float32)
  hm, w = heatmaps.render_gaussian(joints, np.ones((1, 2)), (8, 16), sigma=1.5)
  assert hm.shape == (1, 8, 16, 2) and w.shape == (1, 2)
  np.testing.assert_allclose(w, [[1.0, 1.0]])
  assert float(hm[0, 5, 3, 0]) == pytest.approx(1.0)
  # Value at a known offset: d^2 = 1 -> exp(-1 / (2 * 1.5^2)).
  assert float(hm[0, 5, 4, 0]) == pytest.approx(np.exp(-1 / 4.5), rel=1e-5)
  assert float(hm[0, 2, 10, 1]) == pytest.approx(np.exp(-(0.25**2 + 0.5**2) / 4.5), rel=1e-5)


def test_render_invisible_and_off_map_joints_get_zero_map_and_weight():
  joints = np.array([[[3.0, 3.0], [3.0, 3.0], [-0.6, 3.0], [3.0, 7.5], [7.49, -0.5]]],
                    np.float32)
  visible = np.array([[1, 0, 1, 1, 1]], np.float32)
  hm, w = heatmaps.render_gaussian(joints, visible, (8, 8), sigma=1.0)
  np.testing.assert_array_equal(w, [[1, 0, 0, 0, 1]])
  for j in (1, 2, 3):
    assert float(jnp.abs(hm[0, ..., j]).max()) == 0.0
  assert float(hm[0, ..., 4].max()) > 0.5


@pytest.mark.parametrize("method, tol", [("taylor", 0.1), ("quarter", 0.3)])
def test_encode_decode_roundtrip(rendered, method, tol):
  """Thousands of sub-pixel joints away from the border come back within tol px.

  Taylor: Euclidean error < 0.1. Quarter: the per-axis error is at most 0.25 by
  construction (a quarter step toward the peak), so it is checked per coordinate.
  """
  joints, hm = rendered
  sigma = SIGMA
  coords, conf = heatmaps.decode(hm, method)
  assert coords.shape == joints.shape and conf.shape == joints.shape[:2]
  err = np.asarray(coords) - joints
  if method == "taylor":
    assert np.linalg.norm(err, axis=-1).max() < tol
  else:
    assert np.abs(err).max() < tol
  # Confidence is the peak: within half a pixel of the centre on both axes.
  assert float(conf.min()) >= np.exp(-0.5 / (2 * sigma**2)) - 1e-6
  assert float(conf.max()) <= 1.0 + 1e-6


def test_taylor_beats_quarter_beats_argmax(rendered):
  joints, hm = rendered
  errors = {m: np.abs(np.asarray(heatmaps.decode(hm, m)[0]) - joints).mean()
            for m in heatmaps.DECODE_METHODS}
  assert errors["taylor"] < errors["quarter"] < errors["argmax"]


def test_taylor_with_smoothing_on_noisy_maps(rendered):
  joints, hm = rendered
  # Exact Gaussians stay within the round-trip tolerance after smoothing.
  clean = np.asarray(heatmaps.decode(hm, "taylor", smoothing_kernel=11)[0])
  assert np.linalg.norm(clean - joints, axis=-1).max() < 0.1
  noise = np.random.default_rng(5).uniform(0.0, 0.05, hm.shape).astype(np.float32)
  noisy = hm + noise
  smooth = np.asarray(heatmaps.decode(noisy, "taylor", smoothing_kernel=11)[0])
  raw = np.asarray(heatmaps.decode(noisy, "taylor")[0])
  smooth_err = np.linalg.norm(smooth - joints, axis=-1)
  assert smooth_err.max() < 0.5
  # DARK's modulation is there for noisy maps: it must help on them.
  assert smooth_err.mean() < np.linalg.norm(raw - joints, axis=-1).mean()


def test_argmax_and_quarter_on_hand_made_map():
  hm = np.zeros((1, 5, 6, 1), np.float32)
  hm[0, 2, 3, 0] = 1.0
  hm[0, 2, 4, 0] = 0.5  # Right neighbour higher than the left (0): +0.25 in x.
  hm[0, 1, 3, 0] = 0.2  # Upper neighbour higher than the lower (0): -0.25 in y.
  coords, conf = heatmaps.decode(hm, "argmax")
  np.testing.assert_allclose(coords, [[[3.0, 2.0]]])
  coords, conf = heatmaps.decode(hm, "quarter")
  np.testing.assert_allclose(coords, [[[3.25, 1.75]]])
  np.testing.assert_allclose(conf, [[1.0]])


def test_border_peaks_fall_back_without_nan():
  joints = np.array([[[0.0, 0.0], [31.0, 31.0], [1.2, 30.6]]], np.float32)
  hm, _ = heatmaps.render_gaussian(joints, np.ones((1, 3)), (32, 32), 1.5)
  for method in heatmaps.DECODE_METHODS:
    coords, _ = heatmaps.decode(hm, method)
    assert np.all(np.isfinite(coords))
    assert np.abs(np.asarray(coords) - joints).max() <= 0.5


def test_decode_jit_and_vmap():
  joints = _random_joints(3, (2, 3, 5), 32, margin=4)  # (V, B, J, 2).
  hm, _ = heatmaps.render_gaussian(joints.reshape(6, 5, 2), np.ones((6, 5)), (32, 32), 2.0)
  hm = hm.reshape(2, 3, 32, 32, 5)
  coords, _ = jax.vmap(lambda h: heatmaps.decode(h, "taylor"))(hm)
  np.testing.assert_allclose(coords, joints, atol=1e-2)
  jitted, _ = jax.jit(lambda h: heatmaps.decode(h[0], "quarter"))(hm)
  np.testing.assert_allclose(jitted, joints[0], atol=0.3)


def test_render_vmaps_over_a_leading_axis():
  joints = _random_joints(6, (3, 2, 4), 16, margin=3)  # (V, B, J, 2).
  hm, w = jax.vmap(lambda j: heatmaps.render_gaussian(j, jnp.ones((2, 4)), (16, 16), 1.0))(
      joints)
  assert hm.shape == (3, 2, 16, 16, 4) and w.shape == (3, 2, 4)
  direct, _ = heatmaps.render_gaussian(joints[1], np.ones((2, 4)), (16, 16), 1.0)
  np.testing.assert_allclose(hm[1], direct, atol=1e-6)


def test_render_is_jittable_and_masks_nan_under_jit():
  joints = jnp.array([[[4.0, 4.0], [jnp.nan, 2.0]]])
  render = jax.jit(lambda j, v: heatmaps.render_gaussian(j, v, (8, 8), 1.0))
  hm, w = render(joints, jnp.ones((1, 2)))
  np.testing.assert_array_equal(w, [[1.0, 0.0]])
  assert bool(jnp.all(jnp.isfinite(hm))) and float(hm[..., 1].max()) == 0.0


def test_pixel_convention_canvas_heatmap_roundtrip():
  x = np.array([-0.5, 0.0, 3.5, 255.5])
  u = heatmaps.canvas_to_heatmap(x, 4)
  np.testing.assert_allclose(u, [-0.5, -0.375, 0.5, 63.5])  # Edges map to edges.
  np.testing.assert_allclose(heatmaps.heatmap_to_canvas(u, 4), x)


def test_flip_heatmaps_matches_rendering_flipped_joints(rendered):
  """Rendering flipped joints == flipping the rendering: no shift under our convention."""
  joints, hm = rendered
  perm = SKELETON.flip_permutation
  flipped = joints[:, perm].copy()
  flipped[..., 0] = SIZE - 1 - flipped[..., 0]
  hm_flipped, _ = heatmaps.render_gaussian(flipped, np.ones(joints.shape[:2]),
                                           (SIZE, SIZE), SIGMA)
  np.testing.assert_allclose(heatmaps.flip_heatmaps(hm_flipped, perm), hm, atol=1e-6)
  # Decoding the flipped-back maps recovers the joints.
  coords, _ = heatmaps.decode(heatmaps.flip_heatmaps(hm_flipped, perm), "taylor")
  np.testing.assert_allclose(coords, joints, atol=1e-2)


def test_background_channel():
  hm, w = heatmaps.render_gaussian(np.array([[[2.0, 2.0], [5.0, 5.0]]], np.float32),
                                   np.ones((1, 2)), (8, 8), 1.0)
  full = heatmaps.add_background(hm)
  assert full.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(full[..., 2], 1.0 - hm.max(-1), atol=1e-6)
  assert float(full[0, 2, 2, 2]) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_array_equal(heatmaps.add_background_weight(w * 0), [[0, 0, 1]])
  # Flipping keeps the background channel last.
  perm = np.array([1, 0])
  out = heatmaps.flip_heatmaps(full, perm)
  np.testing.assert_allclose(out[..., 2], full[:, :, ::-1, 2])
  np.testing.assert_allclose(out[..., 0], full[:, :, ::-1, 1])


@pytest.mark.parametrize("call, match", [
    (lambda: heatmaps.render_gaussian(np.zeros((3, 2)), np.ones(3), (8, 8), 1.0),
     r"joints must have shape \(B, J, 2\)"),
    (lambda: heatmaps.render_gaussian(np.zeros((1, 3, 2)), np.ones((1, 2)), (8, 8), 1.0),
     r"visible must have shape \(B, J\)"),
    (lambda: heatmaps.render_gaussian(np.zeros((0, 3, 2)), np.ones((0, 3)), (8, 8), 1.0),
     "empty batch"),
    (lambda: heatmaps.render_gaussian(np.full((1, 1, 2), np.nan), np.ones((1, 1)), (8, 8),
                                      1.0), "NaN"),
    (lambda: heatmaps.render_gaussian(np.zeros((1, 1, 2), np.int32), np.ones((1, 1)),
                                      (8, 8), 1.0), "float"),
    (lambda: heatmaps.render_gaussian(np.zeros((1, 1, 2)), np.ones((1, 1)), (8, 8), 0.0),
     "sigma"),
    (lambda: heatmaps.render_gaussian(np.zeros((1, 1, 2)), np.ones((1, 1)), (8,), 1.0),
     "size"),
    (lambda: heatmaps.render_gaussian(np.zeros((1, 1, 2)), np.ones((1, 1)), 8, 1.0),
     "size"),
    (lambda: heatmaps.decode(np.zeros((8, 8, 2))), r"heatmaps must have shape \(B, h, w, J\)"),
    (lambda: heatmaps.decode(np.zeros((0, 8, 8, 2))), "non-empty"),
    (lambda: heatmaps.decode(np.full((1, 4, 4, 1), np.nan)), "NaN"),
    (lambda: heatmaps.decode(np.zeros((1, 4, 4, 1)), "soft-argmax"), "method"),
    (lambda: heatmaps.decode(np.zeros((1, 4, 4, 1)), "taylor", smoothing_kernel=4),
     "smoothing_kernel"),
    (lambda: heatmaps.flip_heatmaps(np.zeros((1, 4, 4, 3)), np.array([1, 0, 2, 3, 4])),
     "flip_permutation"),
    (lambda: heatmaps.flip_heatmaps(np.zeros((1, 4, 4, 2)), np.array([0, 0])),
     "permutation"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
