"""COCO-style evaluation of a split: OKS AP with ground-truth or detected person boxes.

  ground-truth boxes  the split's own examples (one per annotated person), each person
                      scored by the mean of its confident keypoint maxima;
  detected boxes      a COCO results file of person boxes (`read_person_boxes`): every box
                      above a score threshold becomes a crop (`detection_source`), cut and
                      predicted as the examples are; the person score is the box score
                      times that mean.

Then OKS-NMS per image and pycocotools' COCOeval (`jhpe.oks`). The ground truth is the
dataset's annotation file where its builder finds it (`registry.gt_annotations`), else it
is rebuilt from the stored examples (`jhpe.oks.gt_from_records`; the eval JSON says which).
"""

import os

import numpy as np

from jhpe import files
from jhpe import geometry
from jhpe import oks


def _sigmas(skeleton):
  return np.asarray(skeleton.oks_sigmas or oks.COCO_SIGMAS, np.float64)


def _meta(record):
  """The fields of a stored example the OKS evaluation needs (no image)."""
  return {k: np.asarray(record[k]) for k in ('image_id', 'annotation_id', 'joints',
                                             'visible', 'bbox', 'area', 'box_score')
          if k in record}


def score_people(metas, joints, confidence, gt, skeleton, evaluator, image_ids):
  """Person scores, OKS-NMS and OKS AP of N predicted people.

  Args:
    metas: N dicts with 'image_id', 'bbox' (4,) and optional 'box_score'.
    joints: (N, J, 2) original pixels; confidence: (N, J).
    gt: the COCO ground-truth dict; skeleton: its `Skeleton` (OKS sigmas).
    evaluator: an `OksEvaluator` (keypoint and NMS thresholds).
    image_ids: the images evaluated.

  Returns:
    (stats {'AP', 'AP50', ...}, scores (N,), kept (N,) bool).
  """
  box_scores = np.array([float(m.get('box_score', 1.)) for m in metas])
  scores = oks.person_scores(confidence, box_scores, evaluator.keypoint_threshold)
  ids = np.array([int(m['image_id']) for m in metas])
  areas = np.array([float(m['bbox'][2] * m['bbox'][3]) for m in metas])
  keep = oks.oks_nms(ids, joints, scores, areas, _sigmas(skeleton), evaluator.nms_threshold)
  kept = np.zeros(len(metas), bool)
  kept[keep] = True
  people = [dict(image_id=ids[i], joints=joints[i], confidence=confidence[i],
                 score=scores[i]) for i in keep]
  stats = oks.coco_oks_ap(people, gt, _sigmas(skeleton), image_ids=image_ids)
  return stats, scores, kept


def add_oks(results, predictions, evaluator, *, dataset, split, source, index, joints,
            confidence, skeleton, manual_dir=None):
  """Puts OKS AP into `results` (the headline) and image ids and scores into `predictions`.

  Args:
    results: the eval results so far (PCK tables, or nothing with detected boxes).
    predictions: the prediction dicts, in the order of `index` (updated in place: 'image_id',
      'score', 'kept' by OKS-NMS; detected boxes also 'box', 'box_score').
    source: the split's records (or a `DetectionSource`); index: (N,) their positions.
    joints: (N, J, 2) original pixels; confidence: (N, J).
  """
  from jhpe.data import registry  # pylint: disable=g-import-not-at-top
  metas = [_meta(source[int(i)]) for i in index]
  detected = isinstance(source, DetectionSource)
  if detected:
    gt, gt_from = source.gt, source.gt_from
    if len(index) < len(source):  # --num_examples: the images of the boxes evaluated.
      image_ids = sorted({int(m['image_id']) for m in metas})
    else:  # Every image: one without a detection still counts its people as missed.
      image_ids = sorted(im['id'] for im in gt['images'])
  else:
    gt = registry.gt_annotations(dataset, split, manual_dir)
    gt_from = 'annotation file'
    if gt is None:
      gt = oks.gt_from_records(metas, skeleton.joint_names)
      gt_from = 'stored examples (the annotation file was not found)'
    image_ids = sorted({int(m['image_id']) for m in metas})
  stats, scores, kept = score_people(metas, joints, confidence, gt, skeleton, evaluator,
                                     image_ids)
  for p, m, s, k in zip(predictions, metas, scores, kept):
    p.update(image_id=int(m['image_id']), score=round(float(s), 5), kept=bool(k))
    if detected:
      p.update(box=np.round(m['bbox'].astype(np.float64), 2).tolist(),
               box_score=float(m['box_score']))
  if 'mean' in results:
    results['pck'] = {'metric': results['metric'], 'mean': results['mean']}
  results.update(
      metric='OKS AP', mean=stats['AP'] or 0.,
      oks={**stats, 'boxes': source.path if detected else 'ground truth',
           'ground_truth': gt_from, 'people': len(metas), 'kept_by_oks_nms': int(kept.sum()),
           'images': len(image_ids), 'keypoint_threshold': evaluator.keypoint_threshold,
           'nms_threshold': evaluator.nms_threshold,
           **({'box_score_threshold': source.score_threshold} if detected else {})})
  if 'per_joint' in results:
    results['per_joint_metric'] = results['pck']['metric'] + ' (sqrt(area))'
  return results


def read_person_boxes(path, score_threshold=0.0, category_id=1, flag='--person_boxes',
                      entries=None):
  """Person boxes from a COCO results file: [{'image_id', 'bbox': [x, y, w, h], 'score',
  'category_id'?}, ...] -> the boxes of `category_id` scored >= `score_threshold`.

  `flag` names the file in errors; `entries`: the file's list when already loaded.
  """
  if entries is None:
    entries = files.read_json(path, f'{flag}={path}')
  if not isinstance(entries, list):
    raise ValueError(f'{flag}={path}: expected a list of {{"image_id", "bbox", '
                     '"score"}} (COCO results format).')
  boxes = []
  for k, e in enumerate(entries):
    try:
      bbox = np.asarray(e['bbox'], np.float64)
      entry = dict(image_id=int(e['image_id']), bbox=bbox, score=float(e.get('score', 1.)))
      ok = bbox.shape == (4,) and np.all(np.isfinite(bbox)) and bbox[2] > 0 and bbox[3] > 0
    except (KeyError, TypeError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f'{flag}={path}: entry {k} {str(e)[:80]} is not '
                       '{"image_id": int, "bbox": [x, y, w, h] (w, h > 0), "score": float}.')
    if e.get('category_id', category_id) == category_id and entry['score'] >= score_threshold:
      boxes.append(entry)
  return boxes


class DetectionSource:
  """Random access over the person crops of detected boxes, as stored examples.

  Each record has the example fields the host transform reads ('image', 'center',
  'scale'; placeholder 'joints' and 'visible', since no person is matched) and what the
  OKS evaluation needs ('image_id', 'bbox', 'area', 'box_score').
  """

  def __init__(self, boxes, gt, image_bytes, num_joints, *, path, score_threshold, gt_from):
    self.boxes, self.gt, self.gt_from = boxes, gt, gt_from
    self.path, self.score_threshold = path, score_threshold
    self._image_bytes, self._num_joints = image_bytes, num_joints

  def __len__(self):
    return len(self.boxes)

  def __getitem__(self, index):
    b = self.boxes[int(index)]
    center, scale = geometry.box_center_scale(b['bbox'])
    return dict(id=f'{b["image_id"]}_box{int(index)}', image=self._image_bytes(b['image_id']),
                joints=np.zeros((self._num_joints, 2), np.float32),
                visible=np.ones((self._num_joints,), np.float32),
                center=center, scale=scale, image_id=np.int64(b['image_id']),
                bbox=b['bbox'].astype(np.float32), area=np.float32(b['bbox'][2] * b['bbox'][3]),
                box_score=np.float32(b['score']))


def detection_source(dataset, split, path, *, skeleton, score_threshold=0.0, data_dir=None,
                     manual_dir=None):
  """A `DetectionSource` over the boxes in `path` on the images of `dataset`/`split`.

  Images come from the built split (the images with annotated people) and, for the
  others, from the dataset's files in the manual_dir (`image_bytes` of its builder module).
  """
  from jhpe.data import pipeline, registry  # pylint: disable=g-import-not-at-top
  gt = registry.gt_annotations(dataset, split, manual_dir)
  split_source = pipeline.data_source(dataset, split, data_dir=data_dir,
                                      manual_dir=manual_dir)
  first = {}  # image_id -> position of its first example in the built split
  for i in range(len(split_source)):
    first.setdefault(int(split_source[i]['image_id']), i)
  gt_from = 'annotation file'
  if gt is None:
    gt = oks.gt_from_records([_meta(split_source[i]) for i in range(len(split_source))],
                             skeleton.joint_names)
    gt_from = 'stored examples (the annotation file was not found)'
  files = {im['id']: im.get('file_name') for im in gt['images']}
  boxes = read_person_boxes(path, score_threshold)
  unknown = sorted({b['image_id'] for b in boxes} - set(files))
  if unknown:
    raise ValueError(f'--person_boxes={path}: image_id {unknown[0]} (and '
                     f'{len(unknown) - 1} more) is not an image of {dataset!r} {split!r}.')
  if not boxes:
    raise ValueError(f'--person_boxes={path}: no box scored >= {score_threshold}.')
  _, config = registry.split_name(dataset)
  module = __import__(registry.get_spec(dataset).builder.partition(':')[0], fromlist=['_'])
  files_reader = []

  def image_bytes(image_id):
    if image_id in first:
      return split_source[first[image_id]]['image']
    if not files_reader:
      find = getattr(module, 'image_bytes', None)
      files_reader.append(find(split, manual_dir or registry.default_manual_dir(), config)
                          if find else None)
    if files_reader[0] is None or files[image_id] is None:
      raise ValueError(f'image {image_id} of {dataset!r} {split!r} has no annotated person, '
                       'so it is not in the built dataset, and its file is not at hand '
                       '(put the images in the manual_dir).')
    return files_reader[0](files[image_id])

  return DetectionSource(boxes, gt, image_bytes, skeleton.num_joints, path=os.fspath(path),
                         score_threshold=score_threshold, gt_from=gt_from)


def evaluator_and_loader(config, skeleton, person_boxes=None, box_score_threshold=0.0,
                         nms_threshold=oks.OKS_NMS_THRESHOLD):
  """The evaluator of config.dataset (OKS-NMS threshold set where it is an OKS one) and,
  with `person_boxes`, the loader of the detected-box crops (else None: the split)."""
  from jhpe.train import evaluators  # pylint: disable=g-import-not-at-top
  evaluator = evaluators.for_dataset(config.dataset)
  if isinstance(evaluator, evaluators.OksEvaluator):
    evaluator = evaluators.for_dataset(config.dataset, nms_threshold=nms_threshold)
  if not person_boxes:
    return evaluator, None
  if not isinstance(evaluator, evaluators.OksEvaluator):
    raise ValueError(f'--person_boxes: dataset {config.dataset!r} is scored by '
                     f'{evaluator.title}, which needs its ground-truth people; detected '
                     'boxes are for OKS AP datasets (coco_keypoints, coco_format:...).')
  return evaluator, detection_loader(config, person_boxes, skeleton, box_score_threshold)


def write_coco_results(path, predictions):
  """The people kept by OKS-NMS in COCO results format (`jhpe.oks.to_coco_results`)."""
  from jhpe import files  # pylint: disable=g-import-not-at-top
  files.write_json(path, oks.to_coco_results(p for p in predictions if p.get('kept', True)),
                   indent=None)


def detection_loader(config, path, skeleton, score_threshold=0.0):
  """This process's shard of the detected-box crops of config.dataset / config.eval_split
  as padded eval batches (`jhpe.train.evaluate.evaluate`'s loader)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  source = detection_source(config.dataset, config.eval_split, path, skeleton=skeleton,
                            score_threshold=score_threshold,
                            data_dir=config.data_dir or None,
                            manual_dir=config.manual_dir or None)
  return pipeline.make_loader(
      config.dataset, config.eval_split, canvas_size=config.input_size, train=False,
      batch_size=config.global_eval_batch_size // jax.process_count(),
      shard_index=jax.process_index(), shard_count=jax.process_count(), source=source)


def table_lines(results):
  """The OKS lines of the printed evaluation table."""
  o = results['oks']
  return ['  ' + '  '.join(f'{k} n/a' if o[k] is None else f'{k} {100 * o[k]:.1f}' for k in
                           ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR')),
          f"  boxes: {o['boxes']}; ground truth: {o['ground_truth']}; "
          f"{o['kept_by_oks_nms']} of {o['people']} people kept by OKS-NMS"]
