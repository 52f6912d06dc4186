"""Tests of jhpe.viz: every figure is written, not blank, and leaves no global state."""

import sys

import matplotlib
from matplotlib import figure as mpl_figure
import numpy as np
from PIL import Image
import pytest

from jhpe import skeletons
from jhpe import viz

SKELETON = skeletons.LSP


def _image(h=96, w=80, seed=0):
  rng = np.random.default_rng(seed)
  # A smooth grey ramp: no pixel is close to the skeleton colours.
  ramp = np.linspace(40, 200, w, dtype=np.float32)[None, :, None]
  noise = rng.normal(0, 3, (h, w, 1))
  return np.clip(np.repeat(ramp + noise, 3, -1), 0, 255).astype(np.uint8)


def _pose(h=96, w=80):
  """An upright LSP pose inside an h x w image."""
  x = {'left': 0.62 * w, 'right': 0.38 * w}
  joints = np.zeros((14, 2), np.float32)
  for side in ('left', 'right'):
    for name, y in (('ankle', 0.92), ('knee', 0.72), ('hip', 0.52), ('wrist', 0.55),
                    ('elbow', 0.4), ('shoulder', 0.25)):
      shift = (0.15 * w if name in ('wrist', 'elbow') else 0) * (1 if side == 'left' else -1)
      joints[SKELETON.index(f'{side}_{name}')] = (x[side] + shift, y * h)
  joints[SKELETON.index('neck')] = (0.5 * w, 0.2 * h)
  joints[SKELETON.index('head_top')] = (0.5 * w, 0.05 * h)
  return joints


def _read(path):
  return np.asarray(Image.open(path).convert('RGB'), np.float32)


def _has_colour(pixels, rgb, tolerance=12):
  target = np.asarray(rgb) * 255
  return bool(np.any(np.all(np.abs(pixels - target) <= tolerance, axis=-1)))


def _legend_labels(legend):
  return [t.get_text() for t in legend.get_texts()]


def _panels(fig):
  """The image panels (a colour bar's axes shows no image)."""
  return [ax for ax in fig.axes if ax.get_images()]


def _gaussians(joints, size, stride, sigma=1.5):
  """(size/stride, size/stride, J) Gaussians at the joints (heatmap pixels)."""
  n = size // stride
  u = (joints + 0.5) / stride - 0.5
  yy, xx = np.mgrid[:n, :n]
  d2 = (xx[..., None] - u[:, 0]) ** 2 + (yy[..., None] - u[:, 1]) ** 2
  return np.exp(-d2 / (2 * sigma ** 2)).astype(np.float32)


def test_skeleton_overlay_uses_left_and_right_colours(tmp_path):
  path = tmp_path / 'overlay.png'
  fig = viz.plot_skeleton(_image(), _pose(), SKELETON, path=str(path))
  assert isinstance(fig, mpl_figure.Figure)
  pixels = _read(path)
  assert pixels.var() > 0
  assert _has_colour(pixels, viz.LEFT_COLOR) and _has_colour(pixels, viz.RIGHT_COLOR)
  assert _has_colour(pixels, viz.CENTER_COLOR)  # Neck to head top.
  # The legend says what is drawn and which colour is which side.
  [legend] = fig.legends
  assert _legend_labels(legend) == ['prediction', "person's left", "person's right",
                                    'centre']
  # Without the skeleton none of the three colours is in the picture, legend included.
  bare = tmp_path / 'bare.png'
  invisible = np.zeros(14)
  fig = viz.plot_skeleton(_image(), _pose(), SKELETON, visible=invisible, path=str(bare))
  assert not _has_colour(_read(bare), viz.LEFT_COLOR) and not fig.legends
  # Only the sides drawn are in the legend; label=None leaves out the first entry.
  right_only = np.array([n.startswith('right_') for n in SKELETON.joint_names])
  fig = viz.plot_skeleton(_image(), _pose(), SKELETON, visible=right_only, label=None)
  assert _legend_labels(fig.legends[0]) == ["person's right"]


def test_limb_colours_follow_the_persons_sides():
  i = SKELETON.index
  assert viz.limb_color(SKELETON, (i('left_elbow'), i('left_wrist'))) == viz.LEFT_COLOR
  assert viz.limb_color(SKELETON, (i('right_knee'), i('right_ankle'))) == viz.RIGHT_COLOR
  assert viz.limb_color(SKELETON, (i('neck'), i('head_top'))) == viz.CENTER_COLOR
  # A limb from the midline to one side is on that side; one across the body is midline.
  assert viz.limb_color(SKELETON, (i('neck'), i('left_shoulder'))) == viz.LEFT_COLOR
  assert viz.limb_color(SKELETON, (i('right_shoulder'), i('neck'))) == viz.RIGHT_COLOR
  assert viz.limb_color(SKELETON, (i('left_hip'), i('right_hip'))) == viz.CENTER_COLOR
  assert viz.limb_color(skeletons.COCO, (skeletons.COCO.index('left_shoulder'),
                                         skeletons.COCO.index('right_shoulder'))) == \
      viz.CENTER_COLOR


def test_joint_label_is_one_readable_style():
  assert viz.joint_label('left_wrist') == 'left wrist'
  assert viz.joint_label('head_top') == 'head top'
  assert viz.joint_label('upper_neck') == 'upper neck'
  assert viz.joint_label('nose') == 'nose'
  # Other spellings of the same joint come out the same.
  assert viz.joint_label('l_wrist') == 'left wrist'
  assert viz.joint_label('R-Knee') == 'right knee'
  assert [viz.joint_label(n) for n in skeletons.MPII.joint_names[6:10]] == [
      'pelvis', 'thorax', 'upper neck', 'head top']


def test_joint_heatmaps_figure_has_figure2_joints(tmp_path):
  image, joints = _image(64, 64), _pose(64, 64)
  maps = _gaussians(joints, 64, 4)
  path = tmp_path / 'heatmaps.png'
  fig = viz.plot_joint_heatmaps(image, maps, SKELETON, predictions=joints, path=str(path))
  titles = [ax.get_title() for ax in _panels(fig)]
  assert titles == ['prediction', 'neck', 'left elbow', 'left wrist', 'right knee',
                    'right ankle']
  assert _read(path).var() > 0
  [legend] = fig.legends  # The first panel's skeleton is explained.
  assert _legend_labels(legend) == ['prediction', "person's left", "person's right",
                                    'centre']
  no_skeleton = viz.plot_joint_heatmaps(image, maps, SKELETON)
  assert _panels(no_skeleton)[0].get_title() == 'image' and not no_skeleton.legends


def test_heatmap_panels_share_one_colour_scale_with_a_colour_bar():
  image, joints = _image(64, 64), _pose(64, 64)
  # Each joint's peak has its own height, so per-panel scales would differ.
  maps = _gaussians(joints, 64, 4) * np.linspace(0.2, 1.0, 14)
  fig = viz.plot_joint_heatmaps(image, maps, SKELETON, predictions=joints)
  shown = [SKELETON.index(n) for n in viz.FIGURE2_JOINTS]
  clims = {ax.get_images()[-1].get_clim() for ax in _panels(fig)[1:]}
  assert len(clims) == 1
  [(vmin, vmax)] = clims
  assert vmin == pytest.approx(maps[..., shown].min())
  assert vmax == pytest.approx(maps[..., shown].max())
  [bar_axes] = [ax for ax in fig.axes if not ax.get_images()]
  assert bar_axes.get_ylim() == pytest.approx((vmin, vmax))
  # A scale given by the caller (e.g. one for several figures) is used as is.
  fig = viz.plot_joint_heatmaps(image, maps, SKELETON, vmin=0.0, vmax=2.0)
  assert {ax.get_images()[-1].get_clim() for ax in _panels(fig)[1:]} == {(0.0, 2.0)}
  # Flat maps (an untrained model) still get a usable scale.
  fig = viz.plot_joint_heatmaps(image, np.zeros_like(maps), SKELETON)
  assert {ax.get_images()[-1].get_clim() for ax in _panels(fig)[1:]} == {(0.0, 1.0)}
  with pytest.raises(ValueError, match="no joint 'left_toe'"):
    viz.plot_joint_heatmaps(image, maps, SKELETON, joints=('left_toe',))
  with pytest.raises(ValueError, match=r'heatmaps must have shape'):
    viz.plot_joint_heatmaps(image, maps[..., :3], SKELETON)


def test_heatmap_is_drawn_where_the_joint_is():
  """The heatmap's peak lands on the joint's pixel in the figure's data coordinates."""
  image, joints = _image(64, 64), _pose(64, 64)
  fig = viz.plot_joint_heatmaps(image, _gaussians(joints, 64, 4), SKELETON,
                                joints=('left_wrist',))
  overlay = _panels(fig)[1].get_images()[-1]
  x0, x1, y1, y0 = overlay.get_extent()
  assert (x0, x1, y0, y1) == (-0.5, 63.5, -0.5, 63.5)
  data = np.asarray(overlay.get_array())
  v, u = np.unravel_index(np.argmax(data), data.shape)
  peak_canvas = (np.array([u, v]) + 0.5) * 4 - 0.5
  assert np.all(np.abs(peak_canvas - joints[SKELETON.index('left_wrist')]) <= 2.0)


def test_stage_refinement_one_panel_per_stage(tmp_path):
  image, joints = _image(64, 64), _pose(64, 64)
  stages = [_gaussians(joints, 64, 4, sigma) for sigma in (4.0, 2.5, 1.5)]
  path = tmp_path / 'stages.png'
  fig = viz.plot_stage_refinement(image, stages, SKELETON.index('left_wrist'),
                                  joint_name='left_wrist', model_name='hourglass',
                                  path=str(path))
  assert [ax.get_title() for ax in _panels(fig)] == ['stage 1', 'stage 2', 'stage 3']
  assert fig.get_suptitle() == 'hourglass: left wrist'
  assert _read(path).var() > 0
  # One scale over the stages (the peaks differ), shown by one colour bar.
  clims = {ax.get_images()[-1].get_clim() for ax in _panels(fig)}
  assert len(clims) == 1 and len(fig.axes) == 4
  assert clims.pop()[1] == pytest.approx(max(s[..., 11].max() for s in stages))
  with pytest.raises(ValueError, match='joint_index'):
    viz.plot_stage_refinement(image, stages, 14)


def test_pck_curve(tmp_path):
  alphas = np.linspace(0, 0.5, 11)
  path = tmp_path / 'pck.png'
  fig = viz.plot_pck_curve(alphas, {'hourglass': np.sqrt(alphas / 0.5),
                                    'cpm': alphas / 0.5}, path=str(path),
                           run_name='lsp_hourglass', step=14000)
  ax = fig.axes[0]
  assert _legend_labels(ax.get_legend()) == ['hourglass', 'cpm']
  lines = ax.get_lines()
  np.testing.assert_allclose(lines[1].get_ydata(), alphas / 0.5, rtol=1e-6)
  assert _read(path).var() > 0
  # The headline threshold: a vertical line at 0.2 and each model's value there.
  assert _mark_lines(ax) == [0.2]
  texts = [t.get_text() for t in ax.texts]
  assert 'PCK@0.2' in texts
  assert f'{100 * np.sqrt(0.4):.1f}%' in texts and '40.0%' in texts
  assert 'lsp_hourglass' in ax.get_title() and '14000' in ax.get_title()
  with pytest.raises(ValueError, match="'cpm' must have shape"):
    viz.plot_pck_curve(alphas, {'cpm': alphas[:3]})


def _mark_lines(ax):
  """x of the vertical lines (axvline: two points at one x, spanning the axes)."""
  return [float(l.get_xdata()[0]) for l in ax.get_lines()
          if len(l.get_xdata()) == 2 and l.get_xdata()[0] == l.get_xdata()[1]]


def test_pck_curve_mark_follows_the_metric_and_the_caller():
  alphas = np.linspace(0, 0.5, 11)
  values = {'hg': 100 * alphas / 0.5}  # Percentages work as well as fractions.
  fig = viz.plot_pck_curve(alphas, values, metric_name='PCKh')
  ax = fig.axes[0]
  assert _mark_lines(ax) == [0.5]
  assert {'PCKh@0.5', '100.0%'} <= {t.get_text() for t in ax.texts}
  assert ax.get_ylabel() == 'PCKh (%)'
  assert _mark_lines(viz.plot_pck_curve(alphas, values, mark_alpha=0.1).axes[0]) == [0.1]
  # Outside the sampled thresholds there is no value to show, so no mark.
  assert _mark_lines(viz.plot_pck_curve(alphas, values, mark_alpha=0.8).axes[0]) == []
  # A NaN value (no annotated joint) leaves its annotation out, not the figure.
  fig = viz.plot_pck_curve(alphas, {'hg': np.full(11, np.nan)}, step=5)
  assert _mark_lines(fig.axes[0]) == [0.2] and fig.axes[0].get_title() == 'PCK curve: step 5'


def test_prediction_grid_shows_best_and_worst(tmp_path):
  n = 7
  images = [_image(seed=i) for i in range(n)]
  gts = np.stack([_pose()] * n)
  preds = gts + np.arange(n)[:, None, None]
  scores = 1.0 - np.arange(n, dtype=np.float32)  # Example 0 is the best, 6 the worst.
  path = tmp_path / 'grid.png'
  fig = viz.plot_prediction_grid(images, preds, gts, scores, SKELETON, best_and_worst=3,
                                 titles=[f'im{i}' for i in range(n)], path=str(path))
  titles = [ax.get_title() for ax in fig.axes]
  assert titles[:3] == ['best: im0 1.00', 'best: im1 0.00', 'best: im2 -1.00']
  assert titles[3:] == ['worst: im6 -5.00', 'worst: im5 -4.00', 'worst: im4 -3.00']
  pixels = _read(path)
  assert _has_colour(pixels, viz.LEFT_COLOR) and _has_colour(pixels, viz.RIGHT_COLOR)
  # Ground truth is a dashed white skeleton, the prediction solid; the legend says so.
  [legend] = fig.legends
  assert _legend_labels(legend) == ['ground truth', 'prediction', "person's left",
                                    "person's right", 'centre']
  dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == '--']
  assert dashed and all(l.get_color() == viz.GT_COLOR for l in dashed)
  fig = viz.plot_prediction_grid(images, preds, gts, scores, SKELETON, best_and_worst=1,
                                 score_name='PCK')
  assert [ax.get_title() for ax in fig.axes] == ['best: PCK 1.00', 'worst: PCK -5.00']
  # Images on demand: only the six shown are loaded.
  loaded = []
  fig = viz.plot_prediction_grid(lambda i: loaded.append(i) or images[i], preds, gts,
                                 scores, SKELETON, best_and_worst=3)
  assert sorted(loaded) == [0, 1, 2, 4, 5, 6]
  with pytest.raises(ValueError, match='same number of examples'):
    viz.plot_prediction_grid(images, preds[:3], gts, scores, SKELETON)


def test_save_eval_figures_writes_every_figure_into_workdir(tmp_path, monkeypatch):
  image, joints = _image(64, 64), _pose(64, 64)
  n = 4
  written = viz.save_eval_figures(
      str(tmp_path), SKELETON, tag='lsp_test',
      images=[image] * n, preds=np.stack([joints] * n), gts=np.stack([joints] * n),
      visible=np.ones((n, 14)), scores=np.arange(n), ids=[str(i) for i in range(n)],
      pck_alphas=np.linspace(0, 0.5, 6), pck_values_by_model={'hg': np.linspace(0, 1, 6)},
      heatmap_example=(image, [_gaussians(joints, 64, 4, s) for s in (3., 1.5)], joints),
      model_name='hourglass')
  assert sorted(written) == ['best_worst', 'joint_heatmaps', 'pck_curve',
                             'stage_refinement']
  for name, path in written.items():
    assert path == str(tmp_path / 'figures' / f'lsp_test_{name}.png')
    assert _read(path).var() > 0
  # The run and step reach the PCK curve's title.
  drawn = []
  monkeypatch.setattr(viz.evaluation, 'plot_pck_curve',
                      lambda *a, **k: drawn.append(k) or mpl_figure.Figure())
  viz.save_eval_figures(str(tmp_path / 'c'), SKELETON, tag='t', pck_alphas=[0, 0.5],
                        pck_values_by_model={'hg': [0, 1]}, metric_name='PCKh',
                        run_name='lsp_hg', step=300, mark_alpha=0.3)
  assert drawn == [dict(metric_name='PCKh', path=str(tmp_path / 'c/figures/t_pck_curve.png'),
                        mark_alpha=0.3, run_name='lsp_hg', step=300)]
  # Only what the inputs allow: a single-stage model has no refinement figure.
  only = viz.save_eval_figures(str(tmp_path / 'b'), SKELETON, tag='t',
                               heatmap_example=(image, [_gaussians(joints, 64, 4)], None))
  assert sorted(only) == ['joint_heatmaps']


def test_no_pyplot_and_no_backend_change():
  backend = matplotlib.get_backend() if 'matplotlib.pyplot' in sys.modules else None
  viz.plot_pck_curve([0, 1], {'a': [0, 1]})
  viz.plot_skeleton(_image(), _pose(), SKELETON)
  if backend is None:
    assert 'matplotlib.pyplot' not in sys.modules
  else:  # Another test imported pyplot: its figure registry stays empty of ours.
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    assert matplotlib.get_backend() == backend and not plt.get_fignums()
