"""COCO keypoint evaluation: OKS AP (pycocotools), the COCO results format, top-down person
scores and OKS-NMS.

Coordinates: jhpe puts pixel centres at integers, COCO puts the image's top-left corner at
0, so a jhpe joint x is COCO's x + 0.5 (the builders store x - 0.5).

The top-down protocol of SimpleBaselines / HRNet / mmpose (`TopDownCocoDataset`):
  person score = box score x mean of the keypoint confidences above 0.2 (the confident
    keypoint maxima; 0 when none is);
  OKS-NMS (threshold 0.9) keeps, per image, the best-scored of poses whose OKS exceeds it,
    since overlapping detector boxes give the same person twice;
  AP, AP50, AP75, APm, APl, AR over the 10 OKS thresholds 0.50:0.05:0.95 (COCOeval).
"""

import contextlib
import io
import json

import numpy as np

# COCO's per-keypoint OKS sigmas (pycocotools' `kpt_oks_sigmas`), in COCO keypoint order.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
KEYPOINT_THRESHOLD = 0.2  # `in_vis_thre`: a keypoint counts in the person score above it.
OKS_NMS_THRESHOLD = 0.9
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl')


def person_scores(confidence, box_scores=None, threshold=KEYPOINT_THRESHOLD):
  """Top-down person scores (N,): box score x mean of the keypoint confidences > threshold.

  Args:
    confidence: (N, J) decoded heatmap maxima.
    box_scores: (N,) the detector's scores (default 1: ground-truth boxes).
  """
  confidence = np.asarray(confidence, np.float64)
  confident = confidence > threshold
  mean = np.where(confident, confidence, 0.).sum(1) / np.maximum(confident.sum(1), 1)
  box = np.ones(len(confidence)) if box_scores is None else np.asarray(box_scores, np.float64)
  return box * mean


def oks(pose, poses, areas, sigmas):
  """OKS of one pose against others (M,), as COCOeval's computeOks with all joints counted.

  Args:
    pose: (J, 2); poses: (M, J, 2) in pixels; areas: (M,) the others' areas (pixels^2);
    sigmas: (J,).
  """
  d2 = np.sum((np.asarray(poses) - np.asarray(pose)[None]) ** 2, -1)
  var = (2 * np.asarray(sigmas)) ** 2
  e = d2 / var[None] / (np.asarray(areas, np.float64)[:, None] + np.spacing(1)) / 2
  return np.mean(np.exp(-e), axis=1)


def oks_nms(image_ids, joints, scores, areas, sigmas, threshold=OKS_NMS_THRESHOLD):
  """Indices kept by greedy OKS-NMS, per image, best score first.

  Args:
    image_ids: (N,); joints: (N, J, 2); scores: (N,); areas: (N,) box areas; sigmas: (J,).
    threshold: a pose whose OKS with a kept one of its image exceeds it is dropped
      (>= 1 keeps everything).
  """
  image_ids, joints = np.asarray(image_ids), np.asarray(joints, np.float64)
  scores, areas = np.asarray(scores, np.float64), np.asarray(areas, np.float64)
  keep = []
  for image_id in np.unique(image_ids):
    order = np.nonzero(image_ids == image_id)[0]
    order = order[np.argsort(-scores[order], kind='stable')]
    while len(order):
      best, order = order[0], order[1:]
      keep.append(int(best))
      if len(order) and threshold < 1:
        order = order[oks(joints[best], joints[order], areas[order], sigmas) <= threshold]
  return sorted(keep)


def to_coco_results(predictions, category_id=1):
  """jhpe predictions -> COCO results format (what pycocotools' loadRes reads).

  Args:
    predictions: dicts with 'image_id', 'joints' (J, 2) jhpe pixels, 'score' and optional
      'confidence' (J,) (written as each keypoint's third value, as the top-down papers).

  Returns:
    [{'image_id', 'category_id', 'keypoints': [x, y, c] * J, 'score'}].
  """
  results = []
  for p in predictions:
    joints = np.asarray(p['joints'], np.float64)
    if joints.ndim != 2 or joints.shape[1] != 2:
      raise ValueError(f'prediction joints must have shape (J, 2), got {joints.shape} '
                       f'(image_id {p.get("image_id")}).')
    conf = np.asarray(p.get('confidence', np.ones(len(joints))), np.float64)
    kp = np.concatenate([joints + 0.5, conf.reshape(-1, 1)], axis=1)
    results.append(dict(image_id=int(p['image_id']), category_id=int(category_id),
                        keypoints=np.round(kp, 3).reshape(-1).tolist(),
                        score=float(p['score'])))
  return results


def gt_from_records(records, joint_names):
  """A COCO ground-truth dict from stored examples ('image_id', 'annotation_id', 'joints',
  'visible', 'bbox', 'area'): for when the annotation file is not at hand (it lacks the
  crowd regions and keypoint-less people, which only matter with detected boxes)."""
  anns, image_ids = [], set()
  for r in records:
    visible = np.asarray(r['visible']) > 0
    kp = np.concatenate([np.asarray(r['joints'], np.float64) + 0.5,
                         2. * visible[:, None]], axis=1)
    kp[~visible, :2] = 0.
    image_ids.add(int(r['image_id']))
    anns.append(dict(id=int(r['annotation_id']), image_id=int(r['image_id']),
                     category_id=1, iscrowd=0, num_keypoints=int(visible.sum()),
                     keypoints=kp.reshape(-1).tolist(),
                     bbox=np.asarray(r['bbox'], np.float64).tolist(),
                     area=float(r['area'])))
  return dict(images=[dict(id=i) for i in sorted(image_ids)], annotations=anns,
              categories=[dict(id=1, name='person', keypoints=list(joint_names),
                               skeleton=[])])


def coco_oks_ap(predictions, annotations, sigmas=None, image_ids=None):
  """COCO keypoint AP (OKS) of top-down predictions, computed by pycocotools.

  Args:
    predictions: iterable of dicts with 'image_id' (int), 'joints' (J, 2) in jhpe's
      original-image pixels (pixel centres at integers), 'score' (float); optional
      'confidence' (J,) per joint.
    annotations: the ground truth: a person_keypoints_*.json path or its loaded dict.
    sigmas: (J,) OKS sigmas (default COCO's 17).
    image_ids: the images evaluated (default those with a prediction).

  Returns:
    dict: 'AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl' (None
    where undefined: no ground-truth person in that area range).
  """
  try:
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('coco_oks_ap needs pycocotools: pip install "jhpe[coco]".') from e
  sigmas = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, np.float64)
  results = to_coco_results(predictions)
  for r in results:
    if len(r['keypoints']) != 3 * len(sigmas):
      raise ValueError(f'prediction joints: {len(r["keypoints"]) // 3} per person, but '
                       f'{len(sigmas)} OKS sigmas (image_id {r["image_id"]}).')
  if not results:
    raise ValueError('coco_oks_ap: no predictions.')
  if not isinstance(annotations, dict):
    with open(annotations) as f:
      annotations = json.load(f)
  if any(a.get('id') == 0 for a in annotations['annotations']):
    # COCOeval marks a detection matched by the id of its ground truth, 0 meaning none:
    # a ground truth with id 0 could never be matched. Ids do not enter AP: renumber.
    annotations = dict(annotations, annotations=[
        dict(a, id=k + 1) for k, a in enumerate(annotations['annotations'])])
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes.
    gt = COCO()
    gt.dataset = annotations
    gt.createIndex()
    dt = gt.loadRes(results)
    evaluator = COCOeval(gt, dt, 'keypoints')
    evaluator.params.kpt_oks_sigmas = sigmas
    evaluator.params.imgIds = sorted({int(i) for i in (
        image_ids if image_ids is not None else [r['image_id'] for r in results])})
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  # COCOeval's -1: no ground truth in that area range (e.g. APl without large people).
  return {n: float(v) if v >= 0 else None for n, v in zip(STAT_NAMES, evaluator.stats)}
