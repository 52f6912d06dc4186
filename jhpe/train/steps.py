"""The pure per-device train and eval steps, and their pmap / shard_map wrappers.

`train_step` is written once, for one device's share of the batch, with its collectives
(`lax.pmean`) over `axis_name`. `make_pmap_train_step` runs it under `jax.pmap`, and
`make_shard_map_train_step` runs the same function under `jax.jit` + `jax.shard_map` over a
1-D mesh of all devices. Randomness is derived from `(state.rng, state.step)` and, for the
augmentation, from each example's position in the *global* batch, so 1 device and 8 devices
draw the same augmentation for the same global batch.
"""

import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jhpe import geometry
from jhpe import heatmaps
from jhpe import losses
from jhpe.train import state as state_lib
from jhpe.train.config import Config

AXIS = "batch"


def with_axis_name(model, config: Config, axis_name: Optional[str]):
  """The model with cross-device BatchNorm over `axis_name` if `config.sync_batch_norm`."""
  if config.sync_batch_norm and hasattr(model, "bn_axis_name"):
    return model.clone(bn_axis_name=axis_name)
  return model


def augment_batch(rng: jax.Array, batch: dict, example_ids: jax.Array,
                  config: Config) -> dict:
  """Device-side augmentation (`jhpe.data.augment.augment`), one key per global example.

  Each example's key is `fold_in(rng, its index in the global batch)`, so the draws do
  not depend on how the batch is split over devices.

  Returns the batch (`image`, `joints`, `visible`) with `image` float32 (B, S, S, 3) in
  [0, 1] and the joints moved with it.
  """
  from jhpe.data import augment  # pylint: disable=g-import-not-at-top
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(example_ids)
  # `augment` takes one key per example ((b,) keys) and draws each example's transform
  # from its own key: several times faster than vmapping it over single examples.
  out = augment.augment(keys, {k: batch[k] for k in ("image", "joints", "visible")},
                        **augment_kwargs(config))
  return {k: out[k] for k in ("image", "joints", "visible")}


def augment_kwargs(config: Config) -> dict:
  """`jhpe.data.augment.augment`'s keyword arguments from the config."""
  from jhpe.train.config import skeleton_of  # pylint: disable=g-import-not-at-top
  return dict(flip_permutation=np.asarray(skeleton_of(config).flip_permutation),
              rotation_deg=config.aug_rotation,
              scale_range=(1.0 - config.aug_scale, 1.0 + config.aug_scale),
              shift_fraction=config.aug_translate,
              flip_prob=0.5 if config.aug_flip else 0.0,
              color_jitter=config.aug_color)


def make_targets(model, joints: jax.Array, visible: jax.Array, input_size: int,
                 sigma: float):
  """Training targets from canvas-pixel joints.

  Args:
    model: the module (its `output_kind`, `output_stride`, `num_output_channels`).
    joints: (B, J, 2) canvas pixels.
    visible: (B, J).
    input_size: S, the canvas side.
    sigma: heatmap Gaussian std in heatmap pixels.

  Returns:
    (targets, weights): heatmaps (B, h, w, K) and (B, K) for heatmap models (CPM: K = J + 1
    with the background channel), or normalised coordinates (B, J, 2) and visibility
    (B, J) for regression.
  """
  if model.output_kind == "regression":
    return (joints + 0.5) / input_size, visible
  stride = model.output_stride
  size = input_size // stride
  maps, weights = heatmaps.render_gaussian(
      heatmaps.canvas_to_heatmap(joints, stride), visible, (size, size), sigma)
  if model.num_output_channels == joints.shape[1] + 1:
    maps = heatmaps.add_background(maps)
    weights = heatmaps.add_background_weight(weights)
  return maps, weights


def compute_loss(model, outputs, targets, weights, config: Config):
  """(total (), per_stage (S,)) of the model's stage outputs.

  Without intermediate supervision only the last stage is scored: per_stage is then (1,).
  """
  if not config.intermediate_supervision:
    outputs = outputs[-1:]
  if model.output_kind == "regression":
    return losses.regression_loss(outputs, targets, weights, kind=config.regression_loss)
  return losses.heatmap_loss(outputs, targets, weights)


def _all_finite(tree) -> jax.Array:
  """True when every leaf of `tree` is finite, through one scalar: the global norm.

  (The global norm is non-finite iff some element is; a per-leaf `all(isfinite)` stacked
  over the leaves made XLA's CPU compile of the step take minutes.)
  """
  return jnp.isfinite(optax.tree.norm(tree))


def train_step(state: state_lib.TrainState, batch: dict, *, model, config: Config,
               axis_name: str = AXIS):
  """One optimisation step on one device's share of the global batch.

  Args:
    state: the (replicated) TrainState.
    batch: this device's examples: `image` uint8 (b, S, S, 3), `joints` float32 (b, J, 2)
      canvas pixels, `visible` (b, J) (see docs/design.md, "Batch").
    model: the flax module.
    config: the run's Config (static).
    axis_name: the device axis of the collectives.

  Returns:
    (new_state, metrics): metrics are device-averaged scalars: `loss`, `loss_stage`
    (S,), `learning_rate`, `grad_norm`, `nonfinite` (1.0 when this step's loss or gradients
    were NaN/Inf; then the update is skipped: params, optimiser, BN statistics and EMA stay
    as they were and only the step advances).
  """
  model = with_axis_name(model, config, axis_name)
  tx = state_lib.make_optimizer(config)
  step_rng = jax.random.fold_in(state.rng, state.step)
  aug_rng, model_rng = jax.random.split(step_rng)
  device = lax.axis_index(axis_name)
  local_batch = batch["image"].shape[0]
  example_ids = device * local_batch + jnp.arange(local_batch)
  batch = augment_batch(aug_rng, batch, example_ids, config)
  model_rng = jax.random.fold_in(model_rng, device)
  targets, weights = make_targets(model, batch["joints"], batch["visible"],
                                  config.input_size, config.sigma)

  # The losses average over this device's annotated joints. Rescaled by this device's
  # share of the global annotated count (times the device count, undone by the pmean
  # below), the average runs over the global batch's joints whatever the device count.
  local_weight = jnp.sum(weights)
  global_weight = lax.psum(local_weight, axis_name)
  num_devices = lax.psum(1, axis_name)
  share = jnp.where(global_weight > 0,
                    num_devices * local_weight / jnp.maximum(global_weight, 1e-12), 1.0)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    outputs, updates = model.apply(
        variables, batch["image"], train=True, mutable=["batch_stats"],
        rngs={"perturb": model_rng, "dropout": model_rng})
    outputs = [o.astype(jnp.float32) for o in outputs]
    total, per_stage = compute_loss(model, outputs, targets, weights, config)
    return share * total, (share * per_stage, updates.get("batch_stats", {}))

  (loss, (per_stage, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  # Average over devices: each device's loss is a mean over its equal share, so the mean
  # of the means is the global mean. BN statistics are averaged too so replicas agree.
  grads = lax.pmean(grads, axis_name)
  loss, per_stage = lax.pmean((loss, per_stage), axis_name)
  batch_stats = lax.pmean(batch_stats, axis_name)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    d = config.ema_decay
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

  # NaN/Inf guard: every device sees the same averaged values, so all agree to skip. The
  # new params are checked too: a huge step can overflow them with finite gradients.
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      ema_params=None if ema is None else keep(ema, state.ema_params))
  metrics = {
      "loss": loss,
      "loss_stage": per_stage,
      "learning_rate": state_lib.make_schedule(config)(state.step),
      "grad_norm": grad_norm,
      "nonfinite": 1.0 - finite.astype(jnp.float32),
  }
  return new_state, metrics


def make_pmap_train_step(model, config: Config, devices=None):
  """`train_step` under `jax.pmap` over the local devices; the state is donated.

  Call with a replicated state (`replicate_pmap`, leading device axis) and a batch
  reshaped to (devices, B / devices, ...) (`shard_batch_pmap`).
  """
  fn = functools.partial(train_step, model=model, config=config, axis_name=AXIS)
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis `AXIS`."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (AXIS,))


def make_shard_map_train_step(model, config: Config, mesh: Mesh):
  """The same `train_step` under `jax.jit` + `jax.shard_map` on a 1-D `mesh`.

  The state is replicated (`P()`), the batch is split along its first axis (`P(AXIS)`);
  the state is donated. `check_vma=False` keeps pmap's semantics: gradients of the
  replicated params are per-device until the explicit `lax.pmean` (with vma checking,
  JAX would insert a psum of its own and the pmean would not be a mean).
  """
  fn = functools.partial(train_step, model=model, config=config, axis_name=AXIS)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


# -- Evaluation. --


def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 (B, S, S, 3) -> float32 in [0, 1], the models' input."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def predict_canvas(variables: dict, images: jax.Array, *, model, config: Config,
                   flip_permutation: np.ndarray, all_stages: bool = False):
  """Joints in canvas pixels from float images (B, S, S, 3), with the flip test and the
  multi-scale test of `config` (`flip_test`, `test_scales`, `decode`).

  Args:
    all_stages: decode every stage's output, not only the last (stage-wise PCK).

  Returns:
    joints (B, J, 2) canvas pixels of the last stage, or (B, T, J, 2) over the T stages
    with `all_stages`; confidence (B, J) or (B, T, J); the last stage's heatmaps
    (B, h, w, J) (None for regression).
  """
  size = images.shape[2]
  num_joints = len(flip_permutation)
  apply = functools.partial(_multiscale_outputs, variables, model=model,
                            scales=config.test_scales)
  outputs = apply(images)
  flipped = apply(images[:, :, ::-1]) if config.flip_test else [None] * len(outputs)
  stages = range(len(outputs)) if all_stages else [len(outputs) - 1]
  decoded = [_decode_stage(outputs[t], flipped[t], size=size, num_joints=num_joints,
                           model=model, config=config, flip_permutation=flip_permutation)
             for t in stages]
  if not all_stages:
    return decoded[-1]
  joints, confidence = (jnp.stack([d[i] for d in decoded], axis=1) for i in (0, 1))
  return joints, confidence, decoded[-1][2]


def _multiscale_outputs(variables: dict, images: jax.Array, *, model,
                        scales=(1.0,)) -> list:
  """The model's outputs (eval mode), each stage averaged over the canvas resized by
  every factor of `scales` (the CPM benchmark's scale search).

  Args:
    variables: {'params', 'batch_stats'}.
    images: (B, S, S, 3) float canvases.
    scales: resize factors; (1.0,) is `model.apply` (any model), others need a heatmap
      model (a fully convolutional one).

  Returns:
    list over stages of (B, S / stride, S / stride, K) heatmaps on the grid of the canvas
    as given (or the regression outputs).
  """
  per_scale = [_outputs_at_scale(variables, images, float(s), model=model) for s in scales]
  if len(per_scale) == 1:
    return per_scale[0]
  return [sum(stage) / len(per_scale) for stage in zip(*per_scale)]


def _outputs_at_scale(variables, images, scale, *, model):
  """Heatmaps of the canvas resized by `scale`, resampled onto the unresized grid.

  The resized canvas (round(S x scale) px) is padded with zeros on the bottom and right to
  the model's input multiple. In continuous pixel coordinates heatmap point u is image
  point u x stride, so the resized canvas's heatmaps map onto the original grid by the
  exact ratio r = round(S x scale) / S alone, with no shift.
  """
  if scale == 1.0:
    return model.apply(variables, images, train=False)
  size = images.shape[2]
  resized = max(int(round(size * scale)), 1)
  padded = -(-resized // model.input_multiple) * model.input_multiple
  ratio = resized / size

  def resample(x, side, factor, antialias):
    # Input point x goes to x * factor; output pixels with no input under them stay zero
    # (the padding).
    return jax.image.scale_and_translate(
        x.astype(jnp.float32), (x.shape[0], side, side, x.shape[3]), (1, 2),
        jnp.array([factor, factor]), jnp.zeros(2), method="linear", antialias=antialias)

  outputs = model.apply(variables, resample(images, padded, ratio, True), train=False)
  grid = size // model.output_stride
  return [resample(out, grid, 1 / ratio, False) for out in outputs]


def _decode_stage(output, flipped, *, size, num_joints, model, config, flip_permutation):
  """One stage's output (and its mirrored image's) -> joints, confidence, heatmaps."""
  output = output.astype(jnp.float32)
  if model.output_kind == "regression":
    joints = output * size - 0.5
    if flipped is not None:
      back = flipped.astype(jnp.float32) * size - 0.5
      back = back.at[..., 0].set(size - 1 - back[..., 0])[:, flip_permutation]
      joints = 0.5 * (joints + back)
    return joints, jnp.ones(joints.shape[:2], jnp.float32), None
  maps = output[..., :num_joints]  # CPM's background channel is dropped.
  if flipped is not None:
    back = heatmaps.flip_heatmaps(flipped.astype(jnp.float32),
                                  flip_permutation)[..., :num_joints]
    maps = 0.5 * (maps + back)
  coords, confidence = heatmaps.decode(maps, method=config.decode)
  return heatmaps.heatmap_to_canvas(coords, model.output_stride), confidence, maps


def eval_step(variables: dict, batch: dict, *, model, config: Config,
              flip_permutation: np.ndarray) -> dict:
  """Predictions for a batch, mapped back to original pixels.

  Args:
    variables: {'params', 'batch_stats'}.
    batch: `image` uint8 (B, S, S, 3), `joints` (B, J, 2) canvas px,
      `canvas_to_original` (B, 3, 3).

  Returns:
    `joints` (B, J, 2) the last stage's predictions in original pixels, `confidence`
    (B, J), `stage_joints` (B, T, J, 2) every stage's predictions in original pixels, and
    `gt_joints` (B, J, 2) the ground truth mapped back to original pixels.
  """
  stage_joints, confidence, _ = predict_canvas(
      variables, images_to_float(batch["image"]), model=model, config=config,
      flip_permutation=flip_permutation, all_stages=True)
  to_original = batch["canvas_to_original"]
  stage_joints = geometry.apply_affine(to_original[:, None], stage_joints)
  return {
      "joints": stage_joints[:, -1],
      "confidence": confidence[:, -1],
      "stage_joints": stage_joints,
      "gt_joints": geometry.apply_affine(to_original, batch["joints"]),
  }


def make_eval_step(model, config: Config, flip_permutation, mesh: Mesh):
  """`eval_step` jitted with the batch split over `mesh` and the variables replicated."""
  fn = functools.partial(eval_step, model=model, config=config,
                         flip_permutation=np.asarray(flip_permutation))
  return jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))),
                 out_shardings=NamedSharding(mesh, P(AXIS)))


# -- Moving batches and states onto devices. --


def shard_batch_pmap(batch: dict, num_devices: int) -> dict:
  """(B, ...) host arrays -> (devices, B / devices, ...) for pmap."""
  def reshape(x):
    x = np.asarray(x)
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(reshape, batch)


def global_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's (B_local, ...) host arrays -> global arrays split over `mesh`."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate_pmap(tree: Any, devices=None) -> Any:
  """Copies of `tree` on every local device, stacked on a leading axis (pmap's layout)."""
  devices = jax.local_devices() if devices is None else list(devices)
  sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(jnp.broadcast_to(x, (len(devices),) + jnp.shape(x)),
                               sharding), tree)


def unreplicate_pmap(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


def replicate_mesh(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))
