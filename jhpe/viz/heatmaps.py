"""Heatmap figures: per-joint heatmaps over the canvas (the seed's Figure 2) and one joint's
heatmap stage by stage, every panel of a figure on one colour scale with a colour bar."""

from matplotlib import cm
from matplotlib import colors as mpl_colors
import numpy as np

from jhpe.viz.common import FIGURE2_JOINTS
from jhpe.viz.common import HEATMAP_CMAP
from jhpe.viz.common import _figure_legend
from jhpe.viz.common import _maybe_save
from jhpe.viz.common import _new_figure
from jhpe.viz.common import _pred_handle
from jhpe.viz.common import _show_image
from jhpe.viz.common import _side_handles
from jhpe.viz.common import draw_skeleton
from jhpe.viz.common import joint_label
from jhpe.viz.common import limb_color


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

