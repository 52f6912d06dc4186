"""Evaluators: one per metric family, chosen from the dataset's spec.

An evaluator turns a split's predictions (original pixels) into the named values of the
eval JSON: the headline `mean`, `per_joint`, strict `pcp` (where the skeleton defines PCP
parts), `error_types` (where the misses go), `per_stage` and the `pck_curve`.

  PckEvaluator    PCK@0.2 with the dataset's normaliser (the torso: LSP, the synthetic set)
  PckhEvaluator   PCKh@0.5 (MPII; the headline is the mean without pelvis and thorax, as
                  the MPII table)
  OksEvaluator    COCO-style sets: the headline is OKS AP by pycocotools (`jhpe.oks`, run
                  by `jhpe.train.coco_eval`), with ground-truth or detected person boxes;
                  the per-joint table is PCK@0.2 of sqrt(area)
"""

import dataclasses
import math
from typing import Optional

import numpy as np

from jhpe import metrics as metrics_lib

PCK_CURVE_ALPHAS = tuple(np.round(np.linspace(0.0, 0.5, 26), 3).tolist())


def _num(x) -> Optional[float]:
  """A JSON number, None for NaN (a joint nobody annotated)."""
  x = float(x)
  return None if math.isnan(x) else x


@dataclasses.dataclass(frozen=True)
class PckEvaluator:
  """PCK at `alpha` times the per-person normaliser."""
  alpha: float = 0.2
  title: str = "PCK@0.2"  # The eval JSON's `metric`.
  short_name: str = "PCK"  # Figures' axis label.

  def table(self, joints, gt, visible, normaliser, skeleton) -> dict:
    return metrics_lib.pck_table(joints, gt, visible, normaliser, skeleton, self.alpha)

  def headline(self, table: dict) -> float:
    return table["mean"]

  def example_scores(self, joints, gt, visible, normaliser):
    """Per-example fraction of annotated joints within alpha x normaliser (N,)."""
    err = np.linalg.norm(joints - gt, axis=-1)
    hit = (err <= self.alpha * normaliser[:, None]) & (visible > 0)
    return hit.sum(1) / np.maximum((visible > 0).sum(1), 1)

  def score(self, joints, gt, visible, normaliser, skeleton,
            stage_joints=None) -> dict:
    """The eval JSON's metric values.

    Args:
      joints, gt: (N, J, 2) predictions and ground truth, original pixels.
      visible: (N, J) 1 where annotated (and the normaliser defined).
      normaliser: (N,) the metric's person size.
      skeleton: the dataset's `Skeleton`.
      stage_joints: optional (N, T, J, 2) every stage's predictions.
    """
    table = self.table(joints, gt, visible, normaliser, skeleton)
    results = {"metric": self.title, "mean": _num(self.headline(table)),
               "per_joint": {k: _num(v) for k, v in table.items()}}
    if skeleton.pcp_limbs:
      pcp = metrics_lib.pcp(joints, gt, visible, skeleton)
      results["pcp"] = {k: _num(v) for k, v in pcp.items()}
    # Where the misses go: left/right inversions, near misses (jitter), far misses.
    types = metrics_lib.error_types(joints, gt, visible, normaliser, skeleton, self.alpha)
    results["error_types"] = {kind: {k: _num(v) for k, v in t.items()}
                              for kind, t in types.items()}
    if stage_joints is not None:
      # Every stage decoded alike (CPM's beliefs, each hourglass, each cascade stage):
      # does each stage refine the one before? The last entry repeats `mean` and `pcp`.
      results["per_stage"] = [
          {"stage": t + 1, "mean": _num(self.headline(
              self.table(stage_joints[:, t], gt, visible, normaliser, skeleton))),
           **({"pcp": _num(metrics_lib.pcp(stage_joints[:, t], gt, visible,
                                           skeleton)["mean"])}
              if skeleton.pcp_limbs else {})}
          for t in range(stage_joints.shape[1])]
    _, curve = metrics_lib.pck_curve(joints, gt, visible, normaliser,
                                     np.asarray(PCK_CURVE_ALPHAS))
    results["pck_curve"] = {"alphas": list(PCK_CURVE_ALPHAS),
                            "mean": [_num(v) for v in curve]}
    return results


@dataclasses.dataclass(frozen=True)
class PckhEvaluator(PckEvaluator):
  """PCKh: the normaliser is the head size (0.6 x the head box diagonal)."""
  alpha: float = 0.5
  title: str = "PCKh@0.5"
  short_name: str = "PCKh"

  def table(self, joints, gt, visible, normaliser, skeleton) -> dict:
    return metrics_lib.pckh_table(joints, gt, visible, normaliser, skeleton, self.alpha)

  def headline(self, table: dict) -> float:
    return table.get("mean_without_pelvis_thorax", table["mean"])


@dataclasses.dataclass(frozen=True)
class OksEvaluator(PckEvaluator):
  """OKS AP (the headline, `jhpe.train.coco_eval`) beside PCK@0.2 of sqrt(area).

  Attributes (the top-down protocol of SimpleBaselines / HRNet / mmpose, `jhpe.oks`):
    keypoint_threshold: keypoints above it count in the person score.
    nms_threshold: OKS-NMS between a split's poses of one image (>= 1: off).
  """
  keypoint_threshold: float = 0.2
  nms_threshold: float = 0.9


def for_dataset(dataset: str, **oks_options) -> PckEvaluator:
  """The evaluator of a dataset, from its spec's metric and normaliser.

  oks_options: `OksEvaluator` settings (datasets whose metric is 'oks_ap').
  """
  from jhpe import datasets  # pylint: disable=g-import-not-at-top  # Light.
  spec = datasets.get_spec(dataset)
  if spec.metric == "oks_ap":
    return OksEvaluator(**oks_options)
  if spec.normaliser == "head":
    return PckhEvaluator()
  return PckEvaluator()
