"""Hypothesis fuzz tests of the pose core: heatmap encode/decode, metrics, affines.

Valid inputs never crash nor produce NaN; invalid inputs raise a ValueError that names
the argument. Shapes are drawn from small fixed sets so the jitted functions compile a
handful of times only.
"""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from jhpe import geometry
from jhpe import heatmaps
from jhpe import metrics
from jhpe import skeletons

SETTINGS = hypothesis.settings(
    max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
FINITE = dict(allow_nan=False, allow_infinity=False, width=32)
HM = 16  # Heatmap side for the fuzzed encode/decode.


@SETTINGS
@hypothesis.given(
    joints=hnp.arrays(np.float32, (2, 3, 2), elements=st.floats(-40, 40, **FINITE)),
    visible=hnp.arrays(np.float32, (2, 3), elements=st.sampled_from([0.0, 1.0])),
    sigma=st.sampled_from([0.5, 1.0, 2.0]))
def test_render_then_decode_never_nan(joints, visible, sigma):
  hm, weights = heatmaps.render_gaussian(joints, visible, (HM, HM), sigma)
  assert np.all(np.isfinite(hm)) and np.all((np.asarray(hm) >= 0) & (np.asarray(hm) <= 1))
  inside = (joints >= -0.5).all(-1) & (joints < HM - 0.5).all(-1) & (visible > 0)
  np.testing.assert_array_equal(np.asarray(weights) > 0, inside)
  for method in heatmaps.DECODE_METHODS:
    coords, conf = heatmaps.decode(hm, method)
    coords = np.asarray(coords)
    assert np.all(np.isfinite(coords)) and np.all(np.isfinite(conf))
    assert np.all((coords >= -1.0) & (coords <= HM))
    # Where a Gaussian was drawn, the decoded peak is within a pixel of the joint.
    err = np.abs(coords - joints)[inside]
    assert np.all(err <= 1.0)


@SETTINGS
@hypothesis.given(hm=hnp.arrays(np.float32, (1, HM, HM, 2),
                                elements=st.floats(-1e3, 1e3, **FINITE)))
def test_decode_arbitrary_maps_never_nan(hm):
  for method in heatmaps.DECODE_METHODS:
    coords, conf = heatmaps.decode(hm, method)
    assert np.all(np.isfinite(coords)) and np.all(np.isfinite(conf))
    np.testing.assert_allclose(conf, hm.max(axis=(1, 2)))
  coords, _ = heatmaps.decode(hm, "taylor", smoothing_kernel=3)
  assert np.all(np.isfinite(coords))


def _points(n, j, lo=-1e3, hi=1e3):
  return hnp.arrays(np.float64, (n, j, 2), elements=st.floats(lo, hi, allow_nan=False))


@SETTINGS
@hypothesis.given(data=st.data(), n=st.integers(1, 6))
def test_metrics_valid_inputs(data, n):
  skel = skeletons.LSP
  gt = data.draw(_points(n, 14))
  pred = data.draw(_points(n, 14))
  visible = data.draw(hnp.arrays(np.float32, (n, 14), elements=st.sampled_from([0., 1.])))
  alpha = data.draw(st.floats(0, 2))
  norm = metrics.torso_size(gt, skel)
  per_joint = metrics.pck(pred, gt, visible, norm, alpha)
  has_gt = visible.sum(0) > 0
  assert np.all(np.isnan(per_joint) == ~has_gt)
  assert np.all((per_joint[has_gt] >= 0) & (per_joint[has_gt] <= 1))
  table = metrics.pck_table(pred, gt, visible, norm, skel, alpha)
  assert np.isnan(table["mean"]) == (not has_gt.any())
  # Perfect predictions are always right.
  assert np.all(metrics.pck(gt, gt, visible, norm, alpha)[has_gt] == 1.0)
  curve, mean = metrics.pck_curve(pred, gt, visible, norm, [0.0, alpha, 2 * alpha])
  if has_gt.any():
    assert np.all(np.diff(mean) >= 0)
  pcp = metrics.pcp(pred, gt, visible, skel)
  for name, value in pcp.items():
    assert np.isnan(value) or 0.0 <= value <= 1.0, name


@SETTINGS
@hypothesis.given(
    bad=st.sampled_from(["nan_pred", "shape_gt", "shape_visible", "normaliser", "empty"]))
def test_metrics_invalid_inputs_rejected(bad):
  gt = np.zeros((2, 14, 2))
  pred, visible, norm = gt.copy(), np.ones((2, 14)), np.ones(2)
  name = {"nan_pred": "pred", "shape_gt": "gt", "shape_visible": "visible",
          "normaliser": "normaliser", "empty": "gt"}[bad]
  if bad == "nan_pred":
    pred[1, 3, 0] = np.nan
  elif bad == "shape_gt":
    gt = gt[..., :1]
  elif bad == "shape_visible":
    visible = visible[:, :5]
  elif bad == "normaliser":
    norm = np.array([1.0, -np.inf])
  else:
    gt, pred, visible, norm = gt[:0], pred[:0], visible[:0], norm[:0]
  with pytest.raises(ValueError, match=name):
    metrics.pck(pred, gt, visible, norm, 0.2)


@SETTINGS
@hypothesis.given(
    center=hnp.arrays(np.float64, (3, 2), elements=st.floats(-1e3, 1e3)),
    scale=hnp.arrays(np.float64, (3,), elements=st.floats(1.0, 1e3)),
    rotation=hnp.arrays(np.float64, (3,), elements=st.floats(-180, 180)),
    flip=hnp.arrays(np.bool_, (3,)),
    pts=hnp.arrays(np.float64, (3, 5, 2), elements=st.floats(-1e3, 1e3)),
    size=st.sampled_from([32, 256]))
def test_affine_roundtrip(center, scale, rotation, flip, pts, size):
  m = geometry.crop_matrix(center, scale, size, rotation_deg=rotation, flip=flip)
  assert m.shape == (3, 3, 3) and np.all(np.isfinite(m))
  np.testing.assert_array_equal(m[:, 2], np.broadcast_to([0.0, 0.0, 1.0], (3, 3)))
  canvas = geometry.apply_affine(m, pts)
  assert np.all(np.isfinite(canvas))
  back = geometry.apply_affine(geometry.invert_affine(m), canvas)
  np.testing.assert_allclose(
      back, pts, atol=1e-9 * (1 + np.abs(pts).max() + np.abs(center).max()))
  # The centre always lands on the canvas centre.
  mid = geometry.apply_affine(m, center[:, None])[:, 0]
  np.testing.assert_allclose(mid, (size - 1) / 2, atol=1e-6 * size)


@SETTINGS
@hypothesis.given(
    m=hnp.arrays(np.float64, (3, 3), elements=st.floats(-10, 10)),
    bad=st.sampled_from(["nan", "shape", "pts_shape"]))
def test_affine_invalid_inputs_rejected(m, bad):
  pts = np.zeros((4, 2))
  if bad == "nan":
    m[0, 1] = np.nan
    match = "m holds NaN"
  elif bad == "shape":
    m = m[:2]
    match = r"m must have shape \(\.\.\., 3, 3\)"
  else:
    pts = np.zeros((4, 3))
    match = "pts must have shape"
  with pytest.raises(ValueError, match=match):
    geometry.apply_affine(m, pts)
