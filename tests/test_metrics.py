"""Tests for jhpe.metrics against hand-computed cases."""

import numpy as np
import pytest

from jhpe import metrics
from jhpe import skeletons

LSP, MPII = skeletons.LSP, skeletons.MPII


def _lsp_person(torso=50.0):
  """An LSP ground truth whose left shoulder and right hip are `torso` px apart."""
  gt = np.zeros((LSP.num_joints, 2))
  gt[:, 0] = np.arange(LSP.num_joints) * 7.0  # Distinct points.
  gt[:, 1] = 100.0
  gt[LSP.index("right_hip")] = [20.0, 100.0]
  gt[LSP.index("left_shoulder")] = [20.0 + 0.6 * torso, 100.0 - 0.8 * torso]
  return gt


def test_torso_size_is_left_shoulder_to_right_hip():
  gt = np.stack([_lsp_person(50.0), _lsp_person(80.0)])
  np.testing.assert_allclose(metrics.torso_size(gt, LSP), [50.0, 80.0])
  visible = np.ones((2, 14))
  visible[1, LSP.index("left_shoulder")] = 0
  size = metrics.torso_size(gt, "lsp", visible)
  assert size[0] == pytest.approx(50.0) and np.isnan(size[1])


def test_pck_threshold_boundary_and_per_joint():
  gt = _lsp_person(50.0)[None]  # alpha 0.2 -> 10 px.
  pred = gt.copy()
  pred[0, 0] += [10.0, 0.0]      # Exactly on the threshold: correct (<=, as in CPM's code).
  pred[0, 1] += [6.0, 8.0001]    # Just over 10: wrong.
  pred[0, 2] += [-6.0, 7.9]      # Under 10: correct.
  visible = np.ones((1, 14))
  per_joint = metrics.pck(pred, gt, visible, metrics.torso_size(gt, LSP), 0.2)
  expected = np.ones(14)
  expected[1] = 0.0
  np.testing.assert_array_equal(per_joint, expected)
  table = metrics.pck_table(pred, gt, visible, metrics.torso_size(gt, LSP), LSP)
  assert table["right_knee"] == 0.0 and table["right_ankle"] == 1.0
  assert table["mean"] == pytest.approx(13 / 14)


def test_missing_ground_truth_is_excluded_not_wrong():
  gt = np.stack([_lsp_person(), _lsp_person()])
  pred = gt.copy()
  pred[:, 3] += 100.0  # Left hip wrong in both people.
  pred[0, 4] += 100.0  # Left knee wrong in person 0 only...
  visible = np.ones((2, 14))
  visible[0, 4] = 0    # ...where it has no ground truth: not counted.
  visible[:, 5] = 0    # Left ankle: no ground truth anywhere -> NaN.
  gt[:, 5] = np.nan    # Its coordinates may even be NaN.
  table = metrics.pck_table(pred, gt, visible, metrics.torso_size(gt, LSP), LSP)
  assert table["left_knee"] == 1.0
  assert table["left_hip"] == 0.0
  assert np.isnan(table["left_ankle"])
  # Mean over annotated instances: 2 * 13 - 1 = 25 counted, 2 wrong (both left hips).
  assert table["mean"] == pytest.approx(23 / 25)


def test_mean_is_over_instances():
  gt = np.zeros((3, 14, 2))
  gt[:, 9] = [0.0, 10.0]  # Torso 10 -> threshold 2 px at alpha 0.2.
  pred = gt.copy()
  pred[0, 0] += 5.0
  visible = np.zeros((3, 14))
  visible[:, 0] = 1       # Joint 0: 3 instances, 1 wrong -> 2/3.
  visible[0, 1] = 1       # Joint 1: 1 instance, right -> 1.
  table = metrics.pck_table(pred, gt, visible, np.full(3, 10.0), LSP)
  assert table["right_ankle"] == pytest.approx(2 / 3)
  assert table["right_knee"] == 1.0
  assert table["mean"] == pytest.approx(3 / 4)  # Not (2/3 + 1) / 2.


def test_head_size_and_pckh_with_and_without_pelvis_thorax():
  boxes = np.array([[10.0, 10.0, 40.0, 50.0]])  # Diagonal 50 -> head size 30.
  np.testing.assert_allclose(metrics.head_size(boxes), [30.0])
  gt = np.tile(np.arange(16.0)[:, None] * [3.0, 5.0], (1, 1, 1))
  pred = gt.copy()
  pred[0, MPII.index("pelvis")] += [15.1, 0.0]   # > 0.5 x 30: wrong.
  pred[0, MPII.index("thorax")] += [0.0, 15.0]   # = 15: right.
  pred[0, MPII.index("left_wrist")] += [20.0, 0.0]  # Wrong.
  visible = np.ones((1, 16))
  table = metrics.pckh_table(pred, gt, visible, metrics.head_size(boxes), MPII)
  assert table["pelvis"] == 0.0 and table["thorax"] == 1.0 and table["left_wrist"] == 0.0
  assert table["mean"] == pytest.approx(14 / 16)
  assert table["mean_without_pelvis_thorax"] == pytest.approx(13 / 14)
  np.testing.assert_array_equal(
      metrics.pckh(pred, gt, visible, metrics.head_size(boxes))[[6, 7, 15]], [0, 1, 0])


def test_pck_curve_is_monotone_and_matches_pck():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0, 200, (20, 14, 2))
  pred = gt + rng.normal(0, 8, gt.shape)
  visible = (rng.uniform(size=(20, 14)) > 0.2).astype(np.float32)
  norm = rng.uniform(30, 60, 20)
  alphas = np.linspace(0, 0.5, 11)
  per_joint, mean = metrics.pck_curve(pred, gt, visible, norm, alphas)
  assert per_joint.shape == (11, 14) and mean.shape == (11,)
  assert np.all(np.diff(mean) >= 0)
  np.testing.assert_allclose(per_joint[4], metrics.pck(pred, gt, visible, norm, alphas[4]))
  hits, annotated = metrics.pck_hits(pred, gt, visible, norm, alphas[4])
  assert mean[4] == pytest.approx(hits.sum() / annotated.sum())


def test_pcp_strict_hand_computed():
  gt = np.zeros((1, 14, 2))
  i = LSP.index
  gt[0, i("right_shoulder")] = [0.0, 0.0]
  gt[0, i("right_elbow")] = [0.0, 20.0]   # Upper arm length 20 -> tolerance 10.
  gt[0, i("right_wrist")] = [0.0, 40.0]   # Lower arm length 20.
  gt[0, i("left_shoulder")] = [30.0, 0.0]
  gt[0, i("left_elbow")] = [30.0, 20.0]
  gt[0, i("left_wrist")] = [30.0, 40.0]
  gt[0, i("right_hip")] = [5.0, 60.0]
  gt[0, i("left_hip")] = [25.0, 60.0]     # Torso: (15, 0) -> (15, 60), length 60.
  gt[0, i("right_knee")] = [5.0, 90.0]
  gt[0, i("right_ankle")] = [5.0, 120.0]
  gt[0, i("left_knee")] = [25.0, 90.0]
  gt[0, i("left_ankle")] = [25.0, 120.0]
  gt[0, i("neck")] = [15.0, -5.0]
  gt[0, i("head_top")] = [15.0, -25.0]
  pred = gt.copy()
  pred[0, i("right_elbow")] += [10.0, 0.0]   # On the tolerance: both arm parts stay right.
  pred[0, i("left_elbow")] += [10.1, 0.0]    # Over: left upper and lower arm wrong.
  pred[0, i("right_hip")] += [0.0, 50.0]     # Hips' midpoint moves 25 (< 30): torso right,
  #                                            but the right upper leg (length 30) is wrong.
  visible = np.ones((1, 14))
  visible[0, i("head_top")] = 0              # Head: no ground truth -> NaN.
  table = metrics.pcp(pred, gt, visible, LSP)
  assert table["right_upper_arm"] == 1.0 and table["right_lower_arm"] == 1.0
  assert table["left_upper_arm"] == 0.0 and table["left_lower_arm"] == 0.0
  assert table["torso"] == 1.0
  assert table["right_upper_leg"] == 0.0 and table["right_lower_leg"] == 1.0
  assert np.isnan(table["head"])
  assert table["mean"] == pytest.approx(6 / 9)


def test_per_joint_table_exclude_and_all_missing():
  hits = np.array([[True, False]])
  table = metrics.per_joint_table(hits, np.zeros((1, 2), bool), ["a", "b"])
  assert np.isnan(table["a"]) and np.isnan(table["mean"])
  table = metrics.per_joint_table(hits, np.ones((1, 2), bool), ["a", "b"], exclude=("b",))
  assert table["b"] == 0.0 and table["mean"] == 1.0
  with pytest.raises(ValueError, match="exclude"):
    metrics.per_joint_table(hits, np.ones((1, 2), bool), ["a", "b"], exclude=("c",))


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.pck(np.zeros((2, 14, 2)), np.zeros((2, 14, 3)), np.ones((2, 14)),
                         np.ones(2)), r"gt must have shape \(N, J, 2\)"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.zeros((2, 14, 2)), np.ones((2, 14)),
                         np.ones(2)), r"pred must have shape \(2, 14, 2\)"),
    (lambda: metrics.pck(np.zeros((0, 14, 2)), np.zeros((0, 14, 2)), np.ones((0, 14)),
                         np.ones(0)), "empty batch"),
    (lambda: metrics.pck(np.full((1, 14, 2), np.nan), np.zeros((1, 14, 2)),
                         np.ones((1, 14)), np.ones(1)), "pred holds NaN"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.full((1, 14, 2), np.nan),
                         np.ones((1, 14)), np.ones(1)), "gt holds NaN"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 13)),
                         np.ones(1)), r"visible must have shape \(N, J\)"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 14)),
                         np.ones(2)), r"normaliser must have shape \(N,\)"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 14)),
                         np.array([np.nan])), "normaliser must be finite"),
    (lambda: metrics.pck(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 14)),
                         np.ones(1), alpha=-0.1), "alpha"),
    (lambda: metrics.pck(np.zeros((1, 14, 2), str), np.zeros((1, 14, 2)), np.ones((1, 14)),
                         np.ones(1)), "dtype"),
    (lambda: metrics.pck_table(np.zeros((1, 16, 2)), np.zeros((1, 16, 2)), np.ones((1, 16)),
                               np.ones(1), LSP), "14 joints"),
    (lambda: metrics.pcp(np.zeros((1, 16, 2)), np.zeros((1, 16, 2)), np.ones((1, 16)), LSP),
     r"\(N, 14, 2\)"),
    (lambda: metrics.head_size(np.ones((2, 3))), r"head_boxes must have shape \(N, 4\)"),
    (lambda: metrics.pck_curve(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 14)),
                               np.ones(1), np.array([])), "alphas"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_error_types_hand_computed():
  gt = np.zeros((2, LSP.num_joints, 2))
  gt[..., 0] = np.arange(LSP.num_joints) * 20.0  # 20 px apart; radii 2 (good), 5 (jitter).
  pred = gt.copy()
  i = LSP.index
  pred[0, i("left_ankle")] = gt[0, i("right_ankle")]  # On its counterpart: inversion.
  pred[0, i("right_knee")] += [3.0, 0.0]  # Near, not within 2: jitter.
  pred[0, i("neck")] = gt[0, i("head_top")]  # Far, and no counterpart: miss.
  pred[1, i("right_wrist")] = gt[1, i("left_wrist")]  # Inversion, in the other person...
  visible = np.ones((2, LSP.num_joints))
  visible[1, i("left_wrist")] = 0  # ...but the counterpart is not annotated: a miss.
  types = metrics.error_types(pred, gt, visible, np.full(2, 10.0), LSP)
  assert types["inversion"]["left_ankle"] == 0.5 and types["good"]["left_ankle"] == 0.5
  assert types["jitter"]["right_knee"] == 0.5
  assert types["miss"]["neck"] == 0.5 and types["inversion"]["neck"] == 0.0
  assert types["miss"]["right_wrist"] == 0.5 and types["inversion"]["right_wrist"] == 0.0
  assert types["good"]["left_wrist"] == 1.0  # Its one annotated instance.
  annotated = visible.sum()
  assert types["good"]["mean"] == pytest.approx((annotated - 4) / annotated)
  assert types["miss"]["mean"] == pytest.approx(2 / annotated)
  for name in (*LSP.joint_names, "mean"):
    assert sum(types[k][name] for k in metrics.ERROR_TYPES) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="jitter_alpha"):
    metrics.error_types(pred, gt, visible, np.full(2, 10.0), LSP, jitter_alpha=0.1)


def test_person_without_ground_truth_may_have_nan_normaliser():
  gt = np.zeros((2, 14, 2))
  visible = np.ones((2, 14))
  visible[1] = 0
  per_joint = metrics.pck(gt, gt, visible, np.array([10.0, np.nan]))
  np.testing.assert_array_equal(per_joint, np.ones(14))
