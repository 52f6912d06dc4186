"""COCO keypoints as a TFDS builder: one example per person instance (top-down setting).

Inputs (in `manual_dir`, else downloaded from the official addresses):

  annotations_trainval2017.zip (read in place), or its unpacked
      annotations/person_keypoints_train2017.json, annotations/person_keypoints_val2017.json;
  train2017.zip and val2017.zip (read in place), or the unpacked train2017/, val2017/.

A split is built when its annotations are there (val2017 alone is enough to evaluate).

Every instance with `iscrowd` = 0 and `num_keypoints` > 0 becomes an example with its box
and area (what OKS needs). COCO keypoints (x, y, v) are continuous coordinates with the
image's top-left *corner* at 0; jhpe puts pixel centres at integers, so stored joints are
x - 0.5, y - 0.5 (and `coco_oks_ap` adds the 0.5 back). v = 0: not labelled (visible = 0);
v = 1 (labelled, occluded) and v = 2 are annotated (visible = 1), as in COCO's evaluation.
`bbox` (x, y, w, h) and `area` are kept exactly as in the annotation file.

Evaluation: `jhpe.oks.coco_oks_ap(predictions, annotations)` runs pycocotools' COCOeval
(`jhpe.train.evaluators.OksEvaluator` in the evaluation); `gt_annotations` finds the file.
"""

import json
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jhpe import geometry
from jhpe import oks
from jhpe.data.builders import common

NUM_JOINTS = 17
BASE_URL = 'http://images.cocodataset.org'
ANNOTATIONS_ZIP = 'annotations_trainval2017.zip'
ANNOTATIONS_URL = f'{BASE_URL}/annotations/{ANNOTATIONS_ZIP}'
SPLITS = {'train': 'train2017', 'validation': 'val2017'}

_CITATION = """@inproceedings{lin2014microsoft,
  title = {Microsoft {COCO}: Common Objects in Context},
  author = {Lin, Tsung-Yi and others}, booktitle = {ECCV}, year = {2014}}"""


def annotation_location(root, split_dir):
  """Where person_keypoints_<split_dir>.json is under `root`, or None.

  Returns:
    the JSON's path (root/annotations/, the unpacked archive) or (archive path, member)
    inside root/annotations_trainval2017.zip (the official download, read in place).
  """
  name = f'person_keypoints_{split_dir}.json'
  path = os.path.join(root, 'annotations', name)
  if os.path.isfile(path):
    return path
  archive = os.path.join(root, ANNOTATIONS_ZIP)
  if os.path.isfile(archive):
    return (archive, f'annotations/{name}')
  return None


def describe(location):
  """A location's text for messages: 'path' or 'archive.zip:member'."""
  return location if isinstance(location, str) else ':'.join(location)


def load_coco_json(location):
  """A COCO keypoints JSON from a path or (zip archive, member) -> dict (ValueError naming it)."""
  where = describe(location)
  try:
    if isinstance(location, str):
      with open(location, 'rb') as f:
        data = f.read()
    else:
      with zipfile.ZipFile(location[0]) as z:
        data = z.read(location[1])
    coco = json.loads(data)
  except KeyError as e:
    raise ValueError(f'{location[0]}: no member {location[1]!r} (the official '
                     f'{ANNOTATIONS_ZIP} holds annotations/person_keypoints_*.json).') from e
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'{where}: not a readable COCO annotation file ({e}).') from e
  for key in ('images', 'annotations'):
    if key not in coco:
      raise ValueError(f'{where}: no {key!r} list (a COCO keypoints file has '
                       "'images', 'annotations' and 'categories').")
  return coco


def load_instances(annotation_file, category_id=1):
  """person_keypoints_*.json (a location or the loaded dict) -> (images by id, sorted
  usable annotations of `category_id`)."""
  coco = annotation_file if isinstance(annotation_file, dict) else load_coco_json(
      annotation_file)
  images = {im['id']: im for im in coco['images']}
  anns = [a for a in coco['annotations']
          if a.get('category_id', 1) == category_id and not a.get('iscrowd', 0)
          and a.get('num_keypoints', 0) > 0]
  anns.sort(key=lambda a: (a['image_id'], a['id']))
  return images, anns


def parse_instance(ann, where, num_joints=NUM_JOINTS):
  """-> joints (J, 2) pixel-centre coordinates, visible (J,), bbox (4,), area."""
  kp = np.asarray(ann.get('keypoints', ()), np.float64)
  if kp.shape != (3 * num_joints,):
    raise common.BadExampleError(f'{where}: keypoints have {kp.size} values, expected '
                                 f'{3 * num_joints} (x, y, v for {num_joints} joints).')
  kp = kp.reshape(num_joints, 3)
  visible = (kp[:, 2] > 0).astype(np.float32)
  joints = np.where(visible[:, None] > 0, kp[:, :2] - 0.5, 0.0)
  bbox = np.asarray(ann.get('bbox', ()), np.float64)
  if bbox.shape != (4,) or bbox[2] <= 0 or bbox[3] <= 0:
    raise common.BadExampleError(f'{where}: bad bbox {bbox.tolist()} (x, y, w, h > 0).')
  return joints, visible, bbox, float(ann.get('area', bbox[2] * bbox[3]))


def _has_images(root, split_dir):
  return (os.path.isdir(os.path.join(root, split_dir))
          or os.path.isfile(os.path.join(root, f'{split_dir}.zip')))


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
      f'Place the official {ANNOTATIONS_ZIP} ({ANNOTATIONS_URL}), train2017.zip and '
      f'val2017.zip ({BASE_URL}/zips/) in the manual_dir, as downloaded; unpacked '
      'folders (annotations/person_keypoints_{train,val}2017.json, train2017/, val2017/) '
      'work too.')

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

  def _sources(self, dl_manager):
    """{split_dir: (annotation location, image root)}: each found in its own place.

    The manual_dir may hold the annotations unpacked (annotations/) or as the official
    zip (read in place), and each split's images as a folder or the official zip; without
    a manual_dir everything is downloaded (each archive unpacks into its own folder).
    """
    manual_dir = common.manual_dir_of(self, dl_manager)
    if manual_dir:
      found = {d: (annotation_location(manual_dir, d), manual_dir)
               for d in SPLITS.values()}
      found = {d: v for d, v in found.items() if v[0] is not None}
      if not found:
        raise FileNotFoundError(
            f'No COCO keypoint annotations in manual_dir {manual_dir!r}: expected '
            f'{ANNOTATIONS_ZIP} or annotations/person_keypoints_train2017.json / '
            f'_val2017.json ({ANNOTATIONS_URL}).')
      # A split is built where its images are there too (val2017 alone: evaluation only).
      with_images = {d: v for d, v in found.items() if _has_images(manual_dir, d)}
      if not with_images:
        raise FileNotFoundError(
            f'No COCO images in manual_dir {manual_dir!r}: expected val2017.zip and/or '
            f'train2017.zip (or the unpacked val2017/, train2017/) from {BASE_URL}/zips/.')
      return with_images
    try:
      paths = dl_manager.download_and_extract({
          'annotations': ANNOTATIONS_URL,
          **{s: f'{BASE_URL}/zips/{s}.zip' for s in SPLITS.values()}})
    except Exception as e:
      raise FileNotFoundError(
          f'COCO not found (no manual_dir holding {ANNOTATIONS_ZIP} and the image '
          f'archives or folders) and downloading from {BASE_URL} failed '
          f'({type(e).__name__}: {e}).') from e
    return {d: (annotation_location(os.fspath(paths['annotations']), d),  # pragma: no cover
                os.fspath(paths[d])) for d in SPLITS.values()}

  def _split_generators(self, dl_manager):
    sources = self._sources(dl_manager)
    return {split: self._generate_examples(_Images(sources[d][1], d), sources[d][0])
            for split, d in SPLITS.items() if d in sources}

  def _generate_examples(self, reader, annotation_file, num_joints=NUM_JOINTS,
                         category_id=1):
    """One example per usable instance; `reader.read(file_name)` -> (bytes, path)."""
    images, anns = load_instances(annotation_file, category_id)
    annotation_file = describe(annotation_file)
    counter = common.SkipCounter(self.skip_bad_examples, self.name)
    self.skipped = counter.skipped
    for i, ann in enumerate(anns):
      where = f'{annotation_file} annotation {ann.get("id")} (index {i})'
      try:
        image = images.get(ann['image_id'])
        if image is None:
          raise common.BadExampleError(f'{where}: unknown image_id {ann["image_id"]}.')
        joints, visible, bbox, area = parse_instance(ann, where, num_joints)
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


# Kept here too: the builder's evaluation was `coco_keypoints.coco_oks_ap`.
coco_oks_ap = oks.coco_oks_ap


def gt_annotations(split, manual_dir, config=None):
  """The split's ground-truth dict from the manual_dir (folder or official zip), or None."""
  del config  # One configuration.
  location = annotation_location(manual_dir, SPLITS[split]) if (
      manual_dir and split in SPLITS) else None
  return None if location is None else load_coco_json(location)


def image_reader(root, split_dir):
  """Reads a split's images by file name from root/<split_dir>/ or root/<split_dir>.zip."""
  return _Images(root, split_dir)


def image_bytes(split, manual_dir, config=None):
  """file name -> the bytes of a split's image from the manual_dir, or None if absent."""
  del config
  if not manual_dir or split not in SPLITS or not _has_images(manual_dir, SPLITS[split]):
    return None
  reader = _Images(manual_dir, SPLITS[split])
  return lambda file_name: reader.read(file_name)[0]
