"""Training losses: the stage-wise heatmap L2 and the coordinate regression losses.

Both apply intermediate supervision (CPM, Stacked Hourglass, DeepPose's cascade): every
stage's output is compared with the same target and the per-stage losses are summed.
Losses are computed in float32 whatever the model's compute dtype.
"""

import functools

import jax
import jax.numpy as jnp

REGRESSION_KINDS = ("l2", "l1", "smooth_l1")


def _stage_list(name, stage_outputs):
  if isinstance(stage_outputs, (list, tuple)):
    outputs = list(stage_outputs)
  else:
    raise ValueError(f"{name} must be a list over stages of arrays, got "
                     f"{type(stage_outputs).__name__}.")
  if not outputs:
    raise ValueError(f"{name} is empty; expected at least one stage.")
  return [jnp.asarray(o) for o in outputs]


def _weighted_mean(values, weights, count_per_weight):
  """sum(w * v) / (sum(w) * count_per_weight), 0 when nothing is weighted."""
  denominator = jnp.sum(weights) * count_per_weight
  safe = jnp.where(denominator > 0, denominator, 1.0)  # No NaN in the gradient either.
  return jnp.where(denominator > 0, jnp.sum(values) / safe, 0.0)


def heatmap_loss(stage_outputs, targets, weights):
  """Stage-wise L2 between predicted and target heatmaps.

  Each stage's loss is the weighted mean squared error over joints and pixels:
  sum_{b,y,x,k} w[b,k] (pred - target)^2 / (h w sum_{b,k} w[b,k]), so invisible joints
  neither count nor dilute the mean. For CPM's background channel pass weights with a
  trailing 1 (`jhpe.heatmaps.add_background_weight`).

  Args:
    stage_outputs: list over S stages of (B, h, w, K) predictions.
    targets: (B, h, w, K) target heatmaps.
    weights: (B, K) per-joint weights (visibility; 1 for a background channel).

  Returns:
    total: () float32, the sum over stages.
    per_stage: (S,) float32.
  """
  outputs = _stage_list("stage_outputs", stage_outputs)
  targets = jnp.asarray(targets)
  weights = jnp.asarray(weights)
  if targets.ndim != 4 or 0 in targets.shape:
    raise ValueError(f"targets must have shape (B, h, w, K), non-empty, got "
                     f"{targets.shape}.")
  for s, o in enumerate(outputs):
    if o.shape != targets.shape:
      raise ValueError(f"stage_outputs[{s}] must have the targets' shape (B, h, w, K) = "
                       f"{targets.shape}, got {o.shape}.")
  b, h, w, k = targets.shape
  if weights.shape != (b, k):
    hint = (" For CPM's background channel use heatmaps.add_background_weight(weights)."
            if weights.shape == (b, k - 1) else "")
    raise ValueError(f"weights must have shape (B, K) = {(b, k)}, got {weights.shape}."
                     + hint)
  return _heatmap_loss(outputs, targets, weights)


@jax.jit
def _heatmap_loss(outputs, targets, weights):
  _, h, w, _ = targets.shape
  targets = targets.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  per_stage = jnp.stack([
      _weighted_mean(
          jnp.square(o.astype(jnp.float32) - targets) * weights[:, None, None, :],
          weights, h * w)
      for o in outputs
  ])
  return jnp.sum(per_stage), per_stage


def regression_loss(stage_outputs, targets, visible, kind="l2", beta=0.02):
  """Stage-wise loss on normalised joint coordinates (DeepPose).

  Per joint: 'l2' is the squared Euclidean distance (DeepPose's objective), 'l1' the sum
  of absolute coordinate errors, 'smooth_l1' Fast R-CNN's smooth L1 per coordinate with
  transition point `beta`. Coordinates are normalised to [0, 1], so the default beta = 0.02
  (about 5 pixels of a 256 canvas) keeps the quadratic zone small; with beta = 1 it would
  be L2 everywhere. Each stage averages over visible joints.

  Args:
    stage_outputs: list over S stages of (B, J, 2) predictions.
    targets: (B, J, 2) normalised targets.
    visible: (B, J) weights (visibility).
    kind: 'l2' | 'l1' | 'smooth_l1'.
    beta: smooth L1's transition point, in normalised units (> 0).

  Returns:
    total: () float32, the sum over stages.
    per_stage: (S,) float32.
  """
  if kind not in REGRESSION_KINDS:
    raise ValueError(f"kind must be one of {REGRESSION_KINDS}, got {kind!r}.")
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta!r}.")
  outputs = _stage_list("stage_outputs", stage_outputs)
  targets = jnp.asarray(targets)
  visible = jnp.asarray(visible)
  if targets.ndim != 3 or targets.shape[-1] != 2 or 0 in targets.shape:
    raise ValueError(f"targets must have shape (B, J, 2), non-empty, got {targets.shape}.")
  for s, o in enumerate(outputs):
    if o.shape != targets.shape:
      raise ValueError(f"stage_outputs[{s}] must have the targets' shape (B, J, 2) = "
                       f"{targets.shape}, got {o.shape}.")
  if visible.shape != targets.shape[:2]:
    raise ValueError(f"visible must have shape (B, J) = {targets.shape[:2]}, got "
                     f"{visible.shape}.")
  return _regression_loss(outputs, targets, visible, kind, float(beta))


@functools.partial(jax.jit, static_argnames=("kind",))
def _regression_loss(outputs, targets, visible, kind, beta):
  targets = targets.astype(jnp.float32)
  visible = visible.astype(jnp.float32)

  def per_joint(pred):
    diff = pred.astype(jnp.float32) - targets
    # Missing joints' targets may be junk (or NaN): zero them before they reach a sum.
    diff = jnp.where(visible[..., None] > 0, diff, 0.0)
    if kind == "l2":
      return jnp.sum(jnp.square(diff), axis=-1)
    if kind == "l1":
      return jnp.sum(jnp.abs(diff), axis=-1)
    a = jnp.abs(diff)
    return jnp.sum(jnp.where(a < beta, 0.5 * jnp.square(a) / beta, a - 0.5 * beta), -1)

  per_stage = jnp.stack(
      [_weighted_mean(per_joint(o) * visible, visible, 1) for o in outputs])
  return jnp.sum(per_stage), per_stage
