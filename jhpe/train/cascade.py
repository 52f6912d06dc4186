"""DeepPose's cascade trained as the paper does it (Toshev & Szegedy, CVPR 2014, Sec. 3.2).

Stage 1 trains as any model. Stage s >= 2 trains alone (`Config.train_stage = s`, in a
workdir of its own; `experiments/deeppose.py --cascade_training=stagewise` runs the
stages one after another):

1. Its earlier stages come from stage s-1's workdir (`Config.init_from`,
   `with_earlier_stages`) and stay frozen: the optimiser's updates of every parameter
   but stage s's are zero (`jhpe.train.state.make_optimizer`), and the step runs stage s
   alone, so neither gradients nor BatchNorm statistics reach the earlier stages.
2. Stage s-1's errors on the training set are measured once, in box units
   (y_i^{s-1} - y_i) / (sigma * diam(y)), and their per-joint mean and covariance are
   written to <workdir>/perturbation_stats.json (`prepare`; layout below).
3. Each training example's boxes are centred on the ground truth displaced by a draw
   delta_i ~ N(mean_i, cov_i), in box units, with side sigma * diam(y) of the ground
   truth (the paper's augmented set D_A^s, eq. 8; `sample_boxes`, explicit key).
4. The loss is on the box-normalised displacement N(y_i; b) - N(y_i^{s-1}; b) = -delta_i
   (eq. 9), not on image coordinates (which would weight people by their box's area).

perturbation_stats.json:
  {"stage": s-1 (the stage whose errors these are), "num_examples": N,
   "box_scale": sigma, "diameter_joints": [a, b] or null (bounding-box diagonal),
   "units": "...", "mean": J x [dx, dy], "cov": J x [[xx, xy], [yx, yy]] (sample
   covariance, ddof 1), "count": J x n (examples that measured joint j)}
"""

import dataclasses
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

STATS_FILENAME = "perturbation_stats.json"
UNITS = "box: (prediction - ground truth) / (box_scale * diam(ground truth))"


@dataclasses.dataclass(frozen=True)
class StageTraining:
  """What the step needs to train stage `stage` alone.

  Attributes:
    stage: s >= 2.
    mean: (J, 2) mean of stage s-1's training errors, box units.
    cov: (J, 2, 2) their covariance.
  """
  stage: int
  mean: np.ndarray
  cov: np.ndarray

  def __hash__(self):  # Holds arrays; used by identity (as jhpe.train.steps.StepParts).
    return id(self)

  @property
  def cov_sqrt(self) -> np.ndarray:
    """(J, 2, 2) A with A A^T = cov (symmetric square root; cov may be singular)."""
    w, v = np.linalg.eigh(np.asarray(self.cov, np.float64))
    return (v * np.sqrt(np.maximum(w, 0.0))[:, None, :]).astype(np.float32)


def box_errors(pred, gt, visible, model):
  """Errors of `pred` in box units, and where they are defined.

  Args:
    pred, gt: (N, J, 2) normalised coordinates.
    visible: (N, J) annotated joints.
    model: the DeepPose module (`box_sides`, `box_joints`).

  Returns:
    errors (N, J, 2) = (pred - gt) / (box_scale * diam(gt)), mask (N, J) bool: the
    joint and the diameter's joints annotated.
  """
  pred, gt = np.asarray(pred, np.float32), np.asarray(gt, np.float32)
  sides = np.asarray(model.box_sides(jnp.asarray(gt)))  # (N,)
  mask = np.asarray(visible) > 0
  if model.box_joints is not None:
    a, b = model.box_joints
    mask = mask & (mask[:, a] & mask[:, b])[:, None]
  return (pred - gt) / sides[:, None, None], mask


def error_statistics(errors, mask):
  """Per-joint mean (J, 2), sample covariance (J, 2, 2) and count (J,) of `errors`
  (N, J, 2) over the examples where `mask` (N, J) holds (zeros below two examples)."""
  num_joints = errors.shape[1]
  mean = np.zeros((num_joints, 2))
  cov = np.zeros((num_joints, 2, 2))
  count = mask.sum(axis=0).astype(int)
  for j in range(num_joints):
    e = np.asarray(errors[mask[:, j], j], np.float64)
    if len(e):
      mean[j] = e.mean(axis=0)
    if len(e) > 1:
      cov[j] = np.cov(e, rowvar=False)
  return mean, cov, count


def sample_boxes(key, joints, visible, training: StageTraining, model):
  """The paper's simulated stage s-1 estimates around the ground truth.

  Args:
    key: PRNG key of this step's draws.
    joints: (B, J, 2) normalised ground truth; visible (B, J).
    training: the stage and its displacement statistics.
    model: the DeepPose module.

  Returns:
    (centres (B, J, 2), sides (B,)) the boxes, targets (B, J, 2) the box-normalised
    displacement from each centre to the ground truth (-delta), weights (B, J).
  """
  eps = jax.random.normal(key, joints.shape, jnp.float32)
  delta = jnp.asarray(training.mean) + jnp.einsum(
      "jkl,bjl->bjk", jnp.asarray(training.cov_sqrt), eps)
  sides = model.box_sides(joints)
  centres = joints + sides[:, None, None] * delta
  weights = visible
  if model.box_joints is not None:
    a, b = model.box_joints
    weights = weights * (visible[:, a] * visible[:, b])[:, None]
  return (centres, sides), (joints - centres) / sides[:, None, None], weights


def stats_record(mean, cov, count, stage: int, num_examples: int, model) -> dict:
  return {"stage": stage, "num_examples": int(num_examples),
          "box_scale": float(model.box_scale),
          "diameter_joints": None if model.box_joints is None else list(model.box_joints),
          "units": UNITS, "mean": np.round(mean, 6).tolist(),
          "cov": np.round(cov, 8).tolist(), "count": np.asarray(count).tolist()}


def measure_statistics(variables, model, config, num_examples: int = 0) -> dict:
  """Stage `model.num_stages`' errors on the training split, as perturbation_stats.json.

  The canvases are the un-augmented evaluation canvases of `config.train_dataset` /
  `train_split`; no flip test (each stage refines one pass's estimate).
  """
  from jhpe import inference  # pylint: disable=g-import-not-at-top
  from jhpe.train import evaluate  # pylint: disable=g-import-not-at-top
  dataset = config.train_dataset or config.dataset
  loader = evaluate.make_eval_loader(config, dataset, config.train_split)
  predict = jax.jit(lambda v, im: model.apply(v, inference.images_to_float(im))[-1])
  size = config.input_size
  errors, masks, seen = [], [], 0
  for batch in loader:
    valid = np.asarray(batch["valid"]) > 0
    pred = np.asarray(predict(variables, batch["image"]))
    gt = (np.asarray(batch["joints"]) + 0.5) / size
    e, m = box_errors(pred, gt, batch["visible"], model)
    errors.append(e[valid])
    masks.append(m[valid])
    seen += int(valid.sum())
    if num_examples and seen >= num_examples:
      break
  errors, masks = np.concatenate(errors), np.concatenate(masks)
  if num_examples:
    errors, masks = errors[:num_examples], masks[:num_examples]
  mean, cov, count = error_statistics(errors, masks)
  return stats_record(mean, cov, count, model.num_stages, len(errors), model)


def read_stats(path: str, stage: int) -> StageTraining:
  with open(path) as f:
    data = json.load(f)
  return StageTraining(stage, np.asarray(data["mean"], np.float32),
                       np.asarray(data["cov"], np.float32))


def _earlier_variables(config):
  """Stage s-1's workdir variables, checked to hold stages 1..s-1."""
  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  variables, _ = ckpt.restore_variables(config.init_from, use_ema=config.ema_decay > 0)
  missing = [f"stage{k}" for k in range(1, config.train_stage)
             if f"stage{k}" not in variables["params"]]
  if missing:
    raise ValueError(f"--init_from={config.init_from}: its checkpoint lacks {missing} "
                     f"(--train_stage={config.train_stage} needs stages 1..s-1).")
  return variables


def prepare(config, workdir: str, write: bool = True) -> Optional[StageTraining]:
  """The stage-wise training of `config` (None unless `train_stage` >= 2).

  Reads <workdir>/perturbation_stats.json, or measures stage s-1 (the `init_from`
  checkpoint) on the training set and writes it there (`write`: process 0).
  """
  if config.train_stage < 2:
    return None
  from jhpe import files  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, STATS_FILENAME)
  if not os.path.exists(path):
    previous = config_lib.build_model(config, num_stages=config.train_stage - 1)
    record = measure_statistics(_earlier_variables(config), previous, config,
                                config.perturb_examples)
    if not write:
      return StageTraining(config.train_stage, np.asarray(record["mean"], np.float32),
                           np.asarray(record["cov"], np.float32))
    files.write_atomic(path, json.dumps(record, indent=1) + "\n")
  return read_stats(path, config.train_stage)


def with_earlier_stages(state, config):
  """`state` with the params and BatchNorm statistics of stages < s from `init_from`."""
  if config.train_stage < 2:
    return state
  variables = _earlier_variables(config)
  names = [f"stage{k}" for k in range(1, config.train_stage)]

  def take(tree, saved):
    tree = dict(tree)
    for name in names:
      if name in saved:
        tree[name] = jax.tree.map(jnp.asarray, saved[name])
    return tree

  return state.replace(params=take(state.params, variables["params"]),
                       batch_stats=take(state.batch_stats, variables["batch_stats"]))
