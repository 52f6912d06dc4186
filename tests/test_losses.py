"""Tests for jhpe.losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import heatmaps
from jhpe import losses


def test_heatmap_loss_hand_computed():
  targets = np.zeros((2, 2, 2, 2), np.float32)
  pred = np.zeros_like(targets)
  pred[0, 0, 0, 0] = 2.0  # Squared error 4 in (b=0, k=0).
  pred[1, 1, 1, 1] = 3.0  # Squared error 9 in (b=1, k=1), which is invisible.
  weights = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
  total, per_stage = losses.heatmap_loss([pred], targets, weights)
  # 3 weighted joints x 4 pixels: 4 / 12; the invisible joint's error is ignored.
  np.testing.assert_allclose(per_stage, [4.0 / 12.0], rtol=1e-6)
  np.testing.assert_allclose(total, 4.0 / 12.0, rtol=1e-6)


def test_heatmap_loss_sums_stages():
  rng = np.random.default_rng(0)
  targets = rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
  stages = [rng.uniform(size=targets.shape).astype(np.float32) for _ in range(3)]
  weights = np.ones((2, 3), np.float32)
  total, per_stage = losses.heatmap_loss(stages, targets, weights)
  expected = [np.mean((s - targets) ** 2) for s in stages]
  np.testing.assert_allclose(per_stage, expected, rtol=1e-5)
  np.testing.assert_allclose(total, sum(expected), rtol=1e-5)


def test_heatmap_loss_all_invisible_is_zero_with_finite_grads():
  targets = jnp.zeros((1, 3, 3, 2))
  pred = jnp.ones((1, 3, 3, 2))
  grad = jax.grad(lambda p: losses.heatmap_loss([p], targets, jnp.zeros((1, 2)))[0])(pred)
  assert float(losses.heatmap_loss([pred], targets, jnp.zeros((1, 2)))[0]) == 0.0
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_heatmap_loss_cpm_background_weight():
  hm, w = heatmaps.render_gaussian(jnp.array([[[1.0, 1.0]]]), jnp.zeros((1, 1)), (4, 4), 1.0)
  targets = heatmaps.add_background(hm)  # Joint map all zero, background all one.
  pred = jnp.zeros_like(targets)
  with pytest.raises(ValueError, match="add_background_weight"):
    losses.heatmap_loss([pred], targets, w)
  total, _ = losses.heatmap_loss([pred], targets, heatmaps.add_background_weight(w))
  # Only the background (weight 1) counts: error 1 on each of its 16 pixels.
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)


def test_heatmap_loss_bfloat16_outputs_in_float32():
  targets = jnp.full((1, 2, 2, 1), 0.5)
  total, _ = losses.heatmap_loss([jnp.zeros((1, 2, 2, 1), jnp.bfloat16)], targets,
                                 jnp.ones((1, 1)))
  assert total.dtype == jnp.float32
  np.testing.assert_allclose(total, 0.25, rtol=1e-6)


@pytest.mark.parametrize("kind, expected", [
    # Visible joint 0: error (0.3, 0.4); joint 1 invisible with a NaN target.
    ("l2", 0.25),
    ("l1", 0.7),
    # smooth L1 with beta 0.02: both |errors| > beta: (0.3 - 0.01) + (0.4 - 0.01).
    ("smooth_l1", 0.68),
])
def test_regression_loss_hand_computed(kind, expected):
  targets = np.array([[[0.5, 0.5], [np.nan, np.nan]]], np.float32)
  pred = np.array([[[0.8, 0.9], [0.0, 0.0]]], np.float32)
  visible = np.array([[1.0, 0.0]], np.float32)
  total, per_stage = losses.regression_loss([pred, pred], targets, visible, kind=kind)
  np.testing.assert_allclose(per_stage, [expected, expected], rtol=1e-5)
  np.testing.assert_allclose(total, 2 * expected, rtol=1e-5)


def test_smooth_l1_quadratic_zone():
  total, _ = losses.regression_loss([jnp.array([[[0.01, 0.0]]])], jnp.zeros((1, 1, 2)),
                                    jnp.ones((1, 1)), kind="smooth_l1", beta=0.02)
  np.testing.assert_allclose(total, 0.5 * 0.01**2 / 0.02, rtol=1e-5)


def test_losses_jit():
  f = jax.jit(lambda p, t, w: losses.heatmap_loss([p, p], t, w))
  total, per_stage = f(jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 1)))
  np.testing.assert_allclose(per_stage, [1.0, 1.0])
  np.testing.assert_allclose(total, 2.0)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.heatmap_loss([], np.zeros((1, 2, 2, 1)), np.ones((1, 1))), "empty"),
    (lambda: losses.heatmap_loss(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)),
                                 np.ones((1, 1))), "list over stages"),
    (lambda: losses.heatmap_loss([np.zeros((1, 2, 2, 2))], np.zeros((1, 2, 2, 1)),
                                 np.ones((1, 1))), r"stage_outputs\[0\]"),
    (lambda: losses.heatmap_loss([np.zeros((1, 2, 2, 1))], np.zeros((1, 2, 2, 1)),
                                 np.ones((1, 3))), r"weights must have shape \(B, K\)"),
    (lambda: losses.heatmap_loss([np.zeros((0, 2, 2, 1))], np.zeros((0, 2, 2, 1)),
                                 np.ones((0, 1))), "non-empty"),
    (lambda: losses.regression_loss([np.zeros((1, 3, 2))], np.zeros((1, 3, 2)),
                                    np.ones((1, 3)), kind="l3"), "kind"),
    (lambda: losses.regression_loss([np.zeros((1, 3, 2))], np.zeros((1, 3, 2)),
                                    np.ones((3,))), r"visible must have shape \(B, J\)"),
    (lambda: losses.regression_loss([np.zeros((1, 3))], np.zeros((1, 3)),
                                    np.ones((1, 3))), r"targets must have shape \(B, J, 2\)"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
