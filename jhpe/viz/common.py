"""What every figure shares: the colours, the figure and image helpers, skeleton drawing
and its legend, and the one way joint names are written (`joint_label`)."""

import io
import os

from matplotlib import figure as mpl_figure
from matplotlib import lines as mpl_lines
from matplotlib import patches as mpl_patches
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
                  min_inches=4.0, max_inches=40.0, label='prediction', boxes=None):
  """One image with the skeleton drawn over it (the predict CLI's overlay).

  Args:
    image: (H, W, 3) uint8 image.
    joints: (J, 2) joints in the image's pixels, or (P, J, 2): P people.
    boxes: optional (P, 4) person boxes (x, y, w, h), drawn as thin rectangles.
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
  for person in np.asarray(joints).reshape(-1, skeleton.num_joints, 2):
    draw_skeleton(ax, person, skeleton, visible)
  for x, y, bw, bh in np.asarray(boxes if boxes is not None else [], float).reshape(-1, 4):
    ax.add_patch(mpl_patches.Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False,
                                       edgecolor='white', linewidth=0.8, alpha=0.7))
  if handles:
    fig.legend(handles=handles, loc='lower center', ncols=len(handles), fontsize=7,
               facecolor='0.2', edgecolor='none', framealpha=1.0, labelcolor='white',
               handlelength=1.8, columnspacing=1.0, borderaxespad=0.3)
  if title:
    ax.text(0.02, 0.98, title, transform=ax.transAxes, va='top', color='white',
            fontsize=9, bbox=dict(facecolor='black', alpha=0.5, linewidth=0))
  return _maybe_save(fig, path)



def _close(fig):
  # Figures made without pyplot are freed with their last reference; clearing drops the
  # image buffers right away in long evaluation loops.
  fig.clear()
