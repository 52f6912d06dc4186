"""COCO keypoints as a TFDS builder: one example per person instance (top-down setting).

Inputs (in `manual_dir`, else downloaded from the official addresses):

  annotations/person_keypoints_train2017.json, annotations/person_keypoints_val2017.json
      (or annotations_trainval2017.zip holding them);
  train2017/ and val2017/ image folders, or the official train2017.zip / val2017.zip.

Every instance with `iscrowd` = 0 and `num_keypoints` > 0 becomes an example with its box
and area (what OKS needs). COCO keypoints (x, y, v) are continuous coordinates with the
image's top-left *corner* at 0; jhpe puts pixel centres at integers, so stored joints are
x - 0.5, y - 0.5 (and `coco_oks_ap` adds the 0.5 back). v = 0: not labelled (visible = 0);
v = 1 (labelled, occluded) and v = 2 are annotated (visible = 1), as in COCO's evaluation.
`bbox` (x, y, w, h) and `area` are kept exactly as in the annotation file.

Evaluation: `coco_oks_ap(predictions, annotation_file)` runs pycocotools' COCOeval.
"""

import json
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jhpe import geometry
from jhpe.data.builders import common

NUM_JOINTS = 17
BASE_URL = 'http://images.cocodataset.org'
ANNOTATIONS_URL = f'{BASE_URL}/annotations/annotations_trainval2017.zip'
SPLITS = {'train': 'train2017', 'validation': 'val2017'}

_CITATION = """@inproceedings{lin2014microsoft,
  title = {Microsoft {COCO}: Common Objects in Context},
  author = {Lin, Tsung-Yi and others}, booktitle = {ECCV}, year = {2014}}"""


def load_instances(annotation_file):
  """person_keypoints_*.json -> (images by id, sorted usable person annotations)."""
  try:
    with open(annotation_file) as f:
      coco = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{annotation_file}: not a readable COCO annotation file ({e}).') from e
  for key in ('images', 'annotations'):
    if key not in coco:
      raise ValueError(f'{annotation_file}: no {key!r} list (a COCO keypoints file has '
                       "'images', 'annotations' and 'categories').")
  images = {im['id']: im for im in coco['images']}
  anns = [a for a in coco['annotations']
          if a.get('category_id', 1) == 1 and not a.get('iscrowd', 0)
          and a.get('num_keypoints', 0) > 0]
  anns.sort(key=lambda a: (a['image_id'], a['id']))
  return images, anns


def parse_instance(ann, where):
  """-> joints (17, 2) pixel-centre coordinates, visible (17,), bbox (4,), area."""
  kp = np.asarray(ann.get('keypoints', ()), np.float64)
  if kp.shape != (3 * NUM_JOINTS,):
    raise common.BadExampleError(f'{where}: keypoints have {kp.size} values, expected '
                                 f'{3 * NUM_JOINTS} (x, y, v for 17 joints).')
  kp = kp.reshape(NUM_JOINTS, 3)
  visible = (kp[:, 2] > 0).astype(np.float32)
  joints = np.where(visible[:, None] > 0, kp[:, :2] - 0.5, 0.0)
  bbox = np.asarray(ann.get('bbox', ()), np.float64)
  if bbox.shape != (4,) or bbox[2] <= 0 or bbox[3] <= 0:
    raise common.BadExampleError(f'{where}: bad bbox {bbox.tolist()} (x, y, w, h > 0).')
  return joints, visible, bbox, float(ann.get('area', bbox[2] * bbox[3]))


class _Images:
  """Reads images by file name from a folder or the official zip."""

  def __init__(self, root, split_dir):
    folder = os.path.join(root, split_dir)
    archive = os.path.join(root, f'{split_dir}.zip')
    self.folder = folder if os.path.isdir(folder) else None
    self.split_dir = split_dir
    self.zip = None
    self.path = folder
    if self.folder is None:
      if not os.path.exists(archive):
        raise FileNotFoundError(
            f'COCO images not found: expected the folder {folder!r} or {archive!r} '
            f'(download {BASE_URL}/zips/{split_dir}.zip).')
      self.zip, self.path = common.open_archive(root, f'{split_dir}.zip',
                                                f'{BASE_URL}/zips/{split_dir}.zip')

  def read(self, file_name):
    if self.folder is not None:
      path = os.path.join(self.folder, file_name)
      try:
        with open(path, 'rb') as f:
          return f.read(), path
      except OSError as e:
        raise common.BadExampleError(f'{path}: cannot read the image ({e}).') from e
    member = f'{self.split_dir}/{file_name}'
    return common.read_member(self.zip, self.path, member), f'{self.path}:{member}'


class CocoKeypoints(common.PoseBuilder):
  """COCO 2017 person keypoints, one example per person instance, 17 joints."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place annotations/person_keypoints_{train,val}2017.json (from '
      f'{ANNOTATIONS_URL}) and train2017/, val2017/ (folders or the official zips from '
      f'{BASE_URL}/zips/) in the manual_dir.')

  def _info(self):
    return self.dataset_info_from_configs(
        description='COCO 2017 person keypoints, one example per person instance.',
        features=common.pose_features(
            NUM_JOINTS,
            bbox=tfds.features.Tensor(shape=(4,), dtype=np.float32),
            area=tfds.features.Tensor(shape=(), dtype=np.float32),
            image_id=tfds.features.Tensor(shape=(), dtype=np.int64),
            annotation_id=tfds.features.Tensor(shape=(), dtype=np.int64)),
        homepage='https://cocodataset.org/#keypoints-2017',
        citation=_CITATION,
        disable_shuffling=True)

  def _root(self, dl_manager):
    manual_dir = common.manual_dir_of(self, dl_manager)
    if manual_dir and os.path.isdir(os.path.join(manual_dir, 'annotations')):
      return os.fspath(manual_dir)
    if manual_dir and os.path.exists(os.path.join(manual_dir,
                                                  'annotations_trainval2017.zip')):
      with zipfile.ZipFile(os.path.join(manual_dir, 'annotations_trainval2017.zip')) as z:
        z.extractall(os.path.join(os.fspath(dl_manager.extract_dir), 'coco'))
      return os.path.join(os.fspath(dl_manager.extract_dir), 'coco')
    try:
      paths = dl_manager.download_and_extract({
          'annotations': ANNOTATIONS_URL,
          **{s: f'{BASE_URL}/zips/{s}.zip' for s in SPLITS.values()}})
    except Exception as e:
      raise FileNotFoundError(
          f'COCO not found in manual_dir {manual_dir!r} (annotations/ and the image '
          f'folders) and downloading from {BASE_URL} failed ({type(e).__name__}: {e}).'
      ) from e
    return os.fspath(paths['annotations'])  # pragma: no cover (needs the network)

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager)
    out = {}
    for split, split_dir in SPLITS.items():
      ann = os.path.join(root, 'annotations', f'person_keypoints_{split_dir}.json')
      if os.path.exists(ann):
        out[split] = self._generate_examples(root, split_dir, ann)
    if not out:
      raise FileNotFoundError(
          f'No COCO keypoint annotations in {os.path.join(root, "annotations")!r}: '
          f'expected person_keypoints_train2017.json / _val2017.json ({ANNOTATIONS_URL}).')
    return out

  def _generate_examples(self, root, split_dir, annotation_file):
    images, anns = load_instances(annotation_file)
    reader = _Images(root, split_dir)
    counter = common.SkipCounter(self.skip_bad_examples, self.name)
    self.skipped = counter.skipped
    for i, ann in enumerate(anns):
      where = f'{annotation_file} annotation {ann.get("id")} (index {i})'
      try:
        image = images.get(ann['image_id'])
        if image is None:
          raise common.BadExampleError(f'{where}: unknown image_id {ann["image_id"]}.')
        joints, visible, bbox, area = parse_instance(ann, where)
        data, path = reader.read(common.confined_name(image['file_name'], where))
        where = f'{path} ({where})'
        size = common.image_size(data, where)
        common.check_example(joints, visible, size, where)
      except common.BadExampleError as e:
        counter.handle(e)
        continue
      center, scale = geometry.box_center_scale(bbox)
      yield i, dict(id=f'{ann["image_id"]}_{ann["id"]}', image=data,
                    joints=joints.astype(np.float32), visible=visible,
                    center=center, scale=scale, bbox=bbox.astype(np.float32),
                    area=np.float32(area), image_id=np.int64(ann['image_id']),
                    annotation_id=np.int64(ann['id']))


def coco_oks_ap(predictions, annotation_file):
  """COCO keypoint AP (OKS) of top-down predictions, computed by pycocotools.

  Args:
    predictions: iterable of dicts with 'image_id' (int), 'joints' (17, 2) in jhpe's
      original-image pixels (pixel centres at integers), 'score' (float); optional
      'confidence' (17,) per joint.
    annotation_file: the person_keypoints_*.json the examples came from.

  Returns:
    dict: 'AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl'.
  """
  try:
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('coco_oks_ap needs pycocotools: pip install "jhpe[coco]".') from e
  results = []
  for p in predictions:
    joints = np.asarray(p['joints'], np.float64)
    if joints.shape != (NUM_JOINTS, 2):
      raise ValueError(f'prediction joints must have shape ({NUM_JOINTS}, 2), got '
                       f'{joints.shape} (image_id {p.get("image_id")}).')
    conf = np.asarray(p.get('confidence', np.ones(NUM_JOINTS)), np.float64)
    kp = np.concatenate([joints + 0.5, conf.reshape(NUM_JOINTS, 1)], axis=1)
    results.append(dict(image_id=int(p['image_id']), category_id=1,
                        keypoints=kp.reshape(-1).tolist(), score=float(p['score'])))
  if not results:
    raise ValueError('coco_oks_ap: no predictions.')
  gt = COCO(annotation_file)
  dt = gt.loadRes(results)
  evaluator = COCOeval(gt, dt, 'keypoints')
  evaluator.params.imgIds = sorted({r['image_id'] for r in results})
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  names = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl')
  return {n: float(v) for n, v in zip(names, evaluator.stats)}
