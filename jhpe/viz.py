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
`RIGHT_COLOR`, and limbs along the midline (neck to head) in `CENTER_COLOR`.
"""

import os

from matplotlib import figure as mpl_figure
import numpy as np

LEFT_COLOR = (0.0, 0.45, 1.0)  # Blue.
RIGHT_COLOR = (1.0, 0.3, 0.0)  # Orange-red.
CENTER_COLOR = (0.1, 0.85, 0.2)  # Green.
GT_COLOR = (1.0, 1.0, 1.0)  # White: ground-truth markers in the prediction grid.

# The seed's Figure 2 shows these five joints' heatmaps.
FIGURE2_JOINTS = ('neck', 'left_elbow', 'left_wrist', 'right_knee', 'right_ankle')


def _new_figure(ncols, nrows=1, panel_inches=2.5):
  fig = mpl_figure.Figure(figsize=(panel_inches * ncols, panel_inches * nrows),
                          layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False)
  return fig, axes


def _maybe_save(fig, path, dpi=100):
  if path is not None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
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


def limb_color(skeleton, limb):
  """Colour of `limb` (a pair of joint indices): left, right or midline."""
  left, right = set(skeleton.left_joints), set(skeleton.right_joints)
  a, b = (int(j) for j in limb)
  if a in left or b in left:
    return LEFT_COLOR
  if a in right or b in right:
    return RIGHT_COLOR
  return CENTER_COLOR


def draw_skeleton(ax, joints, skeleton, visible=None, *, linewidth=2.5, markersize=4.0,
                  joint_color='yellow'):
  """Draws the skeleton's limbs and joints on `ax`.

  Args:
    ax: a matplotlib Axes (already showing the image, if any).
    joints: (J, 2) joint positions (x, y) in the axes' pixel coordinates.
    skeleton: a `jhpe.skeletons.Skeleton`; its limbs are drawn, coloured by side.
    visible: optional (J,) mask; limbs touching a joint with visible <= 0 are skipped.
    linewidth, markersize, joint_color: line and marker styles.

  Returns:
    `ax`.
  """
  joints = np.asarray(joints, np.float32)
  if joints.shape != (skeleton.num_joints, 2):
    raise ValueError(f'joints must have shape ({skeleton.num_joints}, 2) for the '
                     f'{skeleton.name} skeleton, got {joints.shape}')
  shown = (np.ones(len(joints), bool) if visible is None
           else np.asarray(visible).reshape(-1) > 0)
  for a, b in skeleton.limbs:
    if shown[a] and shown[b]:
      ax.plot(joints[[a, b], 0], joints[[a, b], 1], color=limb_color(skeleton, (a, b)),
              linewidth=linewidth, solid_capstyle='round')
  ax.plot(joints[shown, 0], joints[shown, 1], 'o', color=joint_color,
          markersize=markersize, markeredgewidth=0)
  return ax


def plot_skeleton(image, joints, skeleton, visible=None, *, title=None, path=None,
                  min_inches=4.0):
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

  Returns:
    The Figure.
  """
  h, w = np.asarray(image).shape[:2]
  zoom = min_inches / min(h, w)
  fig = mpl_figure.Figure(figsize=(w * zoom, h * zoom))
  ax = fig.add_axes((0, 0, 1, 1))
  _show_image(ax, image)
  draw_skeleton(ax, joints, skeleton, visible)
  if title:
    ax.text(0.02, 0.98, title, transform=ax.transAxes, va='top', color='white',
            fontsize=9, bbox=dict(facecolor='black', alpha=0.5, linewidth=0))
  return _maybe_save(fig, path)


def plot_joint_heatmaps(image, heatmaps, skeleton, joints=FIGURE2_JOINTS, *,
                        predictions=None, path=None):
  """Per-joint heatmaps over the image (the seed's Figure 2).

  Args:
    image: (S, S, 3) canvas the heatmaps were computed from (any H, W works).
    heatmaps: (h, w, K) one example's heatmaps, K >= J (a CPM background channel after the
      J joints is ignored); h, w = image size / stride.
    skeleton: the `Skeleton` naming the channels.
    joints: names of the joints to show, one panel each after the image.
    predictions: optional (J, 2) joints in image pixels; the first panel draws the skeleton.
    path: where to write the PNG, if given.

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
  if predictions is not None:
    draw_skeleton(axes[0, 0], predictions, skeleton)
  axes[0, 0].set_title('image', fontsize=9)
  h, w = np.asarray(image).shape[:2]
  for ax, name, j in zip(axes[0, 1:], joints, indices):
    _show_image(ax, image)
    ax.imshow(heatmaps[..., j], extent=(-0.5, w - 0.5, h - 0.5, -0.5), cmap='jet',
              alpha=0.55, interpolation='bilinear')
    ax.set_title(name.replace('_', ' '), fontsize=9)
  return _maybe_save(fig, path)


def plot_stage_refinement(image, stage_heatmaps, joint_index, *, joint_name=None,
                          model_name=None, path=None):
  """One joint's heatmap after each stage (the seed's Figure 4), for CPM or hourglass.

  Args:
    image: (S, S, 3) canvas.
    stage_heatmaps: sequence over stages of (h, w, K) heatmaps for this one example.
    joint_index: the channel to show.
    joint_name: its name, for the title.
    model_name: e.g. 'cpm' or 'hourglass', for the title.
    path: where to write the PNG, if given.

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
  h, w = np.asarray(image).shape[:2]
  # One colour scale for all stages, so the sharpening from stage to stage is visible.
  vmax = max(float(s[..., joint_index].max()) for s in stages)
  vmin = min(float(s[..., joint_index].min()) for s in stages)
  for t, (ax, s) in enumerate(zip(axes[0], stages)):
    _show_image(ax, image)
    ax.imshow(s[..., joint_index], extent=(-0.5, w - 0.5, h - 0.5, -0.5), cmap='jet',
              alpha=0.55, vmin=vmin, vmax=vmax, interpolation='bilinear')
    ax.set_title(f'stage {t + 1}', fontsize=9)
  fig.suptitle(' '.join(x for x in (model_name, joint_name or f'joint {joint_index}') if x),
               fontsize=10)
  return _maybe_save(fig, path)


def plot_pck_curve(alphas, pck_values_by_model, *, metric_name='PCK', path=None):
  """PCK against the threshold alpha, one line per model.

  Args:
    alphas: (A,) thresholds (fractions of the normaliser, e.g. the torso size).
    pck_values_by_model: {model name: (A,) PCK values}, fractions in [0, 1] or percentages.
    metric_name: the y label ('PCK', 'PCKh').
    path: where to write the PNG, if given.

  Returns:
    The Figure.
  """
  alphas = np.asarray(alphas, np.float32).reshape(-1)
  fig = mpl_figure.Figure(figsize=(5, 4), layout='constrained')
  ax = fig.subplots()
  for name, values in pck_values_by_model.items():
    values = np.asarray(values, np.float32).reshape(-1)
    if values.shape != alphas.shape:
      raise ValueError(f'PCK values of {name!r} must have shape {alphas.shape} like '
                       f'alphas, got {values.shape}')
    ax.plot(alphas, values, label=name, linewidth=2)
  ax.set_xlabel('alpha (fraction of the normaliser)')
  ax.set_ylabel(metric_name)
  ax.grid(True, alpha=0.3)
  if pck_values_by_model:
    ax.legend()
  return _maybe_save(fig, path)


def plot_prediction_grid(images, preds, gts, scores, skeleton, best_and_worst=4, *,
                         visible=None, titles=None, path=None):
  """The `best_and_worst` best (top row) and worst (bottom row) predictions.

  Args:
    images: sequence of N images (H_i, W_i, 3) (sizes may differ), or a function
      index -> image, so that a large split only loads the 2 x `best_and_worst` shown.
    preds: (N, J, 2) predictions in each image's pixels.
    gts: (N, J, 2) ground truth, drawn as white dots (joints with visible <= 0 are not).
    scores: (N,) per-example score, higher is better (e.g. the per-example PCK).
    skeleton: the `Skeleton`.
    best_and_worst: how many of each to show (fewer if N is small).
    visible: optional (N, J) ground-truth mask.
    titles: optional N strings (e.g. example ids) shown with the score.
    path: where to write the PNG, if given.

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
      shown = vis[i] > 0
      ax.plot(gts[i, shown, 0], gts[i, shown, 1], 'o', color=GT_COLOR, markersize=3,
              markeredgewidth=0)
      draw_skeleton(ax, preds[i], skeleton, linewidth=2.0, markersize=2.5)
      name = f'{titles[i]} ' if titles is not None else ''
      ax.set_title(f'{label}: {name}{scores[i]:.2f}', fontsize=8)
  return _maybe_save(fig, path)


def save_eval_figures(workdir, skeleton, *, tag, images=None, preds=None, gts=None,
                      visible=None, scores=None, ids=None, pck_alphas=None,
                      pck_values_by_model=None, heatmap_example=None,
                      stage_joint='left_wrist', model_name=None, best_and_worst=4,
                      metric_name='PCK'):
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
    metric_name: 'PCK' or 'PCKh', the curve's y label.

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
                                visible=visible, titles=ids, path=written['best_worst']))
  if pck_alphas is not None and pck_values_by_model:
    written['pck_curve'] = _path('pck_curve')
    _close(plot_pck_curve(pck_alphas, pck_values_by_model, metric_name=metric_name,
                          path=written['pck_curve']))
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
