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

Modules: `common` (colours, skeleton drawing, legends), `heatmaps` (per-joint and
stage-by-stage heatmap figures), `evaluation` (PCK curve, best/worst grid,
`save_eval_figures`).
"""

# pylint: disable=g-importing-member
from jhpe.viz.common import CENTER_COLOR
from jhpe.viz.common import FIGURE2_JOINTS
from jhpe.viz.common import GT_COLOR
from jhpe.viz.common import HEADLINE_ALPHA
from jhpe.viz.common import HEATMAP_CMAP
from jhpe.viz.common import LEFT_COLOR
from jhpe.viz.common import PRED_JOINT_COLOR
from jhpe.viz.common import RIGHT_COLOR
from jhpe.viz.common import SIDE_LABELS
from jhpe.viz.common import draw_skeleton
from jhpe.viz.common import joint_label
from jhpe.viz.common import limb_color
from jhpe.viz.common import plot_skeleton
from jhpe.viz.evaluation import plot_pck_curve
from jhpe.viz.evaluation import plot_prediction_grid
from jhpe.viz.evaluation import save_eval_figures
from jhpe.viz.heatmaps import plot_joint_heatmaps
from jhpe.viz.heatmaps import plot_stage_refinement
