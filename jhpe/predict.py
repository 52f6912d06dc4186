r"""Inference: a `Predictor` from a shipped model or a training workdir, and the predict CLI.

  predictor = jhpe.load('lsp_hourglass')                   # the shipped LSP model
  predictor = jhpe.load('workdirs/hourglass_lsp', decode='taylor')   # a run, a setting changed
  out = predictor('photo.jpg')                             # a file: whole image = the person
  out = predictor(image, box=(x, y, w, h))                 # an array, a person box
  out = predictor.predict_people('group.jpg', [(x, y, w, h), ...])  # several people
  out['joints']       # (J, 2) float32, original pixels (x, y), pixel centres at integers
  out['confidence']   # (J,) float32, the decoded heatmap peak (1.0 for regression models)

  jhpe-predict photo.jpg                        # the shipped model, no workdir needed
  jhpe-predict --workdir=DIR --decode=taylor photos/ clip.mp4

The CLI writes `predictions.json` (joints, confidences and time per image) and one overlay
PNG per image; a video gets an annotated video and one JSON line per frame (`jhpe.video`).

The way from an image to joints is the evaluation's (`jhpe.inference`): a file is decoded
and cut exactly as the evaluation pipeline cuts its examples (JPEG draft decoding for large
people included), an array is cut by the same crop; the model, flip test, multi-scale test
and decoding are `jhpe.inference.predict_canvas`, which the eval step runs. Test-time
settings (`flip_test`, `decode`, `test_scales`) default to the run's own (its config.json)
and each can be overridden in `load` and on the command line.

Images: files in any format PIL reads, turned upright by their EXIF orientation, grey,
palette, CMYK and 16-bit converted to 8-bit RGB, alpha dropped; arrays (H, W, 3) uint8 RGB,
grey (H, W) or (H, W, 1), RGBA (alpha dropped) or uint16. Anything else is a ValueError
naming the image. This module imports neither TensorFlow Datasets nor grain.
"""

import functools
import os
import warnings

import jax
import numpy as np
from PIL import Image

from jhpe import codecs
from jhpe import geometry
from jhpe import inference

# Images per forward pass of `Predictor.predict_batch`; smaller batches are padded to the
# next power of two, so at most log2(MAX_BATCH) + 1 shapes are compiled.
MAX_BATCH = 16
# Shipped models: jhpe/pretrained/<name>/ (config.json, checkpoints/, MODEL_CARD.md, eval/).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrained')
DEFAULT_MODEL = 'lsp_hourglass'
# The test-time settings `load` and the CLI may change; the rest of a run is its own.
TEST_SETTINGS = ('flip_test', 'decode', 'test_scales')


def predict_batch(variables, images, canvas_to_original, *, model, codec, flip_permutation,
                  flip_test, test_scales):
  """Joints in original pixels for a batch of canvases: the evaluation's prediction.

  Args:
    variables: {'params', 'batch_stats'?}.
    images: (B, S, S, 3) uint8 canvases.
    canvas_to_original: (B, 3, 3) float32, the inverse of each canvas's crop matrix.
    model, codec: the flax module and its codec (`jhpe.codecs.make_codec`).
    flip_permutation: (J,) `Skeleton.flip_permutation`.
    flip_test, test_scales: the test-time settings.

  Returns:
    joints (B, J, 2) float32 in original pixels, confidence (B, J) float32.
  """
  joints, confidence, _ = inference.predict_canvas(
      variables, images, model=model, codec=codec, flip_permutation=flip_permutation,
      flip_test=flip_test, test_scales=test_scales)
  return geometry.apply_affine(canvas_to_original, joints), confidence


def _padded_size(n, max_batch):
  return min(max_batch, 1 << max(0, (n - 1).bit_length()))


def _trained_on_synthetic_only(config):
  return all(name.split('/')[0] == 'synthetic' for name in config.train_datasets)


class Predictor:
  """Pose prediction with a trained model (see the module docstring).

  Attributes:
    model: the flax module.
    variables: {'params', 'batch_stats'?}.
    config: the run's `Config` with the test-time settings in use.
    skeleton: the dataset's `Skeleton` (joint names, flip pairs, limbs).
    step: the checkpoint's training step (None if not from a checkpoint).
    source: the workdir or shipped model it was loaded from (None if built directly).
  """

  def __init__(self, model, variables, config, *, skeleton=None, step=None, source=None,
               max_batch=MAX_BATCH):
    from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
    self.model = model
    # On the device once, not at every call (restored checkpoints are numpy arrays).
    self.variables = jax.device_put(variables)
    self.config = config
    self.skeleton = skeleton or config_lib.skeleton_of(config)
    self.step = step
    self.source = source
    self.max_batch = int(max_batch)
    self.codec = codecs.make_codec(model, config)
    self._options = dict(model=model, codec=self.codec,
                         flip_permutation=np.asarray(self.skeleton.flip_permutation),
                         flip_test=bool(config.flip_test),
                         test_scales=tuple(config.test_scales))
    # jit compiles once per batch shape; the variables are an argument, not constants.
    self._predict = jax.jit(functools.partial(predict_batch, **self._options))
    self._predict_canvas = jax.jit(self._canvas_fn)
    self._warned_synthetic = False

  @property
  def input_size(self):
    return self.config.input_size

  @property
  def flip_test(self):
    return self.config.flip_test

  @property
  def decode(self):
    return self.config.decode

  @property
  def test_scales(self):
    return tuple(self.config.test_scales)

  @property
  def num_joints(self):
    return self.skeleton.num_joints

  def _canvas_fn(self, variables, images):
    joints, confidence, _ = inference.predict_canvas(variables, images, **self._options)
    return joints, confidence

  def canvas_function(self):
    """f(images (B, S, S, 3) uint8) -> (joints (B, J, 2) canvas px, confidence (B, J)).

    The variables are closed over (constants when traced): what `jhpe.export` exports.
    """
    return functools.partial(self._canvas_fn, self.variables)

  def predict_canvas(self, canvases):
    """(B, S, S, 3) uint8 canvases -> joints (B, J, 2) canvas pixels, confidence (B, J)."""
    canvases = np.asarray(canvases)
    s = self.input_size
    if canvases.dtype != np.uint8 or canvases.ndim != 4 or canvases.shape[1:] != (s, s, 3):
      raise ValueError(f'canvases must be uint8 (B, {s}, {s}, 3), got {canvases.dtype} '
                       f'{canvases.shape}.')
    joints, confidence = self._predict_canvas(self.variables, canvases)
    return np.asarray(joints), np.asarray(confidence)

  def prepare(self, image, box=None, center=None, scale=None, name='image'):
    """One image -> its canvas (S, S, 3) uint8 and canvas_to_original (3, 3) float32.

    `image` is a file path or its bytes (decoded and cut as the evaluation cuts its
    examples, EXIF orientation applied), a PIL image or an array (cut by the same crop).
    """
    if isinstance(image, (str, os.PathLike, bytes)):
      if isinstance(image, bytes):
        data, where = image, name
      else:
        data, where = inference.read_bytes(os.fspath(image)), f'image {os.fspath(image)!r}'
      size = inference.encoded_size(data, where, exif_transpose=True)
      c, s = inference.person_box(size, box, center, scale)
      canvas, original_to_canvas = inference.load_canvas(
          data, c, s, self.input_size, where, exif_transpose=True)
    else:
      if isinstance(image, Image.Image):
        image = np.asarray(inference.pil_rgb(image))
      image = inference.as_rgb(image, name)
      c, s = inference.person_box(image.shape[1::-1], box, center, scale)
      canvas, original_to_canvas = inference.cut_canvas(
          Image.fromarray(image), c, s, self.input_size)
    return canvas, np.asarray(geometry.invert_affine(original_to_canvas), np.float32)

  def __call__(self, image, box=None, *, center=None, scale=None):
    """Predicts one person.

    Args:
      image: a file path, its bytes, a PIL image or an (H, W, 3) uint8 array (see the
        module docstring for the conversions).
      box: optional person box (x, y, w, h) in pixels; default the whole image.
      center, scale: alternatively the person's centre (x, y) and size in pixels.

    Returns:
      {'joints': (J, 2) float32 original pixels, 'confidence': (J,) float32}.
    """
    joints, confidence = self.predict_batch(
        [image], None if box is None else [box],
        centers=None if center is None else [center],
        scales=None if scale is None else [scale])
    return {'joints': joints[0], 'confidence': confidence[0]}

  def predict_people(self, image, boxes):
    """Predicts every person of one image from their boxes (top-down: one crop each).

    Args:
      image: a file path, its bytes, a PIL image or an array (read once).
      boxes: P person boxes (x, y, w, h) in pixels, e.g. a detector's.

    Returns:
      {'joints': (P, J, 2) float32 original pixels, 'confidence': (P, J) float32,
       'boxes': (P, 4) float32}.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) if len(boxes) else np.zeros(
        (0, 4), np.float32)
    name = 'image'
    if isinstance(image, (str, os.PathLike)):
      name = f'image {os.fspath(image)!r}'
      image = inference.read_bytes(os.fspath(image))
    elif isinstance(image, Image.Image):
      image = np.asarray(inference.pil_rgb(image))
    # Each crop is cut from the same encoded bytes or array, as the evaluation cuts each
    # person of an image.
    joints, confidence = self.predict_batch([image] * len(boxes), list(boxes),
                                            name=name)
    return {'joints': joints, 'confidence': confidence, 'boxes': boxes}

  def predict_batch(self, images, boxes=None, *, centers=None, scales=None, name=None):
    """Predicts one person in each of N images.

    Args:
      images: sequence of N images (paths, bytes, PIL images or arrays; sizes may differ).
      boxes: optional N person boxes (x, y, w, h), each may be None (whole image).
      centers, scales: alternatively N centres (x, y) and N sizes in pixels.
      name: what errors call the images (default 'images[i]').

    Returns:
      joints (N, J, 2) float32 original pixels, confidence (N, J) float32.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
      raise ValueError(f'images must be a sequence of images, got one array of shape '
                       f'{images.shape}; call predictor(image) for a single image.')
    self._warn_if_synthetic()
    n = len(images)
    for arg, values in (('boxes', boxes), ('centers', centers), ('scales', scales)):
      if values is not None and len(values) != n:
        raise ValueError(f'{arg} must have one entry per image ({n}), got {len(values)}.')
    joints, confidence = [], []
    for start in range(0, n, self.max_batch):
      # Canvases are cut chunk by chunk: a long list of images never sits in memory twice.
      cut = [self.prepare(images[i], None if boxes is None else boxes[i],
                          None if centers is None else centers[i],
                          None if scales is None else scales[i],
                          name=name or f'images[{i}]')
             for i in range(start, min(n, start + self.max_batch))]
      x = np.stack([canvas for canvas, _ in cut])
      m = np.stack([matrix for _, matrix in cut])
      real = len(x)
      pad = _padded_size(real, self.max_batch) - real
      if pad:  # Few batch shapes, few compilations.
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
        m = np.concatenate([m, np.repeat(m[-1:], pad, 0)])
      j, c = self._predict(self.variables, x, m)
      joints.append(np.asarray(j)[:real])
      confidence.append(np.asarray(c)[:real])
    if not joints:
      return (np.zeros((0, self.num_joints, 2), np.float32),
              np.zeros((0, self.num_joints), np.float32))
    return np.concatenate(joints), np.concatenate(confidence)

  def _warn_if_synthetic(self):
    if self._warned_synthetic or not _trained_on_synthetic_only(self.config):
      return
    self._warned_synthetic = True
    warnings.warn(
        f'this model ({self.source or "a Predictor"}) was trained on the synthetic figures '
        'only: on photos of people its joints are not meaningful. For photos use the '
        f'shipped model, jhpe.load({DEFAULT_MODEL!r}) (`jhpe-predict` without --workdir).',
        stacklevel=3)


# ----------------------------------------------------------------------------------------
# Loading: shipped names and workdirs.
# ----------------------------------------------------------------------------------------


def pretrained_names():
  """The shipped models' names (folders of jhpe/pretrained with a config.json)."""
  if not os.path.isdir(PRETRAINED_DIR):
    return []
  return sorted(n for n in os.listdir(PRETRAINED_DIR)
                if os.path.isfile(os.path.join(PRETRAINED_DIR, n, 'config.json')))


def resolve(name_or_workdir):
  """A workdir path, or a shipped model's name -> the folder to restore from."""
  path = os.fspath(name_or_workdir)
  if os.path.isdir(path):
    return path
  if path in pretrained_names():
    return os.path.join(PRETRAINED_DIR, path)
  raise FileNotFoundError(
      f'{path!r} is neither a workdir nor a shipped model (shipped: '
      f'{", ".join(pretrained_names()) or "none"}).')


def load(name_or_workdir=DEFAULT_MODEL, which='latest', *, flip_test=None, decode=None,
         test_scales=None):
  """A `Predictor` from a shipped model's name or a training workdir.

  Args:
    name_or_workdir: 'lsp_hourglass' (shipped, see jhpe/pretrained/*/MODEL_CARD.md) or a
      training workdir (config.json and checkpoints/).
    which: 'latest', 'best' or a step number.
    flip_test, decode, test_scales: test-time settings; None keeps the run's own
      (config.json): what its evaluation used.

  Raises:
    FileNotFoundError: neither a workdir nor a shipped name.
    ValueError: no or a bad config.json; a setting that is not allowed (named as its
      flag); no checkpoint, or one that does not fit the config
      (`jhpe.train.checkpoint.CheckpointError`); the messages name the path.
  """
  from jhpe.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = resolve(name_or_workdir)
  overrides = {k: v for k, v in zip(TEST_SETTINGS, (flip_test, decode, test_scales))
               if v is not None}
  if 'flip_test' in overrides:
    overrides['flip_test'] = bool(overrides['flip_test'])
  if 'test_scales' in overrides:
    overrides['test_scales'] = tuple(float(s) for s in overrides['test_scales'])
  config, model, variables, step = checkpoint.load_model(workdir, which, overrides)
  config.validate()  # A setting that is not allowed fails here, named as its flag.
  return Predictor(model, variables, config, step=step,
                   source=os.fspath(name_or_workdir))


def run():
  """Entry point of `python -m jhpe.predict` and the `jhpe-predict` script
  (`jhpe.predict_cli`)."""
  from jhpe import predict_cli  # pylint: disable=g-import-not-at-top
  predict_cli.run()


if __name__ == '__main__':
  run()
