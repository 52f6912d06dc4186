"""Tests for jhpe.geometry (numpy and jax.numpy inputs, jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import geometry


def test_primitives_on_known_points():
  p = np.array([[2.0, 3.0]])
  np.testing.assert_allclose(
      geometry.apply_affine(geometry.translation_matrix([1.0, -1.0]), p), [[3.0, 2.0]])
  np.testing.assert_allclose(
      geometry.apply_affine(geometry.scale_matrix(2.0), p), [[4.0, 6.0]])
  np.testing.assert_allclose(
      geometry.apply_affine(geometry.scale_matrix(2.0, 0.5), p), [[4.0, 1.5]])
  # +90 degrees is counter-clockwise as displayed (y down): +x goes to -y (up).
  np.testing.assert_allclose(
      geometry.apply_affine(geometry.rotation_matrix(90.0), np.array([[1.0, 0.0]])),
      [[0.0, -1.0]], atol=1e-6)
  # Flip of a 10-pixel-wide image: pixel 0 <-> pixel 9, 4.5 is the fixed point.
  np.testing.assert_allclose(
      geometry.apply_affine(geometry.flip_matrix(10), np.array([[0.0, 1.0], [4.5, 2.0]])),
      [[9.0, 1.0], [4.5, 2.0]])


def test_crop_matrix_maps_centre_and_scale():
  m = geometry.crop_matrix(np.array([50.0, 80.0]), 200.0, 256)
  assert m.shape == (3, 3)
  centre, top = geometry.apply_affine(m, np.array([[50.0, 80.0], [50.0, -20.0]]))
  np.testing.assert_allclose(centre, [127.5, 127.5], atol=1e-4)
  # 100 original pixels are half the person's size: half the canvas.
  np.testing.assert_allclose(top, [127.5, 127.5 - 128.0], atol=1e-4)


def test_crop_matrix_flip_and_rotation():
  center, scale = np.array([30.0, 40.0]), 64.0
  pts = np.array([[20.0, 35.0], [41.0, 50.0]])
  plain = geometry.apply_affine(geometry.crop_matrix(center, scale, 64), pts)
  flipped = geometry.apply_affine(geometry.crop_matrix(center, scale, 64, flip=True), pts)
  np.testing.assert_allclose(flipped[:, 0], 63.0 - plain[:, 0], atol=1e-4)
  np.testing.assert_allclose(flipped[:, 1], plain[:, 1], atol=1e-4)
  rotated = geometry.apply_affine(
      geometry.crop_matrix(center, scale, 64, rotation_deg=30.0), pts)
  # Rotation about the canvas centre keeps distances to it.
  c = 31.5
  np.testing.assert_allclose(np.linalg.norm(rotated - c, axis=-1),
                             np.linalg.norm(plain - c, axis=-1), rtol=1e-5)
  assert not np.allclose(rotated, plain)


def test_invert_and_compose_roundtrip():
  rng = np.random.default_rng(0)
  m = geometry.crop_matrix(rng.uniform(0, 300, (5, 2)), rng.uniform(50, 400, (5,)), 128,
                           rotation_deg=rng.uniform(-40, 40, (5,)),
                           flip=rng.uniform(size=(5,)) > 0.5)
  assert m.shape == (5, 3, 3)
  pts = rng.uniform(0, 300, (5, 14, 2))
  back = geometry.apply_affine(geometry.invert_affine(m), geometry.apply_affine(m, pts))
  np.testing.assert_allclose(back, pts, atol=1e-6)
  np.testing.assert_allclose(geometry.invert_affine(m) @ m, np.broadcast_to(np.eye(3), m.shape),
                             atol=1e-9)


def test_compose_applies_last_first():
  t = geometry.translation_matrix([10.0, 0.0])
  s = geometry.scale_matrix(2.0)
  p = np.array([[1.0, 1.0]])
  np.testing.assert_allclose(geometry.apply_affine(geometry.compose(t, s), p), [[12.0, 2.0]])
  np.testing.assert_allclose(
      geometry.compose(jnp.asarray(t), jnp.asarray(s)), t @ s, rtol=1e-6)
  with pytest.raises(ValueError, match=r"matrices\[1\]"):
    geometry.compose(t, np.eye(2))


def test_numpy_in_numpy_out_and_jax_in_jax_out():
  m_np = geometry.crop_matrix(np.array([10.0, 20.0]), 50.0, 64, rotation_deg=10.0)
  assert isinstance(m_np, np.ndarray)
  m_j = geometry.crop_matrix(jnp.array([10.0, 20.0]), 50.0, 64, rotation_deg=10.0)
  assert isinstance(m_j, jax.Array)
  np.testing.assert_allclose(np.asarray(m_j), m_np, rtol=1e-5, atol=1e-4)


def test_jittable_with_traced_flip_and_batches():
  @jax.jit
  def f(center, scale, rot, flip, pts):
    m = geometry.crop_matrix(center, scale, 64, rotation_deg=rot, flip=flip)
    return geometry.apply_affine(geometry.invert_affine(m), geometry.apply_affine(m, pts))

  rng = np.random.default_rng(1)
  pts = jnp.asarray(rng.uniform(0, 100, (3, 7, 2)), jnp.float32)
  out = f(jnp.asarray(rng.uniform(20, 80, (3, 2)), jnp.float32),
          jnp.asarray([60.0, 90.0, 120.0]), jnp.asarray([0.0, 15.0, -30.0]),
          jnp.asarray([True, False, True]), pts)
  np.testing.assert_allclose(out, pts, atol=1e-3)


def test_single_point_and_broadcast_matrix():
  m = geometry.translation_matrix([1.0, 2.0])
  np.testing.assert_allclose(geometry.apply_affine(m, np.array([0.0, 0.0])), [1.0, 2.0])
  out = geometry.apply_affine(m, np.zeros((4, 3, 2)))
  assert out.shape == (4, 3, 2)
  np.testing.assert_allclose(out[..., 1], 2.0)


@pytest.mark.parametrize("call, match", [
    (lambda: geometry.apply_affine(np.eye(2), np.zeros((3, 2))),
     r"m must have shape \(\.\.\., 3, 3\)"),
    (lambda: geometry.apply_affine(np.eye(3), np.zeros((3, 3))), r"pts must have shape"),
    (lambda: geometry.apply_affine(np.eye(3), np.array([[np.nan, 1.0]])), "pts holds NaN"),
    (lambda: geometry.invert_affine(np.zeros((3, 3))), "singular"),
    (lambda: geometry.crop_matrix(np.zeros(3), 1.0, 8), r"center must have shape \(\.\.\., 2\)"),
    (lambda: geometry.crop_matrix(np.zeros(2), 0.0, 8), "scale must be > 0"),
    (lambda: geometry.crop_matrix(np.zeros((4, 2)), np.ones(3), 8), "scale must have shape"),
    (lambda: geometry.crop_matrix(np.zeros(2), 1.0, 8.5), "output_size"),
    (lambda: geometry.crop_matrix(np.zeros((4, 2)), 1.0, 8, rotation_deg=np.ones(3)),
     r"rotation_deg must have shape \(\) or \(4,\)"),
    (lambda: geometry.crop_matrix(np.zeros(2), 1.0, 8, rotation_deg=np.nan), "rotation_deg"),
    (lambda: geometry.apply_affine(np.eye(3), np.array([["a", "b"]])), "pts must be a real"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
