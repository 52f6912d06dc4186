"""Tests of jhpe.models: shapes, parameter counts, sharing, BatchNorm, precision, overfit.

On the CPU, compiling dominates the cost of these tests, so each tiny model is initialised
once (`_variables`) and the jitted helpers are reused across tests with the same shapes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jhpe import models
from jhpe import skeletons
from jhpe.models import cpm as cpm_lib
from jhpe.models import deeppose as deeppose_lib
from jhpe.models import summary

try:
  from jhpe import losses
except ImportError:  # pragma: no cover  # A colleague's module; fall back to local MSE.
  losses = None

# Tiny CPU-scale configs and their input sides.
TINY = {
    "hourglass": dict(num_joints=4, num_stacks=2, num_features=16, depth=1),
    "cpm": dict(num_joints=4, num_stages=3, width=0.0625),
    "deeppose": dict(num_joints=4, num_stages=2, width=0.0625, fc_features=32,
                     dropout_rate=0.0, diameter="bbox"),
}
SIZE = {"hourglass": 32, "cpm": 64, "deeppose": 64}  # hourglass needs multiples of 8


def _images(name, n=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, SIZE[name], SIZE[name], 3))


def _model(name, **overrides):
  return models.get_model(name, **{**TINY[name], **overrides})


@functools.partial(jax.jit, static_argnames="model")
def _init(model, images):
  return model.init(jax.random.key(1), images, train=False)


@functools.lru_cache(maxsize=None)
def _variables(name, **overrides):
  """float32 variables of the tiny model, initialised once per session."""
  return _init(_model(name, **overrides), _images(name))


@functools.partial(jax.jit, static_argnames="model")
def _apply(model, variables, images):
  """Eval mode -> (outputs, {'batch_stats': ...} as left by the call)."""
  return model.apply(variables, images, train=False, mutable=["batch_stats"])


@functools.partial(jax.jit, static_argnames="model")
def _train_apply(model, variables, images, key=2):
  """Train mode -> (outputs, {'batch_stats': updated})."""
  return model.apply(variables, images, train=True, mutable=["batch_stats"],
                     rngs={"perturb": jax.random.key(key)})


# --- registry and bad configurations --------------------------------------------------


def test_registry_lists_the_three_families():
  assert set(models.MODELS) == {"hourglass", "cpm", "deeppose"}
  assert isinstance(models.get_model("cpm", num_stages=2), models.CPM)
  assert "num_stacks" in models.model_fields("hourglass")


@pytest.mark.parametrize("name, kwargs, field", [
    ("hourglass", dict(num_stacks=0), "num_stacks"),
    ("hourglass", dict(num_features=-8), "num_features"),
    ("hourglass", dict(depth=0), "depth"),
    ("cpm", dict(num_stages=0), "num_stages"),
    ("cpm", dict(width=0.0), "width"),
    ("deeppose", dict(num_joints=0), "num_joints"),
    ("deeppose", dict(backbone="vgg"), "backbone"),
    ("deeppose", dict(diameter_joints=(0, 99)), "diameter_joints"),
])
def test_bad_config_names_the_field(name, kwargs, field):
  with pytest.raises(ValueError, match=field):
    models.get_model(name, **kwargs)


def test_unknown_model_and_argument_list_what_is_allowed():
  with pytest.raises(ValueError, match="allowed.*cpm.*deeppose.*hourglass"):
    models.get_model("resnet")
  with pytest.raises(ValueError, match="num_stack.*allowed.*num_stacks"):
    models.get_model("hourglass", num_stack=2)


def test_bad_input_sizes_are_clear_errors():
  init = lambda model, size: jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  with pytest.raises(ValueError, match=r"multiples of 4 \* 2\*\*depth = 8.*36x36"):
    init(_model("hourglass"), 36)
  with pytest.raises(ValueError, match="multiples of 8"):
    init(_model("cpm"), 60)
  with pytest.raises(ValueError, match="at least 57 px.*crop_size 32"):
    init(_model("deeppose", crop_size=32), 64)
  with pytest.raises(ValueError, match=r"images must be float \(B, H, W, 3\)"):
    _model("cpm").apply({}, jnp.zeros((1, 64, 64)))


# --- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("hourglass", [(2, 8, 8, 4)] * 2),
    ("cpm", [(2, 8, 8, 5)] * 3),          # background channel included: J + 1
    ("deeppose", [(2, 4, 2)] * 2),
])
def test_per_stage_output_shapes_and_attributes(name, expected):
  model = _model(name)
  images = _images(name)
  variables = _variables(name)
  outputs, _ = _apply(model, variables, images)
  assert isinstance(outputs, list)
  assert [o.shape for o in outputs] == expected
  assert all(o.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(o))) for o in outputs)
  train_outputs, _ = _train_apply(model, variables, images)
  assert [o.shape for o in train_outputs] == expected
  assert model.num_joints == 4
  if model.output_kind == "heatmap":
    assert outputs[0].shape[1] * model.output_stride == SIZE[name]
    assert outputs[0].shape[-1] == model.num_output_channels
  else:
    assert model.output_kind == "regression"


@functools.lru_cache(maxsize=None)
def _abstract(name, size, **kwargs):
  model = models.get_model(name, **kwargs)
  variables = summary.abstract_variables(model, size)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
  return variables, outputs


def test_full_size_output_shapes():
  """The papers' sizes: hourglass 256 -> 8 x 64x64, CPM 368 -> 6 x 46x46, DeepPose 220."""
  _, outputs = _abstract("hourglass", 256)
  assert [o.shape for o in outputs] == [(1, 64, 64, 16)] * 8
  _, outputs = _abstract("cpm", 368)
  assert [o.shape for o in outputs] == [(1, 46, 46, 15)] * 6
  # The cascade's boxes are torso diameters: the LSP skeleton's torso joints.
  _, outputs = _abstract("deeppose", 220, num_stages=3, backbone="resnet",
                         diameter_joints=tuple(skeletons.LSP.torso_joints))
  assert [o.shape for o in outputs] == [(1, 14, 2)] * 3


# --- parameter counts ------------------------------------------------------------------


def test_hourglass_8_stack_has_25_1m_params():
  """HRNet paper (Sun et al. 2019), Table 4: 8-stack hourglass, 25.1M parameters."""
  variables, _ = _abstract("hourglass", 256)  # defaults: 8 stacks, 256 features, 16 joints
  count = summary.count_params(variables)
  assert abs(count - 25.1e6) / 25.1e6 < 0.03, count


def _conv_params(k, cin, cout):
  return k * k * cin * cout + cout


def test_cpm_params_match_released_layer_list():
  """Counts the released pose_deploy.prototxt (MPI, 6 stages, P = 14) layer by layer.

  Layers as (kernel, in, out); see jhpe/models/cpm.py's docstring for the names.
  """
  p1 = 15  # P + 1 belief maps
  stage1 = [(9, 3, 128), (9, 128, 128), (9, 128, 128), (5, 128, 32), (9, 32, 512),
            (1, 512, 512), (1, 512, p1)]
  trunk = [(9, 3, 128), (9, 128, 128), (9, 128, 128)]
  stage_t = [(5, 128, 32), (11, 32 + p1 + 1, 128), (11, 128, 128), (11, 128, 128),
             (1, 128, 128), (1, 128, p1)]
  released = (sum(_conv_params(*l) for l in stage1 + trunk)
              + 5 * sum(_conv_params(*l) for l in stage_t))
  variables, _ = _abstract("cpm", 368)  # defaults: 14 parts, 6 stages
  assert summary.count_params(variables) == released
  assert round(released / 1e6, 1) == 31.2


def test_deeppose_alexnet_sizes_follow_the_paper():
  """220 input: conv1 55x55x96 ... last pool 6x6x256 feeding F(4096), then 2J outputs."""
  model = models.get_model("deeppose", num_joints=14)
  params = summary.abstract_variables(model, 220)["params"]["stage1"]
  assert params["conv1"]["kernel"].shape == (11, 11, 3, 96)
  assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)
  assert params["out"]["kernel"].shape == (4096, 28)


def test_summary_reports_params_and_flops():
  model = models.get_model("cpm", num_joints=4, num_stages=1, width=0.0625)
  info = summary.summarize(model, 64)
  expected = summary.count_params(summary.abstract_variables(model, 64))
  assert info["params"] == expected > 0
  assert info["num_stages"] == 1 and info["output_shape"] == [8, 8, 5]
  # The first 9x9 conv alone costs 2 * 64*64 * 81*3*8 FLOPs (multiply-add = 2).
  assert info["flops_per_image"] > 2 * 64 * 64 * 81 * 3 * 8


# --- sharing ---------------------------------------------------------------------------


def _kernel(tree):
  return tree["kernel"] if "kernel" in tree else tree["dense"]["kernel"]


def test_cpm_shared_trunk_appears_once_and_every_stage_moves_it():
  model = _model("cpm")
  images = _images("cpm")
  params = _variables("cpm")["params"]
  names = list(params)
  assert sorted(n for n in names if "trunk" in n) == [
      "shared_trunk_conv1", "shared_trunk_conv2", "shared_trunk_conv3"]
  assert not any(n.startswith(("stage2_conv", "stage3_conv")) for n in names)

  @jax.jit
  def stage_grads(params):
    """The gradient of each stage's own loss, for stages 1..T."""
    loss = lambda p, t: jnp.mean(model.apply({"params": p}, images)[t] ** 2)
    return [jax.grad(loss)(params, t) for t in range(model.num_stages)]

  grads = stage_grads(params)
  for t in range(1, model.num_stages):  # stages t + 1 >= 2 all move the trunk
    for i in (1, 2, 3):
      assert float(jnp.abs(_kernel(grads[t][f"shared_trunk_conv{i}"])).max()) > 0, (t, i)
  # Stage 1 sees the image alone.
  assert float(jnp.abs(_kernel(grads[0]["shared_trunk_conv1"])).max()) == 0


def test_cpm_center_map_peaks_at_the_centre():
  cmap = cpm_lib.center_map(368, 368)
  assert cmap.shape == (46, 46)
  peak = np.unravel_index(np.argmax(cmap), cmap.shape)
  assert set(peak) <= {22, 23}
  assert cmap[0, 0] < 1e-3 * cmap.max()


def test_hourglasses_share_no_weights():
  model = _model("hourglass")
  images = _images("hourglass")
  variables = _variables("hourglass")
  params = variables["params"]
  assert {"hourglass_0", "hourglass_1"} <= set(params)
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes(params["hourglass_0"]) == shapes(params["hourglass_1"])
  # Changing the second hourglass changes the second stack's output only.
  perturbed = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "hourglass_1" in jax.tree_util.keystr(path) else x,
      params)
  before, _ = _apply(model, variables, images)
  after, _ = _apply(model, {**variables, "params": perturbed}, images)
  np.testing.assert_array_equal(before[0], after[0])
  assert float(jnp.abs(before[1] - after[1]).max()) > 1e-4


# --- BatchNorm -------------------------------------------------------------------------


@pytest.mark.parametrize("name, overrides", [
    ("hourglass", ()),
    ("deeppose", (("use_batchnorm", True),)),
])
def test_batchnorm_stats_update_in_train_and_freeze_in_eval(name, overrides):
  model = _model(name, **dict(overrides))
  variables = _variables(name, **dict(overrides))
  images = _images(name)
  stats = variables["batch_stats"]
  assert jax.tree.leaves(stats)
  _, updated = _train_apply(model, variables, images)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, updated["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode: the statistics are read, not written...
  outputs, after_eval = _apply(model, variables, images)
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), stats, after_eval["batch_stats"])
  assert all(jax.tree.leaves(same))
  # ...so an image's output does not depend on the rest of the batch.
  other = images.at[1].set(1.0 - images[1])
  outputs_other, _ = _apply(model, variables, other)
  np.testing.assert_allclose(outputs[-1][0], outputs_other[-1][0], rtol=1e-5, atol=1e-6)


# --- Layers ----------------------------------------------------------------------------


@pytest.mark.parametrize("window, stride, padding, size", [
    (2, 2, "VALID", 8),  # The hourglass's pooling: the reshape path.
    (2, 2, "SAME", 8),  # Non-overlapping and divisible: nothing to pad, same path.
    (3, 2, "VALID", 9),  # AlexNet / CPM pooling: overlapping windows, flax's path.
    (2, 2, "SAME", 7),  # Odd size: needs padding, flax's path.
])
def test_max_pool_matches_flax_in_value_and_gradient(window, stride, padding, size):
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from jhpe.models import layers  # pylint: disable=g-import-not-at-top
  # A permutation has no ties, so both gradients route to the same single maximum.
  x = jax.random.permutation(jax.random.key(0), 2 * size * size * 3).reshape(
      2, size, size, 3).astype(jnp.float32)
  ours = lambda v: layers.max_pool(v, window, stride, padding)
  flax_pool = lambda v: nn.max_pool(v, (window, window), (stride, stride), padding=padding)
  np.testing.assert_array_equal(ours(x), flax_pool(x))
  weights = jax.random.normal(jax.random.key(1), ours(x).shape)
  grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * weights))(x)
  np.testing.assert_array_equal(grad(ours), grad(flax_pool))


def test_conv1x1_is_a_1x1_convolution_with_dense_parameters():
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from jhpe.models import layers  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
  conv1x1 = layers.Conv1x1(6)
  variables = conv1x1.init(jax.random.key(1), x)
  dense = variables["params"]["dense"]
  # The parameters of a Dense layer (checkpoints name them so), kernel (C, F).
  assert dense["kernel"].shape == (4, 6) and dense["bias"].shape == (6,)
  reference = nn.Conv(6, (1, 1)).apply(
      {"params": {"kernel": dense["kernel"][None, None], "bias": dense["bias"]}}, x)
  np.testing.assert_allclose(conv1x1.apply(variables, x), reference, rtol=1e-5, atol=1e-6)


# --- DeepPose cascade ------------------------------------------------------------------


def test_crop_windows_samples_the_right_pixels():
  image = jax.random.uniform(jax.random.key(3), (1, 16, 16, 3))
  centres = jnp.array([[[0.5, 0.5], [0.25, 0.25], [0.75, 0.25]]])
  crop = jax.jit(deeppose_lib.crop_windows, static_argnums=3)
  # Side 1 at the centre with 16 px output is the image; side 0.5 at (0.25, 0.25) with
  # 8 px output is its top-left quarter, at (0.75, 0.25) its top-right quarter.
  full = crop(image, centres, jnp.array([1.0]), 16)
  np.testing.assert_allclose(full[0, 0], image[0], atol=1e-6)
  quarter = crop(image, centres, jnp.array([0.5]), 8)
  np.testing.assert_allclose(quarter[0, 1], image[0, :8, :8], atol=1e-6)
  np.testing.assert_allclose(quarter[0, 2], image[0, :8, 8:], atol=1e-6)
  # Half a pixel to the right: the mean of horizontal neighbours (bilinear); zeros outside.
  shifted = crop(image, centres + jnp.array([0.5 / 16, 0.]), jnp.array([1.0]), 16)
  np.testing.assert_allclose(shifted[0, 0, :, :15],
                             (image[0, :, :15] + image[0, :, 1:]) / 2, atol=1e-6)
  np.testing.assert_allclose(shifted[0, 0, :, 15], image[0, :, 15] / 2, atol=1e-6)


def test_pose_diameter():
  joints = jnp.array([[[0.2, 0.3], [0.5, 0.7], [0.4, 0.4]]])
  np.testing.assert_allclose(deeppose_lib.pose_diameter(joints, (0, 1)), [0.5], rtol=1e-6)
  np.testing.assert_allclose(deeppose_lib.pose_diameter(joints), [0.5], rtol=1e-6)


def test_deeppose_cascade_trains_stages_separately_with_perturbations():
  model = _model("deeppose")
  images = _images("deeppose")
  variables = _variables("deeppose")
  assert {"stage1", "stage2"} <= set(variables["params"])
  a, _ = _train_apply(model, variables, images, 5)
  b, _ = _train_apply(model, variables, images, 6)
  np.testing.assert_array_equal(a[0], b[0])  # no dropout here: stage 1 is deterministic
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-4  # perturbed inputs to stage 2
  evals = [_apply(model, variables, images)[0] for _ in range(2)]
  np.testing.assert_array_equal(evals[0][1], evals[1][1])  # no perturbation in eval

  @jax.jit
  def stage2_grads(params):
    def loss(params):
      outputs, _ = model.apply({"params": params}, images, train=True,
                               mutable=["batch_stats"], rngs={"perturb": jax.random.key(0)})
      return jnp.sum((outputs[1] - 0.3) ** 2)
    return jax.grad(loss)(params)

  grads = stage2_grads(variables["params"])
  norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads["stage2"]) > 0
  assert norm(grads["stage1"]) == 0  # stage 2 sees stage 1's output via stop_gradient


# --- mixed precision -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hourglass", "cpm", "deeppose"])
def test_bfloat16_compute_float32_params(name):
  images = _images(name)
  variables = _variables(name)  # param_dtype float32 whatever the compute dtype
  # Move every parameter off its initial value (DeepPose's output layer starts at zero).
  params = jax.tree.map(lambda x: x + 0.01 * jnp.cos(jnp.arange(x.size)).reshape(x.shape),
                        variables["params"])
  variables = {**variables, "params": params}
  bf16 = _model(name, dtype=jnp.bfloat16)
  assert jax.tree.structure(variables) == jax.tree.structure(
      jax.eval_shape(lambda: bf16.init(jax.random.key(1), images)))
  out16, _ = _apply(bf16, variables, images)
  out32, _ = _apply(_model(name), variables, images)
  for o16, o32 in zip(out16, out32):
    assert o16.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(o16)))
    scale = float(jnp.abs(o32).max()) + 1e-6
    assert 0 < float(jnp.abs(o16 - o32).max()) < 0.1 * scale + 1e-3


# --- overfitting 8 images --------------------------------------------------------------


def _gaussian_targets(joints, size, sigma=1.0):
  """(B, J, 2) heatmap px -> (B, size, size, J) Gaussians (local, for independence)."""
  grid = jnp.arange(size, dtype=jnp.float32)
  gx = jnp.exp(-(grid[None, None, :] - joints[..., 0:1]) ** 2 / (2 * sigma ** 2))
  gy = jnp.exp(-(grid[None, None, :] - joints[..., 1:2]) ** 2 / (2 * sigma ** 2))
  return jnp.einsum("bjy,bjx->byxj", gy, gx)


def _heatmap_loss(outputs, targets):
  weights = jnp.ones((targets.shape[0], targets.shape[-1]), jnp.float32)  # (B, K)
  if losses is not None:
    return losses.heatmap_loss(outputs, targets, weights)[0]
  return sum(jnp.mean((o - targets) ** 2) for o in outputs)


def _regression_loss(outputs, targets):
  if losses is not None:
    return losses.regression_loss(outputs, targets, jnp.ones(targets.shape[:2]))[0]
  return sum(jnp.mean((o - targets) ** 2) for o in outputs)


COLOURS = jnp.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 1., 0.]])


def _blob_images(joints, size, seed=7):
  """8 images that show their joints: a coloured blob per joint on faint noise.

  Args:
    joints: (B, 4, 2) normalised coordinates n = (x + 0.5) / size.

  Returns:
    (B, size, size, 3) in [0, 1].
  """
  blobs = _gaussian_targets(joints * size - 0.5, size, sigma=size / 32)  # (B, S, S, 4)
  noise = 0.1 * jax.random.uniform(jax.random.key(seed), (*blobs.shape[:3], 3))
  return jnp.clip(noise + jnp.einsum("byxj,jc->byxc", blobs, COLOURS), 0, 1)


def _overfit(name, targets_fn, loss_fn, steps, lr, **overrides):
  """Adam on 8 fixed images in train mode; returns the loss at every step.

  targets_fn maps the joints (8, 4, 2), normalised, to the model's targets.
  """
  model = _model(name, **overrides)
  joints = jax.random.uniform(jax.random.key(8), (8, 4, 2), minval=0.15, maxval=0.85)
  images = _blob_images(joints, SIZE[name])
  targets = targets_fn(joints)
  variables = _init(model, images)
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss(params):
      outputs, new = model.apply({"params": params, "batch_stats": stats}, images,
                                 train=True, mutable=["batch_stats"],
                                 rngs={"perturb": key})
      return loss_fn(outputs, targets), new.get("batch_stats", {})
    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), stats, opt_state, value

  values = []
  for i in range(steps):
    params, stats, opt_state, value = step(params, stats, opt_state, jax.random.key(i))
    values.append(float(value))
  return values


def _heatmap_targets(name, background=False):
  stride = _model(name).output_stride
  h = SIZE[name] // stride

  def targets(joints):
    maps = _gaussian_targets(joints * SIZE[name] / stride - 0.5, h)
    if background:  # CPM's last channel
      maps = jnp.concatenate([maps, jnp.clip(1 - maps.max(-1, keepdims=True), 0, 1)], -1)
    return maps
  return targets


def test_hourglass_overfits_8_images():
  values = _overfit("hourglass", _heatmap_targets("hourglass"), _heatmap_loss,
                    steps=40, lr=3e-3)
  assert values[-1] < values[0] / 10, values[::10]


def test_cpm_overfits_8_images():
  # A plain (no BatchNorm) net: wider than TINY and a smaller step to train this fast.
  values = _overfit("cpm", _heatmap_targets("cpm", background=True), _heatmap_loss,
                    steps=120, lr=1e-3, num_stages=2, width=0.125)
  assert values[-1] < values[0] / 10, values[::10]


def test_deeppose_overfits_8_images():
  values = _overfit("deeppose", lambda joints: joints, _regression_loss, steps=100,
                    lr=3e-3, perturb_sigma=0.01)
  assert values[-1] < values[0] / 10, values[::10]
