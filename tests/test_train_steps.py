"""Config validation, optimisers, the NaN guard inside the step, and the eval mapping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import codecs
from jhpe import geometry
from jhpe import heatmaps
from jhpe import inference
from jhpe import skeletons
from jhpe.train import config as config_lib
from jhpe.train import state as state_lib
from jhpe.train import steps as steps_lib

TINY = config_lib.Config(
    model="hourglass", model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
    dataset="synthetic/tiny", input_size=32, batch_size=4, learning_rate=1e-3)


def _batch(rng, b=4, s=32, j=14):
  return dict(image=rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8),
              joints=rng.uniform(4, s - 4, (b, j, 2)).astype(np.float32),
              visible=np.ones((b, j), np.float32))


# -- Config. --


@pytest.mark.parametrize("change, flag", [
    (dict(dataset="nope"), "--dataset"),
    (dict(train_dataset="lsp+nope"), "--train_dataset"),
    (dict(model="resnet"), "--model"),
    (dict(model_kwargs=dict(num_stacks=0)), "num_stacks"),
    (dict(optimizer="lamb"), "--optimizer"),
    (dict(nan_policy="ignore"), "--nan_policy"),
    (dict(batch_size=0), "--batch_size"),
    (dict(schedule="step"), "--decay_steps"),
    (dict(ema_decay=1.0), "--ema_decay"),
    (dict(test_scales=(1.0, 0.0)), "--test_scales"),
    (dict(model="deeppose", model_kwargs={}, input_size=96, test_scales=(0.8, 1.0)),
     "--test_scales"),
])
def test_bad_config_is_one_line_naming_the_flag(change, flag):
  with pytest.raises(ValueError) as e:
    TINY.replace(**change).validate()
  assert flag in str(e.value) and "\n" not in str(e.value)


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match=r"--batch_size=6 is not divisible by the 4 devices"):
    TINY.replace(batch_size=6).validate(num_devices=4)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="--workdir="):
    config_lib.check_workdir(str(blocker / "sub"))


def test_config_json_round_trip(tmp_path):
  config = TINY.replace(decay_steps=(10, 20), schedule="step")
  config_lib.save_config(config, str(tmp_path))
  assert config_lib.load_config(str(tmp_path)) == config
  with pytest.raises(ValueError, match="unknown config keys"):
    config_lib.Config.from_json('{"not_a_flag": 1}')


def test_num_joints_follow_the_dataset_skeleton():
  assert config_lib.build_model(TINY).num_joints == skeletons.LSP.num_joints


# -- Optimisers and schedules. --


def test_schedules():
  warm = TINY.replace(warmup_steps=10, num_train_steps=100, schedule="cosine")
  s = state_lib.make_schedule(warm)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3) and float(s(100)) == pytest.approx(0.0)
  step = TINY.replace(schedule="step", decay_steps=(30, 60), decay_factor=0.1,
                      num_train_steps=100)
  s = state_lib.make_schedule(step)
  assert [float(s(t)) for t in (29, 30, 60)] == pytest.approx([1e-3, 1e-4, 1e-5])


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "sgd"])
def test_optimizers_descend_a_quadratic(optimizer):
  config = TINY.replace(optimizer=optimizer, learning_rate=0.05, weight_decay=1e-4,
                        grad_clip=10.0)
  tx = state_lib.make_optimizer(config)
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones((3,))}
  opt = tx.init(params)
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
  start = loss(params)
  for _ in range(20):
    updates, opt = tx.update(jax.grad(loss)(params), opt, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  assert loss(params) < 0.5 * start


def test_without_intermediate_supervision_only_the_last_stage_is_scored():
  config = TINY.replace(model_kwargs=dict(num_stacks=2, num_features=8, depth=1))
  model = config_lib.build_model(config)
  rng = np.random.default_rng(0)
  outputs = [jnp.asarray(rng.normal(size=(2, 8, 8, 14)), jnp.float32) for _ in range(2)]
  targets = jnp.asarray(rng.uniform(size=(2, 8, 8, 14)), jnp.float32)
  weights = jnp.ones((2, 14))
  codec = codecs.make_codec(model, config)
  total, per_stage = steps_lib.stage_loss(codec, outputs, targets, weights)
  assert per_stage.shape == (2,)
  last_total, last = steps_lib.stage_loss(codec, outputs, targets, weights,
                                          intermediate_supervision=False)
  assert last.shape == (1,)
  np.testing.assert_allclose(float(last_total), float(per_stage[1]), rtol=1e-6)
  assert float(total) > float(last_total)


# -- The train step. --


@pytest.fixture(scope="module")
def tiny_state():
  model = config_lib.build_model(TINY)
  return model, state_lib.create_train_state(jax.random.PRNGKey(0), model, TINY)


def test_train_step_learns_and_guards_nan(tiny_state):
  model, state = tiny_state
  config = TINY.replace(ema_decay=0.5, aug_rotation=0.0, aug_scale=0.0, aug_color=0.0)
  state = state.replace(ema_params=state.params)
  step = steps_lib.make_pmap_train_step(model, config)
  batch = _batch(np.random.default_rng(0))
  rep = steps_lib.replicate_pmap(state)
  losses = []
  for _ in range(3):
    rep, metrics = step(rep, steps_lib.shard_batch_pmap(batch, 1))
    losses.append(float(metrics["loss"][0]))
    assert float(metrics["nonfinite"][0]) == 0.0
  assert losses[-1] < losses[0]
  good = steps_lib.unreplicate_pmap(rep)
  assert int(good.step) == 3
  # EMA moved towards the params but is not equal to them.
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                      good.ema_params, good.params))
  assert max(diff) > 0
  # A poisoned batch (NaN pixels) gives a NaN loss: flagged, and the update is skipped.
  poisoned = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))
  rep2, metrics = step(steps_lib.replicate_pmap(good), steps_lib.shard_batch_pmap(poisoned, 1))
  assert float(metrics["nonfinite"][0]) == 1.0
  after = steps_lib.unreplicate_pmap(rep2)
  assert int(after.step) == 4  # The step advances (next data, next RNG) ...
  for a, b in zip(jax.tree.leaves(after.params) + jax.tree.leaves(after.opt_state),
                  jax.tree.leaves(good.params) + jax.tree.leaves(good.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # ... nothing else.


def test_no_recompilation_after_the_first_step(tiny_state):
  model, state = tiny_state
  mesh = steps_lib.make_mesh(jax.devices()[:1])
  step = steps_lib.make_shard_map_train_step(model, TINY, mesh)
  rep = steps_lib.replicate_mesh(state, mesh)
  rng = np.random.default_rng(1)
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  rep, _ = step(rep, steps_lib.global_batch(_batch(rng), mesh))
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for _ in range(2):
      rep, metrics = step(rep, steps_lib.global_batch(_batch(rng), mesh))
    jax.block_until_ready(metrics)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert step._cache_size() == 1
  assert compiles == []


# -- Evaluation: heatmaps -> canvas -> original pixels, with the flip test. --


@dataclasses.dataclass(frozen=True)
class _MirrorModel:
  """A stand-in heatmap model: every joint's map is the image's red channel, pooled.

  It is exactly flip-equivariant when left/right maps are equal, so the flip test must
  give the same joints as the plain forward pass, at the brightest pixel.
  """
  num_joints: int = 14
  output_kind: str = "heatmap"
  output_stride: int = 4
  num_output_channels: int = 14
  background_channel: bool = False

  def apply(self, variables, images, train=False):
    del variables, train
    b, s, _, _ = images.shape
    red = images[..., 0].reshape(b, s // 4, 4, s // 4, 4).mean(axis=(2, 4))
    return [jnp.repeat(red[..., None], self.num_joints, axis=-1)]


@pytest.mark.parametrize("flip_test", [False, True])
def test_eval_step_maps_back_to_original_pixels(flip_test):
  s, stride = 32, 4
  model = _MirrorModel()
  config = TINY.replace(flip_test=flip_test, decode="argmax")
  image = np.zeros((2, s, s, 3), np.uint8)
  cells = [(2, 5), (6, 1)]  # Bright 4x4 blocks at heatmap cells (x, y).
  for b, (x, y) in enumerate(cells):
    image[b, 4 * y:4 * y + 4, 4 * x:4 * x + 4, 0] = 255
  # The canvas was cut from the original image by a known crop.
  to_canvas = np.stack([geometry.crop_matrix(np.array([100.0, 80.0]), 64.0, s),
                        geometry.crop_matrix(np.array([40.0, 90.0]), 128.0, s)])
  to_original = np.linalg.inv(to_canvas).astype(np.float32)
  batch = dict(image=image, joints=np.zeros((2, 14, 2), np.float32),
               canvas_to_original=to_original)
  out = steps_lib.eval_step({}, batch, model=model, codec=codecs.make_codec(model, config),
                            flip_permutation=skeletons.LSP.flip_permutation,
                            flip_test=flip_test)
  expected_canvas = heatmaps.heatmap_to_canvas(np.array(cells, np.float32), stride)
  expected = geometry.apply_affine(to_original, np.repeat(expected_canvas[:, None], 14, 1))
  np.testing.assert_allclose(np.asarray(out["joints"]), expected, atol=1e-3)
  assert out["confidence"].shape == (2, 14)


@dataclasses.dataclass(frozen=True)
class _TwoStageModel(_MirrorModel):
  """Stage 1 sees the bright block one heatmap cell to the right of where stage 2 does."""

  def apply(self, variables, images, train=False):
    (last,) = super().apply(variables, images, train)
    return [jnp.roll(last, 1, axis=2), last]


def test_eval_step_decodes_every_stage():
  s = 32
  image = np.zeros((1, s, s, 3), np.uint8)
  image[0, 8:12, 12:16, 0] = 255  # Heatmap cell (x, y) = (3, 2).
  batch = dict(image=image, joints=np.zeros((1, 14, 2), np.float32),
               canvas_to_original=np.eye(3, dtype=np.float32)[None])
  model = _TwoStageModel()
  out = steps_lib.eval_step({}, batch, model=model,
                            codec=codecs.make_codec(model, TINY.replace(decode="argmax")),
                            flip_permutation=skeletons.LSP.flip_permutation,
                            flip_test=False)
  stage_joints = np.asarray(out["stage_joints"])
  assert stage_joints.shape == (1, 2, 14, 2)
  np.testing.assert_array_equal(stage_joints[:, -1], np.asarray(out["joints"]))
  # One heatmap cell is 4 canvas pixels: stage 1 is 4 px right of stage 2, same row.
  np.testing.assert_allclose(stage_joints[0, 0] - stage_joints[0, 1],
                             np.tile([4.0, 0.0], (14, 1)), atol=1e-4)


@dataclasses.dataclass(frozen=True)
class _PaddedMirrorModel(_MirrorModel):
  input_multiple: int = 32  # As a depth-3 hourglass: resized canvases get padded.


@pytest.mark.parametrize("scales", [(0.75,), (1.25,), (0.75, 1.0, 1.25)])
@pytest.mark.parametrize("flip_test", [False, True])
def test_multiscale_test_keeps_the_joints_in_place(scales, flip_test):
  # A smooth blob: each resized canvas's heatmaps, resampled onto the canvas's own grid,
  # must peak where the blob is. Half a heatmap pixel of misalignment between the grids
  # would move the joints by 0.5-0.7 canvas px at these scales.
  s, centre = 96, np.array([37.3, 58.6])
  ys, xs = np.mgrid[0:s, 0:s]
  blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 4.0 ** 2))
  images = jnp.asarray(np.repeat(blob[None, :, :, None], 3, -1), jnp.float32)
  config = TINY.replace(input_size=s, flip_test=flip_test, decode="taylor",
                        test_scales=scales)
  model = _PaddedMirrorModel()
  joints, _, maps = inference.predict_canvas(
      {}, images, model=model, codec=codecs.make_codec(model, config),
      flip_permutation=skeletons.LSP.flip_permutation, flip_test=flip_test,
      test_scales=scales)
  assert maps.shape == (1, s // 4, s // 4, 14)
  np.testing.assert_allclose(np.asarray(joints)[0], np.tile(centre, (14, 1)), atol=0.15)
