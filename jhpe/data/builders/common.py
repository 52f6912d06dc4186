"""Shared pieces of the pose dataset builders: features, checks, archives (person boxes: `jhpe.geometry`).

Every builder stores the same example layout (docs/design.md):

  id        str             the image (and person) identity, e.g. 'im1001'
  image     bytes           the original JPEG file, stored as a scalar object tensor so that
                            building and reading need no TensorFlow
  joints    (J, 2) float32  original-image pixels, 0-based, pixel centres at integers
  visible   (J,) float32    1 if the joint is annotated (counts in training and metrics)
  center    (2,) float32    person centre in original pixels
  scale     () float32      person size in pixels: the host crop maps `scale` px to the
                            canvas side (so it already holds the margin around the person)

plus dataset-specific metric fields (LSP `occluded`, MPII `head_box`, COCO `bbox`, `area`).

Bad input never becomes a silent wrong sample: `check_example` raises `BadExampleError`
naming the file and the index; builders skip and count such examples only when built with
`skip_bad_examples=True`.
"""

import io
import logging
import os
import sys
import time
import zipfile

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# A visible joint may lie this many pixels outside the image (annotators click on the
# border of tightly cropped images); further out is an annotation error.
OUTSIDE_TOLERANCE_PX = 2.0


class BadExampleError(ValueError):
  """An example that cannot be stored or read faithfully (names the file and index)."""


class PoseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The builders' shared constructor: where the official files are, and bad-example policy.

  Not a dataset itself (`skip_registration`); each subclass sets VERSION, _info, etc.
  """

  def __init__(self, *, skip_bad_examples=False, manual_dir=None, **kwargs):
    """skip_bad_examples: skip and count bad examples (else raise, naming them);
    manual_dir: the folder holding the official files (else the download config's, else
    `jhpe.datasets.default_manual_dir()`). The files are array_record by default, which
    builds and reads without TensorFlow (TFDS's default, tfrecord, needs it)."""
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    self.manual_dir = manual_dir
    self.skip_bad_examples = skip_bad_examples
    self.skipped = []
    self._build_start = None

  # TFDS prints 'Downloading and preparing dataset Unknown size (download: Unknown size,
  # ...)' and 'Dataset ... downloaded and prepared'; a build from local archives says
  # what it does instead.
  def _log_download_bytes(self):
    self._build_start = time.time()
    print(f'Building dataset {self.name}'
          f'{"/" + self.builder_config.name if self.builder_config else ""} into '
          f'{self.data_dir} (once; later runs reuse it)...', file=sys.stderr, flush=True)

  def _log_download_done(self):
    took = f' in {time.time() - self._build_start:.0f} s' if self._build_start else ''
    print(f'Built dataset {self.name}{took}.', file=sys.stderr, flush=True)


def pose_features(num_joints, **extra):
  """The TFDS features of one example (no tfds.features.Image: it imports TensorFlow)."""
  features = {
      'id': tfds.features.Text(),
      'image': tfds.features.Tensor(shape=(), dtype=np.object_),
      'joints': tfds.features.Tensor(shape=(num_joints, 2), dtype=np.float32),
      'visible': tfds.features.Tensor(shape=(num_joints,), dtype=np.float32),
      'center': tfds.features.Tensor(shape=(2,), dtype=np.float32),
      'scale': tfds.features.Tensor(shape=(), dtype=np.float32),
  }
  features.update(extra)
  return tfds.features.FeaturesDict(features)


def image_size(data, where):
  """Decodes JPEG bytes fully (corrupt or truncated files fail here) -> (width, height).

  `where` names the file and index in the error. Decoding at 1/8 scale (`draft`) still
  reads the whole entropy-coded stream, so truncation is caught, at a fraction of the cost.
  """
  try:
    with Image.open(io.BytesIO(data)) as img:
      size = img.size
      img.draft('RGB', (max(1, size[0] // 8), max(1, size[1] // 8)))
      img.load()
  except Exception as e:  # PIL raises several types (OSError, SyntaxError, ...).
    raise BadExampleError(f'{where}: cannot decode the image ({e}).') from e
  return size


def check_example(joints, visible, size, where, tolerance=OUTSIDE_TOLERANCE_PX):
  """Validates the annotation of one person; raises BadExampleError naming `where`.

  Args:
    joints: (J, 2) original 0-based pixels.
    visible: (J,) 1 where annotated.
    size: (width, height) of the image.
    where: 'file, index' text for the error.
    tolerance: pixels a visible joint may lie outside the image.
  """
  joints = np.asarray(joints)
  visible = np.asarray(visible)
  if not np.all(np.isfinite(joints[visible > 0])):
    raise BadExampleError(f'{where}: non-finite coordinates of an annotated joint.')
  if not np.any(visible > 0):
    raise BadExampleError(f'{where}: no annotated joint (all invisible).')
  w, h = size
  pts = joints[visible > 0]
  outside = ((pts[:, 0] < -0.5 - tolerance) | (pts[:, 1] < -0.5 - tolerance)
             | (pts[:, 0] > w - 0.5 + tolerance) | (pts[:, 1] > h - 0.5 + tolerance))
  if np.any(outside):
    idx = np.nonzero(visible > 0)[0][outside]
    raise BadExampleError(
        f'{where}: annotated joint(s) {idx.tolist()} at {joints[idx].tolist()} lie outside '
        f'the {w}x{h} image.')


def confined_name(name, where):
  """An image name read from an annotation file, checked to stay inside its image folder.

  The name is joined to the folder (or the archive's): an absolute name, a `..`
  component or a NUL would read a file outside it. Raises BadExampleError naming it.
  """
  name = str(name)
  parts = name.replace('\\', '/').split('/')
  if not name or '\x00' in name or os.path.isabs(name) or name.startswith(('/', '\\')) \
      or '..' in parts or (len(name) > 1 and name[1] == ':'):
    raise BadExampleError(f'{where}: image name {name!r} is not a relative path inside '
                          'the image folder (absolute, or with a .. component).')
  return name


class SkipCounter:
  """Raises bad examples, or logs and counts them when `skip` is set."""

  def __init__(self, skip, name):
    self.skip = skip
    self.name = name
    self.skipped = []  # (where, reason)

  def handle(self, error):
    if not self.skip:
      raise BadExampleError(
          f'{error} Fix or remove it, or build with skip_bad_examples=True to skip and '
          'count such examples.') from error
    self.skipped.append(str(error))
    logging.warning('%s: skipping a bad example (%d so far): %s', self.name,
                    len(self.skipped), error)


def open_archive(manual_dir, filename, url, dl_manager=None):
  """Opens a zip archive from `manual_dir`, else downloads it; clear errors otherwise.

  With a `manual_dir` given, the archive must be there (no download is attempted: the
  user pointed at a folder); without one, `dl_manager` downloads `url`.

  Returns:
    (zipfile.ZipFile, path).
  """
  path = os.path.join(os.fspath(manual_dir), filename) if manual_dir else None
  if path is None or not os.path.exists(path):
    if dl_manager is None or manual_dir is not None:
      raise FileNotFoundError(
          f'Archive {filename!r} not found at {path!r}. Download it from {url} and place it '
          'there (or pass manual_dir=the folder that holds it).')
    try:
      path = os.fspath(dl_manager.download(url))
    except Exception as e:  # No network, a changed address, a checksum error...
      raise FileNotFoundError(
          f'Archive {filename!r} not found at {path!r} and downloading it from {url} '
          f'failed ({type(e).__name__}: {e}). Download it by hand into that folder '
          '(pass manual_dir=the folder).') from e
  try:
    return zipfile.ZipFile(path), path
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(
        f'Archive {path!r} is not a readable zip file ({e}): truncated or corrupt? '
        f'Download it again from {url}.') from e


def read_member(archive, path, member):
  """Reads one member of a zip; a truncated archive or a missing member names both."""
  try:
    return archive.read(member)
  except KeyError as e:
    raise BadExampleError(f'{path}: no member {member!r} in the archive.') from e
  except (zipfile.BadZipFile, OSError, EOFError, zlib_error()) as e:
    raise ValueError(
        f'Archive {path!r}: cannot read {member!r} ({e}): the archive is truncated or '
        'corrupt; download it again.') from e


def zlib_error():
  import zlib  # pylint: disable=g-import-not-at-top
  return zlib.error


def manual_dir_of(builder, dl_manager):
  """The builder's own `manual_dir`, else TFDS's `dl_manager.manual_dir` when it exists,
  else `jhpe.datasets.default_manual_dir()` ($JHPE_MANUAL_DIR, ../shared/data), else None."""
  if getattr(builder, 'manual_dir', None):
    return os.fspath(builder.manual_dir)
  try:
    return os.fspath(dl_manager.manual_dir)
  except (AssertionError, ValueError):  # TFDS asserts when it is absent or empty.
    from jhpe import datasets  # pylint: disable=g-import-not-at-top
    return datasets.default_manual_dir()
