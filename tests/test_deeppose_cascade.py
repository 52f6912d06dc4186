"""DeepPose's cascade as the paper trains it (jhpe.train.cascade, Toshev & Szegedy Sec. 3.2):
torso-diameter boxes, stage-wise training with frozen earlier stages, perturbation
statistics of the previous stage's errors, the loss on box-normalised displacements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import skeletons
from jhpe.models import deeppose as deeppose_lib
from jhpe.train import cascade
from jhpe.train import config as config_lib
from jhpe.train import state as state_lib
from jhpe.train import steps as steps_lib

# A tiny stage-wise config: 32 px canvases, ResNet regressors of width 1/16, 16 px crops.
TINY = config_lib.Config(
    model="deeppose", dataset="synthetic/tiny", input_size=32, batch_size=4,
    optimizer="adam", learning_rate=1e-2, aug_rotation=0.0, aug_scale=0.0,
    model_kwargs=dict(num_stages=2, backbone="resnet", width=0.0625, crop_size=16,
                      box_scale=2.0, resnet_blocks=(1, 1)))
LSP = skeletons.get_skeleton("lsp")


def _poses(n, seed=0):
  """(n, 14, 2) normalised poses around the centre and all joints visible."""
  rng = np.random.default_rng(seed)
  return (0.5 + 0.2 * rng.standard_normal((n, 14, 2))).astype(np.float32), np.ones((n, 14))


def test_crop_side_is_the_torso_diameter_times_the_papers_factor(monkeypatch):
  model = config_lib.build_model(TINY)
  assert model.diameter == "torso"
  assert tuple(model.diameter_joints) == LSP.torso_joints == (9, 2)  # l shoulder, r hip
  mpii = config_lib.build_model(TINY.replace(dataset="mpii"))
  assert tuple(mpii.diameter_joints) == skeletons.get_skeleton("mpii").torso_joints

  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images)
  seen = []
  crop = deeppose_lib.crop_windows
  monkeypatch.setattr(deeppose_lib, "crop_windows",
                      lambda im, c, sides, size: seen.append((c, sides)) or crop(
                          im, c, sides, size))
  # Move stage 1's estimates off the centre: a bias on its output layer.
  params = jax.tree.map(jnp.asarray, variables["params"])
  params["stage1"]["out"]["bias"] = jax.random.uniform(jax.random.key(2), (28,),
                                                       minval=-0.3, maxval=0.3)
  outputs = model.apply({**variables, "params": params}, images)
  centres, sides = seen[0]
  prev = np.asarray(outputs[0])
  torso = np.linalg.norm(prev[:, 9] - prev[:, 2], axis=-1)
  np.testing.assert_allclose(centres, prev, atol=1e-6)
  np.testing.assert_allclose(sides, np.maximum(2.0 * torso, model.min_box), rtol=1e-5)
  assert (2.0 * torso > model.min_box).all()  # the factor, not the floor, set the side


def test_torso_diameter_needs_its_joints():
  with pytest.raises(ValueError, match="diameter='torso' needs diameter_joints"):
    deeppose_lib.DeepPose(num_stages=2, diameter="torso")
  with pytest.raises(ValueError, match="diameter must be one of"):
    deeppose_lib.DeepPose(diameter="hips")


def test_statistics_are_the_measured_errors_mean_and_covariance():
  model = config_lib.build_model(TINY)
  gt, visible = _poses(50)
  rng = np.random.default_rng(1)
  pred = gt + 0.05 * rng.standard_normal(gt.shape).astype(np.float32) + 0.01
  visible[3, 5] = 0  # an unannotated joint: not measured
  visible[7, 9] = 0  # the torso's left shoulder missing: no box for that person
  errors, mask = cascade.box_errors(pred, gt, visible, model)
  side = 2.0 * np.linalg.norm(gt[:, 9] - gt[:, 2], axis=-1)
  np.testing.assert_allclose(errors, (pred - gt) / side[:, None, None], rtol=1e-5)
  assert not mask[3, 5] and not mask[7].any() and mask.sum() == 50 * 14 - 14 - 1
  mean, cov, count = cascade.error_statistics(errors, mask)
  for j in (0, 5):
    e = errors[mask[:, j], j].astype(np.float64)
    np.testing.assert_allclose(mean[j], e.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(cov[j], np.cov(e.T), rtol=1e-6)
  assert count[5] == 48 and count[0] == 49
  record = cascade.stats_record(mean, cov, count, 1, 50, model)
  assert record["diameter_joints"] == [9, 2] and record["box_scale"] == 2.0
  assert np.asarray(record["cov"]).shape == (14, 2, 2)


def test_boxes_are_drawn_from_the_statistics_around_the_ground_truth():
  model = config_lib.build_model(TINY)
  mean = np.tile([[0.1, -0.05]], (14, 1)).astype(np.float32)
  cov = np.tile([[[0.02, 0.01], [0.01, 0.03]]], (14, 1, 1)).astype(np.float32)
  training = cascade.StageTraining(2, mean, cov)
  gt, visible = _poses(4000)
  (centres, sides), targets, weights = cascade.sample_boxes(
      jax.random.key(3), jnp.asarray(gt), jnp.asarray(visible), training, model)
  delta = (np.asarray(centres) - gt) / np.asarray(sides)[:, None, None]
  np.testing.assert_allclose(delta[:, 4].mean(axis=0), mean[4], atol=0.01)
  np.testing.assert_allclose(np.cov(delta[:, 4].T), cov[4], atol=0.003)
  # The target is the box-normalised displacement to the ground truth: -delta.
  np.testing.assert_allclose(targets, -delta, atol=1e-5)
  torso = np.linalg.norm(gt[:, 9] - gt[:, 2], axis=-1)
  np.testing.assert_allclose(sides, np.maximum(2.0 * torso, model.min_box), rtol=1e-5)
  assert np.asarray(weights).shape == (4000, 14)


def test_refinement_targets_are_in_box_units_whatever_the_persons_size():
  """The loss is on box-normalised displacements: a person twice as large, displaced
  by the same draws, has the same targets (not four times the squared error)."""
  model = config_lib.build_model(TINY)
  training = cascade.StageTraining(2, np.zeros((14, 2), np.float32),
                                   np.tile(0.01 * np.eye(2, dtype=np.float32), (14, 1, 1)))
  gt, visible = _poses(8)
  key = jax.random.key(4)
  _, small, _ = cascade.sample_boxes(key, jnp.asarray(0.5 + 0.5 * (gt - 0.5)),
                                     jnp.asarray(visible), training, model)
  _, large, _ = cascade.sample_boxes(key, jnp.asarray(gt), jnp.asarray(visible), training,
                                     model)
  np.testing.assert_allclose(small, large, atol=1e-5)


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 255, (1, n, 32, 32, 3), dtype=np.uint8),
          "joints": (8 + 16 * rng.random((1, n, 14, 2))).astype(np.float32),
          "visible": np.ones((1, n, 14), np.float32)}


def test_stage_s_gradients_do_not_reach_earlier_stages():
  config = TINY.replace(train_stage=2, init_from="unused")
  model = config_lib.build_model(config)
  state = state_lib.create_train_state(jax.random.key(0), model, config)
  training = cascade.StageTraining(2, np.zeros((14, 2), np.float32),
                                   np.tile(0.01 * np.eye(2, dtype=np.float32), (14, 1, 1)))
  step = steps_lib.make_pmap_train_step(model, config, devices=jax.local_devices()[:1],
                                        flip_permutation=LSP.flip_permutation,
                                        stage_training=training)
  before = jax.device_get(state)
  replicated = steps_lib.replicate_pmap(state, jax.local_devices()[:1])
  for seed in range(2):
    replicated, metrics = step(replicated, _batch(seed=seed))
  after = steps_lib.unreplicate_pmap(jax.device_get(replicated))
  assert np.isfinite(metrics["loss"][0]) and metrics["nonfinite"][0] == 0
  same = lambda a, b: all(np.array_equal(x, y) for x, y in
                          zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(before.params["stage1"], after.params["stage1"])
  assert same(before.batch_stats["stage1"], after.batch_stats["stage1"])
  assert not same(before.params["stage2"], after.params["stage2"])
  assert not same(before.batch_stats["stage2"], after.batch_stats["stage2"])
  # The optimiser holds no state for the frozen stage, even with weight decay.
  decayed = state_lib.make_optimizer(config.replace(weight_decay=0.1))
  grads = jax.tree.map(jnp.ones_like, before.params)
  updates, _ = decayed.update(grads, decayed.init(before.params), before.params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["stage1"]))


def test_stage_wise_config_is_checked():
  with pytest.raises(ValueError, match="--train_stage=2 needs --init_from"):
    TINY.replace(train_stage=2).validate()
  with pytest.raises(ValueError, match="--train_stage=3"):
    TINY.replace(train_stage=3, init_from="x").validate()
