"""MPII Human Pose as a TFDS builder: one example per annotated person.

Inputs (in `manual_dir`, else downloaded where an official address exists):

  images: `mpii_human_pose_v1.tar.gz` (the official archive, extracted by TFDS) or an
      already extracted `images/` folder (also accepted as `mpii_human_pose_v1/images/`);
  annotations: the widely used JSON of Tompson et al.'s train/validation split, as
      distributed with the HRNet and mmpose code bases, in `annot/`:
        train.json, valid.json: lists of {"image": "015601864.jpg", "center": [x, y],
          "scale": s, "joints": [[x, y] x 16], "joints_vis": [0/1 x 16]}
          (1-based MATLAB pixels; `scale` = person height / 200 px);
        gt_valid.mat: `headboxes_src` (2, 2, N) = [[x1, y1], [x2, y2]] per validation
          person, in the order of valid.json (PCKh's head boxes), `jnt_missing` (16, N).
      An entry may also carry its own "head_box": [x1, y1, x2, y2] (used when present;
      otherwise a training person's head box is unknown and stored as zeros).

Conversions: joints and centres -1 (0-based); as in the reference code (Newell et al.,
HRNet), the centre moves down by 15 * s and the box side is 200 * 1.25 * s pixels, so
`scale` = 250 * s; unannotated joints get visible = 0 and coordinates 0.
"""

import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jhpe import files
from jhpe.data.builders import common

NUM_JOINTS = 16
IMAGES_URL = ('https://datasets.d2.mpi-inf.mpg.de/andriluka14cvpr/'
              'mpii_human_pose_v1.tar.gz')
ANNOTATIONS_URL = 'https://github.com/leoxiaobin/deep-high-resolution-net.pytorch'
IMAGES_ARCHIVE = 'mpii_human_pose_v1.tar.gz'

_CITATION = """@inproceedings{andriluka14cvpr,
  author = {Mykhaylo Andriluka and Leonid Pishchulin and Peter Gehler and Bernt Schiele},
  title = {2D Human Pose Estimation: New Benchmark and State of the Art Analysis},
  booktitle = {CVPR}, year = {2014}}"""


def _load_json(path, url):
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'MPII annotations not found at {path!r}: get train.json, valid.json and '
        f'gt_valid.mat (the annot/ folder of {url}) and place them there.')
  entries = files.read_json(path)
  if not isinstance(entries, list):
    raise ValueError(f'{path}: expected a JSON list of person entries, got '
                     f'{type(entries).__name__}.')
  return entries


def load_head_boxes(path, count):
  """gt_valid.mat -> (count, 4) head boxes (x1, y1, x2, y2), 0-based pixels."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'MPII validation head boxes not found at {path!r} (gt_valid.mat of the '
        f'annot/ folder of {ANNOTATIONS_URL}).')
  mat = scipy.io.loadmat(path)
  if 'headboxes_src' not in mat:
    raise ValueError(f'{path}: no variable `headboxes_src` (has {sorted(mat)}).')
  boxes = np.asarray(mat['headboxes_src'], np.float64)
  if boxes.shape != (2, 2, count):
    raise ValueError(f'{path}: `headboxes_src` has shape {boxes.shape}, expected '
                     f'(2, 2, {count}) to match the {count} entries of valid.json.')
  return boxes.transpose(2, 0, 1).reshape(count, 4) - 1.0


def parse_entry(entry, where):
  """One JSON person entry -> (image name, joints (16, 2), visible (16,), center, scale)."""
  try:
    joints = np.asarray(entry['joints'], np.float64)
    visible = np.asarray(entry['joints_vis'], np.float64)
    center = np.asarray(entry['center'], np.float64)
    s = float(entry['scale'])
    image = str(entry['image'])
  except (KeyError, TypeError, ValueError) as e:
    raise common.BadExampleError(f'{where}: malformed entry ({e}).') from e
  if joints.shape != (NUM_JOINTS, 2) or visible.shape != (NUM_JOINTS,):
    raise common.BadExampleError(
        f'{where}: joints {joints.shape} / joints_vis {visible.shape}, expected '
        f'({NUM_JOINTS}, 2) / ({NUM_JOINTS},).')
  if center.shape != (2,) or not s > 0:
    raise common.BadExampleError(f'{where}: bad center {center.tolist()} or scale {s}.')
  visible = (visible > 0).astype(np.float32)
  joints = np.where(visible[:, None] > 0, joints - 1.0, 0.0)
  center = center - 1.0 + np.array([0.0, 15.0 * s])
  return image, joints, visible, center, 200.0 * 1.25 * s


class Mpii(common.PoseBuilder):
  """MPII Human Pose (single persons, Tompson's train/validation split), 16 joints."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {IMAGES_ARCHIVE} (from {IMAGES_URL}) or its extracted images/ folder, and '
      f'the annot/ folder (train.json, valid.json, gt_valid.mat; {ANNOTATIONS_URL}) in '
      'the manual_dir.')

  def _info(self):
    return self.dataset_info_from_configs(
        description='MPII Human Pose, one example per annotated person.',
        features=common.pose_features(
            NUM_JOINTS,
            head_box=tfds.features.Tensor(shape=(4,), dtype=np.float32)),
        homepage='http://human-pose.mpi-inf.mpg.de/',
        citation=_CITATION,
        disable_shuffling=True)

  def _images_dir(self, manual_dir, dl_manager):
    for sub in ('images', os.path.join('mpii_human_pose_v1', 'images')):
      if manual_dir and os.path.isdir(os.path.join(manual_dir, sub)):
        return os.path.join(manual_dir, sub)
    archive = os.path.join(manual_dir, IMAGES_ARCHIVE) if manual_dir else None
    try:
      if archive and os.path.exists(archive):
        root = dl_manager.extract(archive)
      else:
        root = dl_manager.download_and_extract(IMAGES_URL)
    except Exception as e:
      raise FileNotFoundError(
          f'MPII images not found: expected {archive!r} or an images/ folder next to it; '
          f'downloading {IMAGES_URL} failed ({type(e).__name__}: {e}).') from e
    return os.path.join(os.fspath(root), 'images')

  def _split_generators(self, dl_manager):
    manual_dir = common.manual_dir_of(self, dl_manager)
    manual_dir = os.fspath(manual_dir) if manual_dir else None
    annot = os.path.join(manual_dir or '.', 'annot')
    train = _load_json(os.path.join(annot, 'train.json'), ANNOTATIONS_URL)
    valid = _load_json(os.path.join(annot, 'valid.json'), ANNOTATIONS_URL)
    head_boxes = load_head_boxes(os.path.join(annot, 'gt_valid.mat'), len(valid))
    images = self._images_dir(manual_dir, dl_manager)
    return {
        'train': self._generate_examples(images, train, None, 'train.json'),
        'validation': self._generate_examples(images, valid, head_boxes, 'valid.json'),
    }

  def _generate_examples(self, images, entries, head_boxes, source):
    counter = common.SkipCounter(self.skip_bad_examples, self.name)
    self.skipped = counter.skipped
    for i, entry in enumerate(entries):
      where = f'{source} index {i}'
      try:
        name, joints, visible, center, scale = parse_entry(entry, where)
        path = os.path.join(images, common.confined_name(name, where))
        where = f'{path} ({source} index {i})'
        try:
          with open(path, 'rb') as f:
            data = f.read()
        except OSError as e:
          raise common.BadExampleError(f'{where}: cannot read the image ({e}).') from e
        size = common.image_size(data, where)
        common.check_example(joints, visible, size, where)
      except common.BadExampleError as e:
        counter.handle(e)
        continue
      box = entry.get('head_box', entry.get('headbox'))
      if box is not None:
        box = np.asarray(box, np.float64).reshape(4) - 1.0
      elif head_boxes is not None:
        box = head_boxes[i]
      else:
        box = np.zeros(4)
      yield i, dict(id=f'{os.path.splitext(name)[0]}_{i}', image=data,
                    joints=joints.astype(np.float32), visible=visible,
                    center=center.astype(np.float32), scale=np.float32(scale),
                    head_box=box.astype(np.float32))
