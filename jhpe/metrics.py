"""Pose metrics in numpy, on original-image pixels.

- PCK@alpha: a joint is correct when its error is <= alpha x the person's normaliser. On LSP
  the normaliser is the person-centric torso size (`torso_size`; alpha = 0.2).
- PCKh@0.5 (MPII): the normaliser is the head size, 0.6 x the head box diagonal
  (`head_size`); reported over all joints and without pelvis and thorax, the figure of the
  MPII benchmark table.
- PCP (strict): a body part is correct when *both* of its end points are within 0.5 of the
  ground-truth part length from their ground-truth positions.

Joints (or parts) without ground truth (visible == 0) are excluded: neither correct nor
wrong. A joint with no ground truth in the whole set gets NaN, and means run over the joint
instances that have ground truth (so a mean is total correct / total annotated, as in the
CPM and MPII evaluation code).
"""

import numpy as np

from jhpe import skeletons as skeletons_lib

# The MPII table's summary ('PCKh total') leaves these two out.
MPII_EXCLUDED = ("pelvis", "thorax")


def _points(name, x, n=None, j=None):
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name} must be a real number array (N, J, 2), got dtype {x.dtype}.")
  want = f"({'N' if n is None else n}, {'J' if j is None else j}, 2)"
  if x.ndim != 3 or x.shape[-1] != 2 or (n is not None and x.shape[0] != n) or (
      j is not None and x.shape[1] != j):
    raise ValueError(f"{name} must have shape {want}, got {x.shape}.")
  return x.astype(np.float64)


def _check_inputs(pred, gt, visible):
  """Validates (pred, gt, visible); returns float64 arrays and the bool annotated mask."""
  gt = _points("gt", gt)
  n, j = gt.shape[:2]
  if n == 0:
    raise ValueError("gt is an empty batch (N = 0); expected N >= 1 people.")
  pred = _points("pred", pred, n, j)
  visible = np.asarray(visible)
  if visible.shape != (n, j):
    raise ValueError(f"visible must have shape (N, J) = {(n, j)}, got {visible.shape}.")
  if not (np.issubdtype(visible.dtype, np.number) or visible.dtype == bool):
    raise ValueError(f"visible must be numeric or bool, got dtype {visible.dtype}.")
  annotated = visible > 0
  if not np.all(np.isfinite(pred)):
    raise ValueError("pred holds NaN or Inf; predictions must be finite numbers.")
  if not np.all(np.isfinite(gt[annotated])):
    raise ValueError(
        "gt holds NaN or Inf for annotated joints (visible > 0); give missing joints "
        "visible = 0.")
  return pred, gt, annotated


def _check_normaliser(normaliser, annotated, name="normaliser"):
  normaliser = np.asarray(normaliser)
  n = annotated.shape[0]
  if normaliser.shape != (n,):
    raise ValueError(f"{name} must have shape (N,) = ({n},), got {normaliser.shape}.")
  if not np.issubdtype(normaliser.dtype, np.number):
    raise ValueError(f"{name} must be numeric, got dtype {normaliser.dtype}.")
  normaliser = normaliser.astype(np.float64)
  needed = annotated.any(axis=1)
  bad = needed & ~(np.isfinite(normaliser) & (normaliser >= 0))
  if bad.any():
    raise ValueError(
        f"{name} must be finite and >= 0 for every person with ground truth; person(s) "
        f"{np.flatnonzero(bad)[:10].tolist()} have {normaliser[bad][:10].tolist()} "
        "(missing torso or head box? set their visible to 0 or drop them).")
  return normaliser


def _check_alpha(alpha, name="alpha"):
  alpha = np.asarray(alpha, dtype=np.float64)
  if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
    raise ValueError(f"{name} must be finite and >= 0, got {alpha}.")
  return alpha


def torso_size(gt, skeleton, visible=None):
  """Person-centric torso size: |left shoulder - right hip| of the ground truth.

  The LSP PCK normaliser of the official evaluation (see `jhpe.skeletons`).

  Args:
    gt: (N, J, 2) ground-truth joints.
    skeleton: a `Skeleton` (or its name).
    visible: optional (N, J); where either torso joint is missing the size is NaN.

  Returns:
    (N,) float64.
  """
  if isinstance(skeleton, str):
    skeleton = skeletons_lib.get_skeleton(skeleton)
  gt = _points("gt", gt, j=skeleton.num_joints)
  a, b = skeleton.torso_joints
  size = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
  if visible is not None:
    visible = np.asarray(visible)
    if visible.shape != gt.shape[:2]:
      raise ValueError(f"visible must have shape (N, J) = {gt.shape[:2]}, got "
                       f"{visible.shape}.")
    size = np.where((visible[:, a] > 0) & (visible[:, b] > 0), size, np.nan)
  return size


def head_size(head_boxes):
  """MPII's head size: 0.6 x the diagonal of the head box (x1, y1, x2, y2), (N, 4) -> (N,)."""
  boxes = np.asarray(head_boxes, dtype=np.float64)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"head_boxes must have shape (N, 4) (x1, y1, x2, y2), got "
                     f"{boxes.shape}.")
  return 0.6 * np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=-1)


def pck_hits(pred, gt, visible, normaliser, alpha):
  """The per-joint outcome of PCK.

  Args:
    pred, gt: (N, J, 2) joints in original pixels.
    visible: (N, J); > 0 marks ground truth.
    normaliser: (N,) per-person normaliser in pixels.
    alpha: threshold as a fraction of the normaliser.

  Returns:
    hits: (N, J) bool, correct and annotated.
    annotated: (N, J) bool, the joints that count.
  """
  pred, gt, annotated = _check_inputs(pred, gt, visible)
  normaliser = _check_normaliser(normaliser, annotated)
  alpha = float(_check_alpha(alpha))
  error = np.linalg.norm(np.where(annotated[..., None], pred - gt, 0.0), axis=-1)
  hits = annotated & (error <= alpha * np.nan_to_num(normaliser)[:, None])
  return hits, annotated


def _rates(hits, annotated):
  """(..., N, J) -> per-joint (..., J) rates (NaN where nothing is annotated)."""
  total = annotated.sum(axis=-2)
  correct = hits.sum(axis=-2)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def pck(pred, gt, visible, normaliser, alpha=0.2):
  """PCK per joint: (J,) float64 in [0, 1], NaN for a joint with no ground truth.

  See `pck_hits` for the arguments. LSP: normaliser = `torso_size(gt, LSP)`, alpha = 0.2.
  """
  return _rates(*pck_hits(pred, gt, visible, normaliser, alpha))


def pckh(pred, gt, visible, head_sizes, alpha=0.5):
  """PCKh per joint (MPII): PCK with the head size as normaliser (see `head_size`)."""
  hits, annotated = pck_hits(pred, gt, visible, head_sizes, alpha)
  return _rates(hits, annotated)


def per_joint_table(hits, annotated, names, exclude=()):
  """A per-joint table from per-instance outcomes.

  Args:
    hits: (N, J) bool outcomes (joints or PCP parts).
    annotated: (N, J) bool, the instances that count.
    names: (J,) names.
    exclude: names left out of the mean (still reported per joint).

  Returns:
    {name: rate (NaN without ground truth), ..., 'mean': total correct / total annotated
    over the joints not excluded (NaN if none)}.
  """
  hits, annotated = np.asarray(hits, bool), np.asarray(annotated, bool)
  if hits.shape != annotated.shape or hits.ndim != 2 or hits.shape[1] != len(names):
    raise ValueError(
        f"hits and annotated must both have shape (N, {len(names)}), got {hits.shape} "
        f"and {annotated.shape}.")
  unknown = set(exclude) - set(names)
  if unknown:
    raise ValueError(f"exclude names unknown joints {sorted(unknown)}; known: {names}.")
  rates = _rates(hits & annotated, annotated)
  table = {name: float(r) for name, r in zip(names, rates)}
  keep = np.array([n not in exclude for n in names], bool)
  total = annotated[:, keep].sum()
  table["mean"] = float((hits & annotated)[:, keep].sum() / total) if total else np.nan
  return table


def pck_table(pred, gt, visible, normaliser, skeleton, alpha=0.2):
  """PCK@alpha as {joint name: rate, 'mean': rate}; see `pck_hits`."""
  hits, annotated = pck_hits(pred, gt, visible, normaliser, alpha)
  return per_joint_table(hits, annotated, _names(skeleton, hits.shape[1]))


def pckh_table(pred, gt, visible, head_sizes, skeleton, alpha=0.5):
  """PCKh@alpha as {joint: rate, 'mean': all joints, 'mean_without_pelvis_thorax': ...}.

  'mean_without_pelvis_thorax' is the summary of the MPII benchmark table (and of the
  Stacked Hourglass / HRNet evaluation scripts); for a skeleton without those joints it
  equals 'mean'.
  """
  hits, annotated = pck_hits(pred, gt, visible, head_sizes, alpha)
  names = _names(skeleton, hits.shape[1])
  table = per_joint_table(hits, annotated, names)
  excluded = tuple(n for n in MPII_EXCLUDED if n in names)
  table["mean_without_pelvis_thorax"] = per_joint_table(
      hits, annotated, names, exclude=excluded)["mean"]
  return table


def pck_curve(pred, gt, visible, normaliser, alphas):
  """PCK over a range of thresholds.

  Args:
    pred, gt, visible, normaliser: as in `pck_hits`.
    alphas: (A,) thresholds.

  Returns:
    per_joint: (A, J) float64 (NaN for joints with no ground truth).
    mean: (A,) total correct / total annotated.
  """
  pred, gt, annotated = _check_inputs(pred, gt, visible)
  normaliser = np.nan_to_num(_check_normaliser(normaliser, annotated))
  alphas = _check_alpha(alphas, "alphas")
  if alphas.ndim != 1 or alphas.shape[0] == 0:
    raise ValueError(f"alphas must have shape (A,) with A >= 1, got {alphas.shape}.")
  error = np.linalg.norm(np.where(annotated[..., None], pred - gt, 0.0), axis=-1)
  hits = annotated & (error[None] <= alphas[:, None, None] * normaliser[None, :, None])
  total = annotated.sum()
  mean = hits.sum(axis=(1, 2)) / total if total else np.full(alphas.shape, np.nan)
  return _rates(hits, np.broadcast_to(annotated, hits.shape)), mean


ERROR_TYPES = ("good", "inversion", "jitter", "miss")


def error_types(pred, gt, visible, normaliser, skeleton, alpha=0.2, jitter_alpha=None):
  """Where the joints go, after Ronchi and Perona's error diagnosis (ICCV 2017), in PCK radii.

  Each annotated joint gets one type, checked in this order:
  - 'good': within alpha x normaliser of its ground truth (a PCK@alpha hit);
  - 'inversion': not, but within alpha of its left/right counterpart's ground truth (the
    left wrist predicted on the right wrist); joints without a counterpart never are;
  - 'jitter': within jitter_alpha (default 2.5 alpha: 0.5 torso for PCK@0.2) of its own
    ground truth (the right place, imprecise);
  - 'miss': the rest.

  Args:
    pred, gt, visible, normaliser: as in `pck_hits`.
    skeleton: a `Skeleton` (or its name): names the joints and pairs them left/right.
    alpha, jitter_alpha: the PCK threshold and the outer radius of jitter.

  Returns:
    {type: {joint name: fraction of that joint's annotated instances, ..., 'mean':
    fraction of all annotated joints}} for each type in `ERROR_TYPES`; per joint and in
    the mean, the four fractions add up to 1.
  """
  if isinstance(skeleton, str):
    skeleton = skeletons_lib.get_skeleton(skeleton)
  names = _names(skeleton, np.shape(gt)[1])
  jitter_alpha = float(_check_alpha(2.5 * alpha if jitter_alpha is None else jitter_alpha,
                                    "jitter_alpha"))
  if jitter_alpha < alpha:
    raise ValueError(f"jitter_alpha must be >= alpha ({alpha}), got {jitter_alpha}.")
  good, annotated = pck_hits(pred, gt, visible, normaliser, alpha)
  counterpart = np.asarray(skeleton.flip_permutation)
  paired = counterpart != np.arange(len(names))
  # The prediction of joint j against the ground truth of its counterpart (both annotated).
  visible = np.asarray(visible)
  near_other, _ = pck_hits(pred, np.asarray(gt)[:, counterpart],
                           visible * visible[:, counterpart], normaliser, alpha)
  inversion = annotated & ~good & near_other & paired[None]
  jitter_hit, _ = pck_hits(pred, gt, visible, normaliser, jitter_alpha)
  jitter = jitter_hit & ~good & ~inversion
  miss = annotated & ~good & ~inversion & ~jitter
  outcomes = dict(good=good, inversion=inversion, jitter=jitter, miss=miss)
  return {kind: per_joint_table(outcomes[kind], annotated, names) for kind in ERROR_TYPES}


def _end_point(points, indices):
  return points[:, list(indices)].mean(axis=1)


def pcp_hits(pred, gt, visible, skeleton, threshold=0.5):
  """Strict PCP outcomes per body part.

  A part counts when all joints defining its two end points are annotated, and is correct
  when both predicted end points lie within `threshold` x the ground-truth part length of
  the ground-truth end points.

  Args:
    pred, gt: (N, J, 2); visible: (N, J).
    skeleton: a `Skeleton` (or its name); its `pcp_limbs` are scored.
    threshold: fraction of the part length (0.5: PCP@0.5).

  Returns:
    hits: (N, L) bool; annotated: (N, L) bool.
  """
  if isinstance(skeleton, str):
    skeleton = skeletons_lib.get_skeleton(skeleton)
  pred, gt, annotated = _check_inputs(pred, gt, visible)
  if gt.shape[1] != skeleton.num_joints:
    raise ValueError(f"gt must have shape (N, {skeleton.num_joints}, 2) for the "
                     f"{skeleton.name} skeleton, got {gt.shape}.")
  threshold = float(_check_alpha(threshold, "threshold"))
  hits, counted = [], []
  for limb in skeleton.pcp_limbs:
    ok = annotated[:, list(limb.start + limb.end)].all(axis=1)
    g = np.where(ok[:, None, None], gt, 0.0)
    gs, ge = _end_point(g, limb.start), _end_point(g, limb.end)
    ps, pe = _end_point(pred, limb.start), _end_point(pred, limb.end)
    tol = threshold * np.linalg.norm(gs - ge, axis=-1)
    correct = ((np.linalg.norm(ps - gs, axis=-1) <= tol)
               & (np.linalg.norm(pe - ge, axis=-1) <= tol))
    hits.append(ok & correct)
    counted.append(ok)
  return np.stack(hits, axis=1), np.stack(counted, axis=1)


def pcp(pred, gt, visible, skeleton, threshold=0.5):
  """Strict PCP as {part name: rate (NaN without ground truth), 'mean': rate}."""
  if isinstance(skeleton, str):
    skeleton = skeletons_lib.get_skeleton(skeleton)
  hits, counted = pcp_hits(pred, gt, visible, skeleton, threshold)
  return per_joint_table(hits, counted, [l.name for l in skeleton.pcp_limbs])


def _names(skeleton, num_joints):
  if isinstance(skeleton, str):
    skeleton = skeletons_lib.get_skeleton(skeleton)
  if skeleton.num_joints != num_joints:
    raise ValueError(f"The {skeleton.name} skeleton has {skeleton.num_joints} joints but "
                     f"the inputs have J = {num_joints}.")
  return list(skeleton.joint_names)
