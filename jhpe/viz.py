"""Figures: skeletons over images, per-joint heatmaps, stage refinement, PCK curves.

Every function builds a `matplotlib.figure.Figure` directly (no `pyplot`), so nothing
touches matplotlib's global state: no backend switch, no figure registry that leaks memory
in a long evaluation loop, safe in threads and on headless machines. Saving a PNG goes
through the Agg canvas that `Figure.savefig` picks for the file type. Each plotting
function returns the Figure and, given `path`, also writes it there.

Coordinates follow docs/design.md: (x, y) with pixel centres at integers, so an image of
width W spans [-0.5, W - 0.5] on the x axis; heatmaps of stride s cover exactly the canvas
they were computed from, so they are drawn over the canvas with the canvas's extent.

Colours: limbs on the person's left are drawn in `LEFT_COLOR`, on the right in
`RIGHT_COLOR`, and limbs on the midline or across it (neck to head, hip to hip) in
`CENTER_COLOR`. Predictions are solid lines with yellow joints, ground truth dashed white
lines with white joints; every skeleton figure carries a legend that says so.

Heatmap panels of one figure share one colour scale, shown by a colour bar, so that panels
can be compared. Joint names are written one way everywhere: `joint_label`.
"""

import io
import os

from matplotlib import cm
from matplotlib import colors as mpl_colors
from matplotlib import figure as mpl_figure
from matplotlib import lines as mpl_lines
import numpy as np

from jhpe import files

LEFT_COLOR = (0.0, 0.45, 1.0)  # Blue.
RIGHT_COLOR = (1.0, 0.3, 0.0)  # Orange-red.
CENTER_COLOR = (0.1, 0.85, 0.2)  # Green.
GT_COLOR = (1.0, 1.0, 1.0)  # White: ground truth in the prediction grid.
PRED_JOINT_COLOR = 'yellow'
HEATMAP_CMAP = 'jet'
# Person-centric: on a person facing the camera their left is the image's right, so the
# legend says whose left it means.
SIDE_LABELS = ((LEFT_COLOR, "person's left"), (RIGHT_COLOR, "person's right"),
               (CENTER_COLOR, 'centre'))
# The threshold each metric is quoted at (LSP's PCK@0.2, MPII's PCKh@0.5).
HEADLINE_ALPHA = {'PCK': 0.2, 'PCKh': 0.5}

# The seed's Figure 2 shows these five joints' heatmaps.
FIGURE2_JOINTS = ('neck', 'left_elbow', 'left_wrist', 'right_knee', 'right_ankle')


def _new_figure(ncols, nrows=1, panel_inches=2.5):
  fig = mpl_figure.Figure(figsize=(panel_inches * ncols, panel_inches * nrows),
                          layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False)
  return fig, axes


def _maybe_save(fig, path, dpi=100):
  if path is not None:
    # Rendered in memory, then written atomically: never through a link at `path`.
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=os.path.splitext(path)[1][1:].lower() or 'png')
    files.write_atomic(path, buf.getvalue())
  return fig


def _show_image(ax, image):
  """Draws an (H, W, 3) or (H, W) image with pixel centres at integer coordinates."""
  image = np.asarray(image)
  h, w = image.shape[:2]
  ax.imshow(image, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            cmap='gray' if image.ndim == 2 else None, interpolation='nearest')
  ax.set_xlim(-0.5, w - 0.5)
  ax.set_ylim(h - 0.5, -0.5)
  ax.set_axis_off()


def joint_label(name):
  """The one way figures write a joint's name: 'left_wrist' (or 'l_wrist') -> 'left wrist'."""
  words = [w for w in str(name).lower().replace('-', '_').split('_') if w]
  if len(words) > 1 and words[0] in ('l', 'r'):
    words[0] = 'left' if words[0] == 'l' else 'right'
  return ' '.join(words)


def limb_color(skeleton, limb):
  """Colour of `limb` (a pair of joint indices): left, right or midline.

  A limb is on one side if one end is on that side and the other is not on the other side
  (neck to left shoulder is left); a limb across the body (hip to hip) is midline, like
  neck to head.
  """
  side = {j: LEFT_COLOR for j in skeleton.left_joints}
  side.update({j: RIGHT_COLOR for j in skeleton.right_joints})
  sides = {side.get(int(j), CENTER_COLOR) for j in limb} - {CENTER_COLOR}
  return sides.pop() if len(sides) == 1 else CENTER_COLOR


def _visible_limbs(skeleton, shown):
  return [(a, b) for a, b in skeleton.limbs if shown[a] and shown[b]]


def _shown_mask(visible, num_joints):
  if visible is None:
    return np.ones(num_joints, bool)
  return np.asarray(visible).reshape(-1) > 0


def draw_skeleton(ax, joints, skeleton, visible=None, *, linewidth=2.5, markersize=4.0,
                  joint_color=PRED_JOINT_COLOR, color=None, linestyle='-'):
  """Draws the skeleton's limbs and joints on `ax`.

  Args:
    ax: a matplotlib Axes (already showing the image, if any).
    joints: (J, 2) joint positions (x, y) in the axes' pixel coordinates.
    skeleton: a `jhpe.skeletons.Skeleton`; its limbs are drawn, coloured by side.
    visible: optional (J,) mask; limbs touching a joint with visible <= 0 are skipped.
    linewidth, markersize, joint_color, linestyle: line and marker styles.
    color: one colour for every limb (e.g. `GT_COLOR`); None colours them by side.

  Returns:
    `ax`.
  """
  joints = np.asarray(joints, np.float32)
  if joints.shape != (skeleton.num_joints, 2):
    raise ValueError(f'joints must have shape ({skeleton.num_joints}, 2) for the '
                     f'{skeleton.name} skeleton, got {joints.shape}')
  shown = _shown_mask(visible, len(joints))
  for a, b in _visible_limbs(skeleton, shown):
    ax.plot(joints[[a, b], 0], joints[[a, b], 1],
            color=color or limb_color(skeleton, (a, b)), linewidth=linewidth,
            linestyle=linestyle, solid_capstyle='round', dash_capstyle='round')
  ax.plot(joints[shown, 0], joints[shown, 1], 'o', color=joint_color,
          markersize=markersize, markeredgewidth=0)
  return ax


def _pred_handle(label='prediction'):
  # Light grey stands for "coloured by side"; the side entries give the colours.
  return mpl_lines.Line2D([], [], color='0.85', linewidth=2.5, marker='o', markersize=5,
                          markerfacecolor=PRED_JOINT_COLOR, markeredgewidth=0,
                          label=label)


def _gt_handle():
  return mpl_lines.Line2D([], [], color=GT_COLOR, linewidth=1.5, linestyle='--',
                          marker='o', markersize=4, markeredgewidth=0,
                          label='ground truth')


def _side_handles(colors):
  """Legend entries of the limb colours in `colors`, always in the order left, right, centre."""
  return [mpl_lines.Line2D([], [], color=c, linewidth=3, label=label)
          for c, label in SIDE_LABELS if c in colors]


def _figure_legend(fig, handles, fontsize=8):
  """Legend entries under the panels, on a dark ground so white shows.

  One row where the figure is wide enough (about an inch an entry), else several, so a
  narrow grid (few examples) does not cut the legend off.
  """
  if not handles:
    return None
  ncols = max(1, min(len(handles), int(fig.get_figwidth() / (fontsize / 7.5))))
  return fig.legend(handles=handles, loc='outside lower center', ncols=ncols,
                    fontsize=fontsize, facecolor='0.2', edgecolor='none', framealpha=1.0,
                    labelcolor='white', handlelength=2.5, columnspacing=1.2)


def plot_skeleton(image, joints, skeleton, visible=None, *, title=None, path=None,
                  min_inches=4.0, max_inches=40.0, label='prediction'):
  """One image with the skeleton drawn over it (the predict CLI's overlay).

  Args:
    image: (H, W, 3) uint8 image.
    joints: (J, 2) joints in the image's pixels.
    skeleton: the `Skeleton` of `joints`.
    visible: optional (J,) mask.
    title: optional title.
    path: where to write the PNG, if given.
    min_inches: the shorter side of the figure; small images (LSP's are ~150 px) are
      enlarged so the limbs stay readable.
    max_inches: the longer side at most (4000 px at 100 dpi): a 1x5000 image enlarged to
      `min_inches` would need a canvas of GiBs.
    label: what the skeleton is, first entry of the legend; None leaves it out. The legend
      (under the image, so it hides nothing) also names the sides drawn.

  Returns:
    The Figure.
  """
  h, w = np.asarray(image).shape[:2]
  zoom = min(min_inches / min(h, w), max_inches / max(h, w))
  shown = _shown_mask(visible, skeleton.num_joints)
  colors = {limb_color(skeleton, l) for l in _visible_limbs(skeleton, shown)}
  handles = ([_pred_handle(label)] if label and colors else []) + _side_handles(colors)
  strip = 0.45 if handles else 0.0  # Inches under the image for the legend.
  fig = mpl_figure.Figure(figsize=(max(w * zoom, 0.1), max(h * zoom + strip, 0.1)))
  ax = fig.add_axes((0, strip / (h * zoom + strip), 1, h * zoom / (h * zoom + strip)))
  _show_image(ax, image)
  draw_skeleton(ax, joints, skeleton, visible)
  if handles:
    fig.legend(handles=handles, loc='lower center', ncols=len(handles), fontsize=7,
               facecolor='0.2', edgecolor='none', framealpha=1.0, labelcolor='white',
               handlelength=1.8, columnspacing=1.0, borderaxespad=0.3)
  if title:
    ax.text(0.02, 0.98, title, transform=ax.transAxes, va='top', color='white',
            fontsize=9, bbox=dict(facecolor='black', alpha=0.5, linewidth=0))
  return _maybe_save(fig, path)


def _common_scale(maps, vmin=None, vmax=None):
  """(vmin, vmax) covering every map, unless given; never an empty range."""
  vmin = min(float(np.nanmin(m)) for m in maps) if vmin is None else float(vmin)
  vmax = max(float(np.nanmax(m)) for m in maps) if vmax is None else float(vmax)
  if not vmax > vmin:  # Flat (e.g. untrained) maps: any range draws them in one colour.
    vmax = vmin + 1.0
  return vmin, vmax


def _draw_heatmap(ax, image, heatmap, vmin, vmax):
  """The heatmap over the image it was computed from, on the figure's common scale."""
  _show_image(ax, image)
  h, w = np.asarray(image).shape[:2]
  ax.imshow(heatmap, extent=(-0.5, w - 0.5, h - 0.5, -0.5), cmap=HEATMAP_CMAP, alpha=0.55,
            vmin=vmin, vmax=vmax, interpolation='bilinear')


def _colorbar(fig, axes, vmin, vmax):
  # An opaque stand-in for the overlays (drawn at alpha 0.55), so the bar shows the
  # colour map itself rather than the map blended with white.
  mappable = cm.ScalarMappable(norm=mpl_colors.Normalize(vmin, vmax), cmap=HEATMAP_CMAP)
  bar = fig.colorbar(mappable, ax=list(axes), shrink=0.85, pad=0.01, aspect=15)
  bar.set_label('heatmap value', fontsize=8)
  bar.ax.tick_params(labelsize=7)
  return bar


def plot_joint_heatmaps(image, heatmaps, skeleton, joints=FIGURE2_JOINTS, *,
                        predictions=None, path=None, vmin=None, vmax=None):
  """Per-joint heatmaps over the image (the seed's Figure 2).

  Args:
    image: (S, S, 3) canvas the heatmaps were computed from (any H, W works).
    heatmaps: (h, w, K) one example's heatmaps, K >= J (a CPM background channel after the
      J joints is ignored); h, w = image size / stride.
    skeleton: the `Skeleton` naming the channels.
    joints: names of the joints to show, one panel each after the image.
    predictions: optional (J, 2) joints in image pixels; the first panel draws the skeleton.
    path: where to write the PNG, if given.
    vmin, vmax: the colour scale of every panel; by default the range of the shown maps.

  Returns:
    The Figure.
  """
  heatmaps = np.asarray(heatmaps, np.float32)
  if heatmaps.ndim != 3 or heatmaps.shape[-1] < skeleton.num_joints:
    raise ValueError(f'heatmaps must have shape (h, w, K >= {skeleton.num_joints}), got '
                     f'{heatmaps.shape}')
  indices = [skeleton.index(name) for name in joints]
  fig, axes = _new_figure(len(indices) + 1)
  _show_image(axes[0, 0], image)
  axes[0, 0].set_title('image' if predictions is None else 'prediction', fontsize=9)
  if predictions is not None:
    draw_skeleton(axes[0, 0], predictions, skeleton)
    colors = {limb_color(skeleton, l) for l in skeleton.limbs}
    _figure_legend(fig, [_pred_handle()] + _side_handles(colors), fontsize=7)
  # One colour scale for all panels, so a weak peak looks weak next to a strong one.
  vmin, vmax = _common_scale([heatmaps[..., j] for j in indices], vmin, vmax)
  for ax, name, j in zip(axes[0, 1:], joints, indices):
    _draw_heatmap(ax, image, heatmaps[..., j], vmin, vmax)
    ax.set_title(joint_label(name), fontsize=9)
  if indices:  # Beside all panels: beside the heatmaps only, it unbalances the row.
    _colorbar(fig, axes[0], vmin, vmax)
  return _maybe_save(fig, path)


def plot_stage_refinement(image, stage_heatmaps, joint_index, *, joint_name=None,
                          model_name=None, path=None, vmin=None, vmax=None):
  """One joint's heatmap after each stage (the seed's Figure 4), for CPM or hourglass.

  Args:
    image: (S, S, 3) canvas.
    stage_heatmaps: sequence over stages of (h, w, K) heatmaps for this one example.
    joint_index: the channel to show.
    joint_name: its name, for the title.
    model_name: e.g. 'cpm' or 'hourglass', for the title.
    path: where to write the PNG, if given.
    vmin, vmax: the colour scale of every panel; by default the range over the stages.

  Returns:
    The Figure.
  """
  stages = [np.asarray(s, np.float32) for s in stage_heatmaps]
  if not stages or any(s.ndim != 3 for s in stages):
    raise ValueError('stage_heatmaps must be a non-empty sequence of (h, w, K) arrays, got '
                     f'{[s.shape for s in stages]}')
  if not 0 <= joint_index < stages[0].shape[-1]:
    raise ValueError(f'joint_index must be in [0, {stages[0].shape[-1]}), got {joint_index}')
  fig, axes = _new_figure(len(stages))
  # One colour scale for all stages, so the sharpening from stage to stage is visible.
  vmin, vmax = _common_scale([s[..., joint_index] for s in stages], vmin, vmax)
  for t, (ax, s) in enumerate(zip(axes[0], stages)):
    _draw_heatmap(ax, image, s[..., joint_index], vmin, vmax)
    ax.set_title(f'stage {t + 1}', fontsize=9)
  _colorbar(fig, axes[0], vmin, vmax)
  joint = joint_label(joint_name) if joint_name else f'joint {joint_index}'
  fig.suptitle(': '.join(x for x in (model_name, joint) if x), fontsize=10)
  return _maybe_save(fig, path)


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


def _close(fig):
  # Figures made without pyplot are freed with their last reference; clearing drops the
  # image buffers right away in long evaluation loops.
  fig.clear()
