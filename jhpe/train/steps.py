"""The pure per-device train and eval steps, and their pmap / shard_map wrappers.

`train_step` is written once, for one device's share of the batch, with its collectives
(`lax.pmean`) over `axis_name`. `make_pmap_train_step` runs it under `jax.pmap`, and
`make_shard_map_train_step` runs the same function under `jax.jit` + `jax.shard_map` over a
1-D mesh of all devices. Randomness is derived from `(state.rng, state.step)` and, for the
augmentation, from each example's position in the *global* batch, so 1 device and 8 devices
draw the same augmentation for the same global batch.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jhpe import codecs
from jhpe import geometry
from jhpe import inference
from jhpe.train import cascade
from jhpe.train import augment as augment_lib
from jhpe.train import state as state_lib
from jhpe.train.config import Config

AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class StepParts:
  """The train step's collaborators, built once on the host (`make_step_parts`).

  The step itself reads nothing else: no config lookups, no dataset registry while tracing
  (as flax's examples/imagenet passes `learning_rate_fn` in).

  Attributes:
    model: the flax module (with cross-device BatchNorm when asked).
    codec: encodes targets and scores outputs (`jhpe.codecs`).
    tx: the optax optimiser.
    learning_rate_fn: step -> learning rate (for the metrics).
    augment_kwargs: `jhpe.train.augment.augment`'s keyword arguments (flip permutation,
      ranges).
    intermediate_supervision: score every stage (True) or only the last.
    ema_decay: decay of the parameters' EMA (0 = none).
    stage_training: DeepPose's stage-wise cascade training (`jhpe.train.cascade`):
      stage s alone on ground-truth-centred boxes; None trains the whole model.
  """
  model: Any
  codec: Any
  tx: optax.GradientTransformation
  learning_rate_fn: Callable
  augment_kwargs: dict
  intermediate_supervision: bool = True
  ema_decay: float = 0.0
  stage_training: Optional[cascade.StageTraining] = None

  def __hash__(self):  # `augment_kwargs` holds arrays; the parts are used by identity.
    return id(self)


def make_step_parts(model, config: Config, flip_permutation,
                    axis_name: Optional[str] = AXIS,
                    stage_training: Optional[cascade.StageTraining] = None) -> StepParts:
  """The collaborators of `train_step` for a run's model and config.

  Args:
    flip_permutation: (J,) `Skeleton.flip_permutation` of the training joints.
    axis_name: the device axis for cross-device BatchNorm (`config.sync_batch_norm`).
    stage_training: `cascade.prepare(config, workdir)` when `config.train_stage` >= 2.
  """
  if config.sync_batch_norm and hasattr(model, "bn_axis_name"):
    model = model.clone(bn_axis_name=axis_name)
  return StepParts(
      model=model, codec=codecs.make_codec(model, config),
      tx=state_lib.make_optimizer(config),
      learning_rate_fn=state_lib.make_schedule(config),
      augment_kwargs=dict(flip_permutation=np.asarray(flip_permutation),
                          rotation_deg=config.aug_rotation,
                          scale_range=(1.0 - config.aug_scale, 1.0 + config.aug_scale),
                          shift_fraction=config.aug_translate,
                          flip_prob=0.5 if config.aug_flip else 0.0,
                          color_jitter=config.aug_color),
      intermediate_supervision=config.intermediate_supervision,
      ema_decay=config.ema_decay, stage_training=stage_training)


def augment_batch(rng: jax.Array, batch: dict, example_ids: jax.Array,
                  augment_kwargs: dict) -> dict:
  """Device-side augmentation (`jhpe.train.augment.augment`), one key per global example.

  Each example's key is `fold_in(rng, its index in the global batch)`, so the draws do
  not depend on how the batch is split over devices.

  Returns the batch (`image`, `joints`, `visible`) with `image` float32 (B, S, S, 3) in
  [0, 1] and the joints moved with it.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(example_ids)
  # `augment` takes one key per example ((b,) keys) and draws each example's transform
  # from its own key: several times faster than vmapping it over single examples.
  out = augment_lib.augment(keys, {k: batch[k] for k in ("image", "joints", "visible")},
                            **augment_kwargs)
  return {k: out[k] for k in ("image", "joints", "visible")}


def stage_loss(codec, outputs, targets, weights, intermediate_supervision: bool = True):
  """(total (), per_stage (T,)) of the stage outputs; without intermediate supervision
  only the last stage is scored (per_stage is then (1,))."""
  if not intermediate_supervision:
    outputs = outputs[-1:]
  return codec.loss(outputs, targets, weights)


def _all_finite(tree) -> jax.Array:
  """True when every leaf of `tree` is finite, through one scalar: the global norm.

  (The global norm is non-finite iff some element is; a per-leaf `all(isfinite)` stacked
  over the leaves made XLA's CPU compile of the step take minutes.)
  """
  return jnp.isfinite(optax.tree.norm(tree))


def train_step(state: state_lib.TrainState, batch: dict, *, parts: StepParts,
               axis_name: str = AXIS):
  """One optimisation step on one device's share of the global batch.

  Args:
    state: the (replicated) TrainState.
    batch: this device's examples: `image` uint8 (b, S, S, 3), `joints` float32 (b, J, 2)
      canvas pixels, `visible` (b, J) (see docs/design.md, "Batch").
    parts: the step's collaborators (`make_step_parts`: model, codec, optimiser, ...).
    axis_name: the device axis of the collectives.

  Returns:
    (new_state, metrics): metrics are device-averaged scalars: `loss`, `loss_stage`
    (S,), `learning_rate`, `grad_norm`, `nonfinite` (1.0 when this step's loss or gradients
    were NaN/Inf; then the update is skipped: params, optimiser, BN statistics and EMA stay
    as they were and only the step advances).
  """
  model, codec = parts.model, parts.codec
  step_rng = jax.random.fold_in(state.rng, state.step)
  aug_rng, model_rng = jax.random.split(step_rng)
  device = lax.axis_index(axis_name)
  local_batch = batch["image"].shape[0]
  example_ids = device * local_batch + jnp.arange(local_batch)
  batch = augment_batch(aug_rng, batch, example_ids, parts.augment_kwargs)
  model_rng = jax.random.fold_in(model_rng, device)
  targets, weights = codec.encode(batch["joints"], batch["visible"])
  refine = {}
  if parts.stage_training is not None:
    # Stage s alone, on the paper's simulated boxes; its targets are the box-normalised
    # displacements to the ground truth (jhpe.train.cascade).
    box_rng, model_rng = jax.random.split(model_rng)
    (centres, sides), targets, weights = cascade.sample_boxes(
        box_rng, targets, weights, parts.stage_training, model)
    refine = dict(refine_stage=parts.stage_training.stage, centres=centres, sides=sides)

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
        rngs={"perturb": model_rng, "dropout": model_rng}, **refine)
    if refine:  # One stage's displacements; the other stages' statistics stay as were.
      outputs = [outputs]
      updates = {"batch_stats": {**state.batch_stats, **updates.get("batch_stats", {})}}
    outputs = [o.astype(jnp.float32) for o in outputs]
    total, per_stage = stage_loss(codec, outputs, targets, weights,
                                  parts.intermediate_supervision)
    return share * total, (share * per_stage, updates.get("batch_stats", {}))

  (loss, (per_stage, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  # Average over devices: each device's loss is a mean over its equal share, so the mean
  # of the means is the global mean. BN statistics are averaged too so replicas agree.
  grads = lax.pmean(grads, axis_name)
  loss, per_stage = lax.pmean((loss, per_stage), axis_name)
  batch_stats = lax.pmean(batch_stats, axis_name)

  updates, opt_state = parts.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    d = parts.ema_decay
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
      "learning_rate": parts.learning_rate_fn(state.step),
      "grad_norm": grad_norm,
      "nonfinite": 1.0 - finite.astype(jnp.float32),
  }
  return new_state, metrics


def _default_flip_permutation(config: Config):
  """The evaluation dataset's flip permutation (the entry points pass it explicitly)."""
  from jhpe.train.config import skeleton_of  # pylint: disable=g-import-not-at-top
  return skeleton_of(config).flip_permutation


def make_pmap_train_step(model, config: Config, devices=None, flip_permutation=None,
                         stage_training=None):
  """`train_step` under `jax.pmap` over the local devices; the state is donated.

  Call with a replicated state (`replicate_pmap`, leading device axis) and a batch
  reshaped to (devices, B / devices, ...) (`shard_batch_pmap`).
  """
  if flip_permutation is None:
    flip_permutation = _default_flip_permutation(config)
  parts = make_step_parts(model, config, flip_permutation, stage_training=stage_training)
  fn = functools.partial(train_step, parts=parts, axis_name=AXIS)
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis `AXIS`."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (AXIS,))


def make_shard_map_train_step(model, config: Config, mesh: Mesh, flip_permutation=None,
                              stage_training=None):
  """The same `train_step` under `jax.jit` + `jax.shard_map` on a 1-D `mesh`.

  The state is replicated (`P()`), the batch is split along its first axis (`P(AXIS)`);
  the state is donated. `check_vma=False` keeps pmap's semantics: gradients of the
  replicated params are per-device until the explicit `lax.pmean` (with vma checking,
  JAX would insert a psum of its own and the pmean would not be a mean).
  """
  if flip_permutation is None:
    flip_permutation = _default_flip_permutation(config)
  parts = make_step_parts(model, config, flip_permutation, stage_training=stage_training)
  fn = functools.partial(train_step, parts=parts, axis_name=AXIS)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


# -- Evaluation (the prediction itself is jhpe.inference's). --


def eval_step(variables: dict, batch: dict, *, model, codec, flip_permutation: np.ndarray,
              flip_test: bool = True, test_scales=(1.0,)) -> dict:
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
  stage_joints, confidence, _ = inference.predict_canvas(
      variables, batch["image"], model=model, codec=codec,
      flip_permutation=flip_permutation, flip_test=flip_test, test_scales=test_scales,
      all_stages=True)
  to_original = batch["canvas_to_original"]
  stage_joints = geometry.apply_affine(to_original[:, None], stage_joints)
  return {
      "joints": stage_joints[:, -1],
      "confidence": confidence[:, -1],
      "stage_joints": stage_joints,
      "gt_joints": geometry.apply_affine(to_original, batch["joints"]),
  }


def make_eval_step(model, config: Config, flip_permutation, mesh: Mesh):
  """`eval_step` jitted with the batch split over `mesh` and the variables replicated.

  The codec, flip test and test scales are the config's (`decode`, `flip_test`,
  `test_scales`).
  """
  fn = functools.partial(eval_step, model=model, codec=codecs.make_codec(model, config),
                         flip_permutation=np.asarray(flip_permutation),
                         flip_test=config.flip_test, test_scales=tuple(config.test_scales))
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
