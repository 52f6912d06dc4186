"""Leeds Sports Pose (LSP) and its extended training set (LSPET) as TFDS builders.

Both archives hold `images/` and `joints.mat` (variable `joints`, 1-based MATLAB pixel
coordinates, 14 person-centric joints in the LSP order of `jhpe.skeletons.LSP`), but the
two `joints` arrays differ (../shared/data/README.md):

  LSP    (3, 14, 2000): rows x, y, flag; flag 1 = *occluded* (still annotated). Every joint
         is annotated, so `visible` is all ones and the flag is kept as `occluded`.
  LSPET  (14, 3, 10000): columns x, y, flag; flag 1 = annotated, 0 = missing (junk
         coordinates, set to 0 here and `visible` = 0).

Protocol: LSP images 1..1000 train, 1001..2000 test; LSPET is training data only.
Coordinates are shifted by -1 to the 0-based pixel-centre convention (docs/design.md).
"""

import io
import logging

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jhpe import geometry
from jhpe.data.builders import common

LSP_URL = 'http://sam.johnson.io/research/lsp_dataset.zip'
LSPET_URL = 'http://sam.johnson.io/research/lspet_dataset.zip'
NUM_JOINTS = 14

_CITATION_LSP = """@inproceedings{Johnson10,
  title = {Clustered Pose and Nonlinear Appearance Models for Human Pose Estimation},
  author = {Johnson, Sam and Everingham, Mark},
  booktitle = {BMVC}, year = {2010}}"""
_CITATION_LSPET = """@inproceedings{Johnson11,
  title = {Learning Effective Human Pose Estimation from Inaccurate Annotation},
  author = {Johnson, Sam and Everingham, Mark},
  booktitle = {CVPR}, year = {2011}}"""

# Annotation errors of the official LSPET archive, fixed openly rather than failing the
# build or dropping the image: (1-based image number, joint index) -> why.
LSPET_ERRATA = {
    (8075, 1): 'right knee annotated at x=386 in a 241 px wide image: marked invisible',
}


def load_joints(archive, path, layout, num_images):
  """Reads `joints.mat` -> (joints (N, J, 2) 0-based px, flags (N, J)).

  Args:
    archive: the open zipfile.
    path: the archive path (for errors).
    layout: 'lsp' for (3, 14, N) or 'lspet' for (14, 3, N).
    num_images: the expected N.
  """
  raw = common.read_member(archive, path, 'joints.mat')
  try:
    mat = scipy.io.loadmat(io.BytesIO(raw))
  except Exception as e:
    raise ValueError(f'{path}: joints.mat is not a readable MATLAB file ({e}).') from e
  if 'joints' not in mat:
    raise ValueError(f'{path}: joints.mat has no variable `joints` (has {sorted(mat)}).')
  joints = np.asarray(mat['joints'], np.float64)
  expected = (3, NUM_JOINTS, num_images) if layout == 'lsp' else (NUM_JOINTS, 3, num_images)
  if joints.shape != expected:
    raise ValueError(
        f'{path}: joints.mat `joints` has shape {joints.shape}, expected {expected} '
        f'(the official {layout.upper()} layout).')
  # -> (N, J, 3) with columns x, y, flag.
  joints = joints.transpose(2, 1, 0) if layout == 'lsp' else joints.transpose(2, 0, 1)
  return joints[..., :2] - 1.0, joints[..., 2]


class _LeedsBuilder(common.PoseBuilder):
  """Common code of the LSP and LSPET builders."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  _ARCHIVE = ''
  _URL = ''
  _LAYOUT = ''
  _NUM_IMAGES = 0
  _ID_DIGITS = 4

  def _open(self, dl_manager):
    manual_dir = common.manual_dir_of(self, dl_manager)
    return common.open_archive(manual_dir, self._ARCHIVE, self._URL, dl_manager)

  def _generate_examples(self, archive, path, joints, flags, numbers):
    counter = common.SkipCounter(self.skip_bad_examples, self.name)
    self.skipped = counter.skipped
    for n in numbers:  # 1-based image numbers.
      name = f'im{n:0{self._ID_DIGITS}d}'
      member = f'images/{name}.jpg'
      where = f'{path}:{member} (index {n - 1})'
      try:
        data = common.read_member(archive, path, member)
        size = common.image_size(data, where)
        pts, visible, extra = self._annotation(joints[n - 1], flags[n - 1], n)
        common.check_example(pts, visible, size, where)
      except common.BadExampleError as e:
        counter.handle(e)
        continue
      center, scale = geometry.person_center_scale(pts, visible)
      yield n, dict(id=name, image=data, joints=pts.astype(np.float32),
                    visible=visible.astype(np.float32), center=center, scale=scale,
                    **extra)
    if counter.skipped:
      logging.warning('%s: skipped %d bad examples.', self.name, len(counter.skipped))


class Lsp(_LeedsBuilder):
  """Leeds Sports Pose: 2000 images, 1000 train + 1000 test, 14 joints."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place lsp_dataset.zip (from {LSP_URL}) in the manual_dir.')
  _ARCHIVE = 'lsp_dataset.zip'
  _URL = LSP_URL
  _LAYOUT = 'lsp'
  _NUM_IMAGES = 2000
  _ID_DIGITS = 4

  def _info(self):
    return self.dataset_info_from_configs(
        description='Leeds Sports Pose (LSP), person-centric 14 joints.',
        features=common.pose_features(
            NUM_JOINTS,
            occluded=tfds.features.Tensor(shape=(NUM_JOINTS,), dtype=np.float32)),
        homepage='http://sam.johnson.io/research/lsp.html',
        citation=_CITATION_LSP,
        # Stored in key (image number) order: a split's position i is a fixed image on
        # every machine, and evaluation order is deterministic.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    archive, path = self._open(dl_manager)
    joints, flags = load_joints(archive, path, 'lsp', self._NUM_IMAGES)
    return {
        'train': self._generate_examples(archive, path, joints, flags, range(1, 1001)),
        'test': self._generate_examples(archive, path, joints, flags, range(1001, 2001)),
    }

  def _annotation(self, pts, flag, n):
    del n
    # Every LSP joint is annotated; the flag marks occlusion.
    return pts, np.ones(NUM_JOINTS), {'occluded': flag.astype(np.float32)}


class Lspet(_LeedsBuilder):
  """LSP extended training set: 10,000 images (training only), 14 joints."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place lspet_dataset.zip (from {LSPET_URL}) in the manual_dir.')
  _ARCHIVE = 'lspet_dataset.zip'
  _URL = LSPET_URL
  _LAYOUT = 'lspet'
  _NUM_IMAGES = 10000
  _ID_DIGITS = 5

  def _info(self):
    return self.dataset_info_from_configs(
        description='LSP extended training set (LSPET), person-centric 14 joints.',
        features=common.pose_features(NUM_JOINTS),
        homepage='http://sam.johnson.io/research/lspet.html',
        citation=_CITATION_LSPET,
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    archive, path = self._open(dl_manager)
    joints, flags = load_joints(archive, path, 'lspet', self._NUM_IMAGES)
    return {'train': self._generate_examples(archive, path, joints, flags, range(1, 10001))}

  def _annotation(self, pts, flag, n):
    visible = (flag > 0.5).astype(np.float32)
    for (number, joint), why in LSPET_ERRATA.items():
      if number == n and visible[joint]:
        logging.info('lspet im%05d: %s', n, why)
        visible[joint] = 0.
    # Missing joints carry junk coordinates: zero them so no NaN or outlier leaks out.
    pts = np.where(visible[:, None] > 0, pts, 0.)
    return pts, visible, {}
