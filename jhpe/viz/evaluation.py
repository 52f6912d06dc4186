"""Evaluation figures: the PCK curve, the best/worst prediction grid, and
`save_eval_figures`, which writes them (and the heatmap figures) into a workdir."""

import os

from matplotlib import figure as mpl_figure
import numpy as np

from jhpe.viz.common import FIGURE2_JOINTS
from jhpe.viz.common import GT_COLOR
from jhpe.viz.common import HEADLINE_ALPHA
from jhpe.viz.common import _close
from jhpe.viz.common import _figure_legend
from jhpe.viz.common import _gt_handle
from jhpe.viz.common import _maybe_save
from jhpe.viz.common import _new_figure
from jhpe.viz.common import _pred_handle
from jhpe.viz.common import _show_image
from jhpe.viz.common import _side_handles
from jhpe.viz.common import draw_skeleton
from jhpe.viz.common import limb_color
from jhpe.viz.heatmaps import plot_joint_heatmaps
from jhpe.viz.heatmaps import plot_stage_refinement


def _run_title(run_name, step):
  """'lsp_hourglass, step 14000' from whichever of the two is given ('' for neither)."""
  return ', '.join(x for x in (run_name, None if step is None else f'step {step}') if x)


def _value_at(alphas, values, alpha):
  """The curve's value at `alpha`, linear between samples (NaN next to a NaN sample)."""
  order = np.argsort(alphas)
  return float(np.interp(alpha, alphas[order], values[order]))


def _within(alphas, alpha):
  # float32 alphas: 0.7 is stored as 0.69999999, and a mark at 0.7 is still inside.
  return bool(alphas.size) and alphas.min() - 1e-6 <= alpha <= alphas.max() + 1e-6


def plot_pck_curve(alphas, pck_values_by_model, *, metric_name='PCK', path=None,
                   mark_alpha=None, run_name=None, step=None):
  """PCK against the threshold alpha, one line per model.

  Args:
    alphas: (A,) thresholds (fractions of the normaliser, e.g. the torso size).
    pck_values_by_model: {model name: (A,) PCK values}, fractions in [0, 1] or percentages.
    metric_name: the y label ('PCK', 'PCKh').
    path: where to write the PNG, if given.
    mark_alpha: the headline threshold, marked by a vertical line with each model's value
      there; None takes `HEADLINE_ALPHA[metric_name]` (0.2 for PCK, 0.5 for PCKh). No mark
      when it lies outside `alphas`.
    run_name, step: named in the title, when given.

  Returns:
    The Figure.
  """
  alphas = np.asarray(alphas, np.float32).reshape(-1)
  curves = {}
  for name, values in pck_values_by_model.items():
    values = np.asarray(values, np.float32).reshape(-1)
    if values.shape != alphas.shape:
      raise ValueError(f'PCK values of {name!r} must have shape {alphas.shape} like '
                       f'alphas, got {values.shape}')
    curves[name] = values
  fig = mpl_figure.Figure(figsize=(5, 4), layout='constrained')
  ax = fig.subplots()
  # Fractions never exceed 1, so anything above is a percentage.
  percent = any(np.nanmax(v, initial=0) > 1 + 1e-6 for v in curves.values())
  colored = [(ax.plot(alphas, values, label=name, linewidth=2)[0].get_color(), values)
             for name, values in curves.items()]
  if mark_alpha is None:
    mark_alpha = HEADLINE_ALPHA.get(metric_name, HEADLINE_ALPHA['PCK'])
  if _within(alphas, mark_alpha):
    _mark_threshold(ax, alphas, colored, mark_alpha, metric_name, percent)
  ax.set_xlabel('threshold alpha (fraction of the normaliser)')
  ax.set_ylabel(f'{metric_name} (%)' if percent else metric_name)
  ax.set_ylim(0, 102 if percent else 1.02)
  ax.grid(True, alpha=0.3)
  ax.set_title(': '.join(x for x in (f'{metric_name} curve', _run_title(run_name, step))
                         if x), fontsize=10)
  if curves:
    ax.legend(loc='upper left')  # A rising curve leaves it empty; the bottom has the mark.
  return _maybe_save(fig, path)


def _mark_threshold(ax, alphas, colored, mark_alpha, metric_name, percent):
  """A vertical line at `mark_alpha` and each curve's value there, in the curve's colour.

  `colored` holds (colour, (A,) values) for each curve.
  """
  # Labels go on the side of the line with more room (PCKh@0.5 is often the last alpha).
  room_right = mark_alpha <= (alphas.min() + alphas.max()) / 2
  ha, dx = ('left', 6) if room_right else ('right', -6)
  ax.axvline(mark_alpha, color='0.3', linestyle=':', linewidth=1.2, zorder=1)
  # At the bottom, where a rising curve is not at the headline threshold.
  ax.annotate(f'{metric_name}@{mark_alpha:g}', (mark_alpha, 0.02), xytext=(dx / 2, 0),
              textcoords='offset points', xycoords=ax.get_xaxis_transform(), ha=ha,
              va='bottom', color='0.3', fontsize=8)
  for color, values in colored:
    value = _value_at(alphas, values, mark_alpha)
    if not np.isfinite(value):
      continue
    shown = value if percent else 100 * value
    ax.plot([mark_alpha], [value], 'o', color=color, markersize=5, zorder=3)
    ax.annotate(f'{shown:.1f}%', (mark_alpha, value), xytext=(dx, -4),
                textcoords='offset points', ha=ha, va='top', fontsize=8, color=color,
                fontweight='bold')


def plot_prediction_grid(images, preds, gts, scores, skeleton, best_and_worst=4, *,
                         visible=None, titles=None, path=None, score_name=None):
  """The `best_and_worst` best (top row) and worst (bottom row) predictions.

  Predictions are drawn as the solid skeleton coloured by side, ground truth as a dashed
  white skeleton under it; a legend under the grid says so.

  Args:
    images: sequence of N images (H_i, W_i, 3) (sizes may differ), or a function
      index -> image, so that a large split only loads the 2 x `best_and_worst` shown.
    preds: (N, J, 2) predictions in each image's pixels.
    gts: (N, J, 2) ground truth (joints with visible <= 0 are not drawn).
    scores: (N,) per-example score, higher is better (e.g. the per-example PCK).
    skeleton: the `Skeleton`.
    best_and_worst: how many of each to show (fewer if N is small).
    visible: optional (N, J) ground-truth mask.
    titles: optional N strings (e.g. example ids) shown with the score.
    path: where to write the PNG, if given.
    score_name: what the score is (e.g. 'PCK'), written before it in each title.

  Returns:
    The Figure.
  """
  preds = np.asarray(preds, np.float32)
  gts = np.asarray(gts, np.float32)
  scores = np.asarray(scores, np.float32).reshape(-1)
  n = preds.shape[0]
  if gts.shape[0] != n or scores.shape[0] != n or (not callable(images)
                                                    and len(images) != n):
    raise ValueError(f'images ({"callable" if callable(images) else len(images)}), preds '
                     f'{preds.shape}, gts {gts.shape} and scores {scores.shape} must have '
                     f'the same number of examples')
  image_of = images if callable(images) else images.__getitem__
  if n == 0:
    raise ValueError('plot_prediction_grid needs at least one example')
  vis = np.ones(gts.shape[:2]) if visible is None else np.asarray(visible)
  order = np.argsort(-scores, kind='stable')
  k = max(1, min(best_and_worst, n // 2))  # The two rows never share an example.
  rows = [('best', order[:k]), ('worst', order[::-1][:k])]
  fig, axes = _new_figure(k, nrows=2)
  for r, (label, picked) in enumerate(rows):
    for c in range(k):
      ax = axes[r, c]
      if c >= len(picked):
        ax.set_axis_off()
        continue
      i = int(picked[c])
      _show_image(ax, image_of(i))
      # Ground truth under the prediction: where they agree the prediction hides it.
      draw_skeleton(ax, gts[i], skeleton, vis[i], color=GT_COLOR, linestyle='--',
                    linewidth=1.2, markersize=3, joint_color=GT_COLOR)
      draw_skeleton(ax, preds[i], skeleton, linewidth=2.0, markersize=2.5)
      name = f'{titles[i]} ' if titles is not None else ''
      score = f'{score_name} ' if score_name else ''
      ax.set_title(f'{label}: {name}{score}{scores[i]:.2f}', fontsize=8)
  colors = {limb_color(skeleton, l) for l in skeleton.limbs}
  _figure_legend(fig, [_gt_handle(), _pred_handle()] + _side_handles(colors))
  return _maybe_save(fig, path)


def save_eval_figures(workdir, skeleton, *, tag, images=None, preds=None, gts=None,
                      visible=None, scores=None, ids=None, pck_alphas=None,
                      pck_values_by_model=None, heatmap_example=None,
                      stage_joint='left_wrist', model_name=None, best_and_worst=4,
                      metric_name='PCK', run_name=None, step=None, mark_alpha=None):
  """Writes evaluation figures into `workdir/figures/`; each one only if its inputs are given.

  Args:
    workdir: the training workdir.
    skeleton: the dataset's `Skeleton`.
    tag: prefix of the file names, e.g. 'lsp_test'.
    images, preds, gts, visible, scores, ids: for the best/worst grid: N original images
      (or a function index -> image, see `plot_prediction_grid`),
      (N, J, 2) predictions and ground truth in original pixels, (N, J) visibility,
      (N,) per-example score (higher is better), optional N ids.
    pck_alphas, pck_values_by_model: (A,) thresholds and {name: (A,) values} for the curve.
    heatmap_example: optional (canvas (S, S, 3), stage_heatmaps list over stages of
      (h, w, K), canvas_joints (J, 2) or None) for one example: gives the per-joint heatmap
      figure (last stage) and, with more than one stage, the stage refinement figure.
    stage_joint: the joint shown in the stage refinement figure.
    model_name: for titles.
    best_and_worst: examples in each row of the grid.
    metric_name: 'PCK' or 'PCKh': the curve's y label and the grid's score name.
    run_name, step: the run (e.g. the workdir's name) and checkpoint step, for the PCK
      curve's title.
    mark_alpha: the threshold marked on the PCK curve (None: 0.2 for PCK, 0.5 for PCKh).

  Returns:
    {figure name: path written}.
  """
  out_dir = os.path.join(workdir, 'figures')
  written = {}

  def _path(name):
    return os.path.join(out_dir, f'{tag}_{name}.png')

  if images is not None and preds is not None and gts is not None and scores is not None:
    written['best_worst'] = _path('best_worst')
    _close(plot_prediction_grid(images, preds, gts, scores, skeleton, best_and_worst,
                                visible=visible, titles=ids, path=written['best_worst'],
                                score_name=metric_name))
  if pck_alphas is not None and pck_values_by_model:
    written['pck_curve'] = _path('pck_curve')
    _close(plot_pck_curve(pck_alphas, pck_values_by_model, metric_name=metric_name,
                          path=written['pck_curve'], mark_alpha=mark_alpha,
                          run_name=run_name, step=step))
  if heatmap_example is not None:
    canvas, stage_heatmaps, canvas_joints = heatmap_example
    stage_heatmaps = list(stage_heatmaps)
    written['joint_heatmaps'] = _path('joint_heatmaps')
    # Figure 2's joints where the skeleton has them (MPII says upper_neck, COCO has none).
    names = [n for n in FIGURE2_JOINTS if n in skeleton.joint_names]
    names = names or skeleton.joint_names[:5]
    _close(plot_joint_heatmaps(canvas, stage_heatmaps[-1], skeleton, names,
                               predictions=canvas_joints, path=written['joint_heatmaps']))
    if len(stage_heatmaps) > 1:
      j = (skeleton.index(stage_joint) if stage_joint in skeleton.joint_names else 0)
      written['stage_refinement'] = _path('stage_refinement')
      _close(plot_stage_refinement(canvas, stage_heatmaps, j,
                                   joint_name=skeleton.joint_names[j],
                                   model_name=model_name,
                                   path=written['stage_refinement']))
  return written

