"""Tests of jhpe.train.augment: flips, the joint swap, and warps that keep joints on content."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import geometry
from jhpe import skeletons
from jhpe.train import augment

S = 32


def _augment(key, batch, **kwargs):
  """augment under jit (one compilation instead of many eager ops)."""
  return jax.jit(functools.partial(augment.augment, **kwargs))(key, batch)


def _batch(rng, b=4, j=14, size=S):
  return dict(
      image=jnp.asarray(rng.integers(0, 256, (b, size, size, 3)), jnp.uint8),
      joints=jnp.asarray(rng.uniform(2, size - 3, (b, j, 2)), jnp.float32),
      visible=jnp.asarray(rng.integers(0, 2, (b, j)), jnp.float32),
      canvas_to_original=jnp.asarray(
          np.tile(np.diag([2., 2., 1.]), (b, 1, 1)) + rng.uniform(0, 1, (b, 3, 3))
          * np.array([0, 0, 1, 0, 0, 1, 0, 0, 0]).reshape(3, 3), jnp.float32),
      index=jnp.arange(b, dtype=jnp.int32))


def test_flip_twice_is_identity():
  batch = _batch(np.random.default_rng(0))
  perm = skeletons.LSP.flip_permutation
  twice = augment.flip_batch(augment.flip_batch(batch, perm), perm)
  for key in ('image', 'joints', 'visible', 'canvas_to_original', 'index'):
    np.testing.assert_allclose(np.asarray(twice[key]), np.asarray(batch[key]), atol=1e-5,
                               err_msg=key)
  once = augment.flip_batch(batch, perm)
  assert not np.allclose(np.asarray(once['joints']), np.asarray(batch['joints']))


def test_flip_swaps_every_joint_with_its_mirror():
  skeleton = skeletons.LSP
  batch = _batch(np.random.default_rng(1))
  flipped = augment.flip_batch(batch, skeleton.flip_permutation)
  names = skeleton.joint_names
  for i, name in enumerate(names):
    mirror = name.replace('left', 'RIGHT').replace('right', 'left').replace('RIGHT', 'right')
    k = names.index(mirror)  # the joint itself for neck and head top
    expected_x = S - 1 - np.asarray(batch['joints'])[:, k, 0]
    np.testing.assert_allclose(np.asarray(flipped['joints'])[:, i, 0], expected_x,
                               err_msg=name)
    np.testing.assert_allclose(np.asarray(flipped['joints'])[:, i, 1],
                               np.asarray(batch['joints'])[:, k, 1])
    np.testing.assert_array_equal(np.asarray(flipped['visible'])[:, i],
                                  np.asarray(batch['visible'])[:, k])
  # The flipped image is the mirror of the pixels.
  np.testing.assert_array_equal(np.asarray(flipped['image'])[:, :, 0],
                                np.asarray(batch['image'])[:, :, S - 1])


def _dots(points, size):
  """(B, 3, 2) points -> images with a small Gaussian dot of joint j in channel j."""
  ys, xs = np.mgrid[0:size, 0:size]
  img = np.zeros((len(points), size, size, 3), np.float32)
  for b, pts in enumerate(points):
    for j, (x, y) in enumerate(pts):
      img[b, :, :, j] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2))
  return img


def test_augment_keeps_joints_on_their_content():
  size, b = 48, 16
  rng = np.random.default_rng(2)
  pts = rng.uniform(14, size - 15, (b, 3, 2)).astype(np.float32)
  perm = np.array([1, 0, 2], np.int32)  # joints 0 and 1 are a left/right pair
  batch = dict(image=jnp.asarray(_dots(pts, size)), joints=jnp.asarray(pts),
               visible=jnp.ones((b, 3), jnp.float32),
               canvas_to_original=jnp.tile(jnp.eye(3), (b, 1, 1)))
  fn = jax.jit(lambda key, x: augment.augment(key, x, flip_permutation=perm,
                                              color_jitter=0., shift_fraction=0.05))
  out = jax.tree.map(np.asarray, fn(jax.random.key(0), batch))
  assert out['image'].dtype == np.float32 and out['image'].shape == (b, size, size, 3)
  flipped = np.zeros(b, bool)
  for i in range(b):
    for j in range(3):
      if not out['visible'][i, j]:
        continue
      # The dot under joint j: its own channel, or its mirror's after a flip.
      ch_own, ch_swap = out['image'][i, :, :, j], out['image'][i, :, :, perm[j]]
      x, y = np.round(out['joints'][i, j]).astype(int)
      own, swap = ch_own[y, x], ch_swap[y, x]
      channel = ch_own if own >= swap else ch_swap
      flipped[i] |= (own < swap)
      peak = np.array(np.unravel_index(np.argmax(channel), channel.shape))[::-1]
      assert np.linalg.norm(peak - out['joints'][i, j]) <= 1.5, (i, j)
      # canvas_to_original maps the new joint back onto the original point.
      src = perm[j] if own < swap else j
      back = geometry.apply_affine(out['canvas_to_original'][i], out['joints'][i, j])
      np.testing.assert_allclose(back, pts[i, src], atol=1e-2)
  assert 0 < flipped.sum() < b  # both cases happened


def test_joints_leaving_the_canvas_become_invisible():
  b = 2
  joints = jnp.asarray([[[1., 1.], [S / 2, S / 2]]] * b)
  batch = dict(image=jnp.zeros((b, S, S, 3), jnp.uint8), joints=joints,
               visible=jnp.ones((b, 2)))
  out = _augment(jax.random.key(1), batch, flip_permutation=[0, 1],
                        rotation_deg=0., scale_range=(2., 2.), flip_prob=0.)
  np.testing.assert_array_equal(np.asarray(out['visible']), [[0., 1.]] * b)
  np.testing.assert_array_equal(np.asarray(out['joints'])[:, 0], 0.)


def test_identity_parameters_change_nothing():
  batch = _batch(np.random.default_rng(3))
  out = _augment(jax.random.key(2), batch, flip_permutation=np.arange(14),
                        rotation_deg=0., scale_range=(1., 1.), flip_prob=0.,
                        color_jitter=0.)
  np.testing.assert_allclose(np.asarray(out['image']),
                             np.asarray(batch['image']) / 255., atol=1e-5)
  np.testing.assert_allclose(np.asarray(out['joints']),
                             np.asarray(batch['joints']) * np.asarray(batch['visible'])[
                                 ..., None], atol=1e-4)


def test_color_jitter_stays_in_range_and_is_seeded():
  batch = _batch(np.random.default_rng(4))
  kw = dict(flip_permutation=np.arange(14), color_jitter=0.4)
  a = _augment(jax.random.key(5), batch, **kw)['image']
  b = _augment(jax.random.key(5), batch, **kw)['image']
  c = _augment(jax.random.key(6), batch, **kw)['image']
  assert float(a.min()) >= 0. and float(a.max()) <= 1.
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bad_permutation_is_rejected():
  batch = _batch(np.random.default_rng(5))
  with pytest.raises(ValueError, match='flip_permutation'):
    augment.augment(jax.random.key(0), batch, flip_permutation=np.arange(3))


def test_per_example_keys_make_examples_independent_of_the_batch():
  batch = _batch(np.random.default_rng(6), b=4)
  keys = jax.random.split(jax.random.key(7), 4)
  kw = dict(flip_permutation=skeletons.LSP.flip_permutation, shift_fraction=0.1)
  whole = _augment(keys, batch, **kw)
  half = _augment(keys[2:], jax.tree.map(lambda x: x[2:], batch), **kw)
  for key in ('image', 'joints', 'visible', 'canvas_to_original'):
    np.testing.assert_allclose(np.asarray(whole[key])[2:], np.asarray(half[key]),
                               atol=1e-5, err_msg=key)
  legacy = _augment(jax.random.PRNGKey(0), batch, **kw)  # raw uint32 key
  assert legacy['image'].shape == batch['image'].shape
  with pytest.raises(ValueError, match='rng'):
    augment.augment(keys[:3], batch, **kw)
