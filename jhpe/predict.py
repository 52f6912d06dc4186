r"""Inference: a `Predictor` built from a training workdir, and the predict command line.

  predictor = jhpe.load('workdirs/hourglass_lsp')          # latest checkpoint, flip test on
  out = predictor(image)                                   # whole image = the person box
  out = predictor(image, box=(x, y, w, h))                 # or center=(x, y), scale=s
  out['joints']       # (J, 2) float32, original pixels (x, y), pixel centres at integers
  out['confidence']   # (J,) float32, the decoded heatmap peak (1.0 for regression models)

  python -m jhpe.predict --workdir=DIR [--output=DIR] IMAGE...

writes `predictions.json` (joints and confidences per image) and one overlay PNG per image.

The way from an image to joints is the evaluation's (docs/design.md): cut an S x S canvas
around the person with the data pipeline's `crop` (the person box's longest side times the
dataset margin maps to S pixels), run the model, decode the last stage (averaged with the
mirrored image's output when the flip test is on) with `jhpe.train.steps.predict_canvas`,
and map canvas pixels back to the original image through the inverse crop.
`predict_batch` is the device part as one pure, jittable function.

Images: (H, W, 3) uint8 RGB. Grey (H, W) or (H, W, 1) images are repeated to RGB, RGBA drops
its alpha channel (no compositing), any other channel count or a non-uint8 dtype is a
ValueError naming the shape or dtype.
"""

import functools
import json
import os
import sys
import tempfile

import jax
import numpy as np
from PIL import Image

from jhpe import geometry
from jhpe.data import common as data_common
from jhpe.data import pipeline
from jhpe.train import config as config_lib
from jhpe.train import steps

# Images per forward pass of the CLI and `Predictor.predict_batch`; smaller batches are
# padded to the next power of two, so at most log2(MAX_BATCH) + 1 shapes are compiled.
MAX_BATCH = 16


def predict_batch(variables, images, canvas_to_original, *, model, config,
                  flip_permutation):
  """Joints in original pixels for a batch of canvases: the evaluation's prediction.

  The model, decoding and flip test are `jhpe.train.steps.predict_canvas`, the function
  the eval step runs, so a predictor and an evaluation give the same joints.

  Args:
    variables: {'params', 'batch_stats'?}.
    images: (B, S, S, 3) uint8 canvases.
    canvas_to_original: (B, 3, 3) float32, the inverse of each canvas's crop matrix.
    model: a jhpe model.
    config: the run's `Config` (`decode`, `flip_test`).
    flip_permutation: (J,) `Skeleton.flip_permutation`.

  Returns:
    joints (B, J, 2) float32 in original pixels, confidence (B, J) float32 (the decoded
    heatmap peak; ones for regression models).
  """
  joints, confidence, _ = steps.predict_canvas(
      variables, steps.images_to_float(images), model=model, config=config,
      flip_permutation=flip_permutation)
  return geometry.apply_affine(canvas_to_original, joints), confidence


# ----------------------------------------------------------------------------------------
# Host side: images, person boxes, canvases.
# ----------------------------------------------------------------------------------------


def to_rgb(image, name='image'):
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8 RGB.

  Grey is repeated over the three channels; RGBA drops alpha (documented conversions).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'{name} must be uint8 (0..255), got dtype {image.dtype}; convert a '
                     f'float image in [0, 1] with (image * 255).round().astype(np.uint8).')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
    raise ValueError(f'{name} must have shape (H, W, 3) (or grey (H, W), (H, W, 1), or '
                     f'RGBA (H, W, 4)), got {image.shape}.')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def read_image(path):
  """Reads an image file as (H, W, 3) uint8 RGB (grey repeated, alpha dropped).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a readable image (the message names it).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image {path!r} does not exist (or is not a file).')
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'image {path!r} is not a readable image: {e}') from None


def person_center_scale(image_shape, box=None, center=None, scale=None):
  """The person's centre (2,) and size () in original pixels, as the datasets store them.

  Args:
    image_shape: (H, W, ...) of the image.
    box: optional person box (x, y, w, h) in pixels (COCO's convention: (0, 0, W, H) is
      the whole image); its longest side times the dataset margin becomes the canvas side.
    center, scale: alternatively the person's centre (x, y) and size in pixels (`scale`
      pixels map to the canvas side, as the stored examples' `scale`).
    With neither, the whole image is the person box: a square around the image's centre.

  Returns:
    center (2,) float32 and scale () float32.
  """
  if box is not None and (center is not None or scale is not None):
    raise ValueError('give either box=(x, y, w, h) or center=(x, y) and scale, not both.')
  if (center is None) != (scale is None):
    raise ValueError(f'center and scale go together; got center={center!r}, '
                     f'scale={scale!r}.')
  if center is not None:
    center = np.asarray(center, np.float32)
    if center.shape != (2,) or not np.all(np.isfinite(center)):
      raise ValueError(f'center must be a finite (x, y) pair, got {center!r}.')
    scale = np.float32(scale)
    if not np.isfinite(scale) or scale <= 0:
      raise ValueError(f'scale must be a positive number of pixels, got {scale!r}.')
    return center, scale
  if box is None:
    h, w = image_shape[:2]
    box = (0.0, 0.0, float(w), float(h))
  box = np.asarray(box, np.float32)
  if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
    raise ValueError(f'box must be (x, y, w, h) with w, h > 0, got {box!r}.')
  return data_common.box_center_scale(box)


def _padded_size(n, max_batch):
  return min(max_batch, 1 << max(0, (n - 1).bit_length()))


# ----------------------------------------------------------------------------------------
# The predictor.
# ----------------------------------------------------------------------------------------


class Predictor:
  """Pose prediction with a trained model (see the module docstring).

  Attributes:
    model: the flax module.
    variables: {'params', 'batch_stats'?}.
    config: the run's `Config` (input size, decode method, flip test).
    skeleton: the dataset's `Skeleton` (joint names, flip pairs, limbs).
    step: the checkpoint's training step (None if not from a checkpoint).
  """

  def __init__(self, model, variables, config, *, skeleton=None, flip_test=None,
               step=None, max_batch=MAX_BATCH):
    """Args: as the attributes; `flip_test` overrides `config.flip_test` if not None."""
    if flip_test is not None:
      config = config.replace(flip_test=bool(flip_test))
    self.model = model
    # On the device once, not at every call (restored checkpoints are numpy arrays).
    self.variables = jax.device_put(variables)
    self.config = config
    self.skeleton = skeleton or config_lib.skeleton_of(config)
    self.step = step
    self.max_batch = int(max_batch)
    self._options = dict(model=model, config=config,
                         flip_permutation=np.asarray(self.skeleton.flip_permutation))
    # jit compiles once per batch shape; the variables are an argument, not constants.
    self._predict = jax.jit(functools.partial(predict_batch, **self._options))
    self._predict_canvas = jax.jit(self._canvas_fn)

  @property
  def input_size(self):
    return self.config.input_size

  @property
  def flip_test(self):
    return self.config.flip_test

  @property
  def num_joints(self):
    return self.skeleton.num_joints

  def _canvas_fn(self, variables, images):
    joints, confidence, _ = steps.predict_canvas(
        variables, steps.images_to_float(images), **self._options)
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
    """One image -> its canvas (S, S, 3) uint8 and canvas_to_original (3, 3) float32."""
    image = to_rgb(image, name)
    c, s = person_center_scale(image.shape, box, center, scale)
    # The evaluation pipeline's crop, so a predictor sees the canvases a model was
    # evaluated on.
    canvas, original_to_canvas = pipeline.crop(Image.fromarray(image), c, s, self.input_size)
    return canvas, np.asarray(geometry.invert_affine(original_to_canvas), np.float32)

  def __call__(self, image, box=None, *, center=None, scale=None):
    """Predicts one person.

    Args:
      image: (H, W, 3) uint8 (grey and RGBA are converted, see the module docstring).
      box: optional person box (x, y, w, h) in pixels.
      center, scale: alternatively the person's centre (x, y) and size in pixels.

    Returns:
      {'joints': (J, 2) float32 original pixels, 'confidence': (J,) float32}.
    """
    joints, confidence = self.predict_batch(
        [image], None if box is None else [box],
        centers=None if center is None else [center],
        scales=None if scale is None else [scale])
    return {'joints': joints[0], 'confidence': confidence[0]}

  def predict_batch(self, images, boxes=None, *, centers=None, scales=None):
    """Predicts one person in each of N images.

    Args:
      images: sequence of N images (H_i, W_i, 3) uint8 (sizes may differ).
      boxes: optional N person boxes (x, y, w, h), each may be None (whole image).
      centers, scales: alternatively N centres (x, y) and N sizes in pixels.

    Returns:
      joints (N, J, 2) float32 original pixels, confidence (N, J) float32.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
      raise ValueError(f'images must be a sequence of images, got one array of shape '
                       f'{images.shape}; call predictor(image) for a single image.')
    n = len(images)
    for arg, values in (('boxes', boxes), ('centers', centers), ('scales', scales)):
      if values is not None and len(values) != n:
        raise ValueError(f'{arg} must have one entry per image ({n}), got {len(values)}.')
    joints, confidence = [], []
    for start in range(0, n, self.max_batch):
      # Canvases are cut chunk by chunk: a long list of images never sits in memory twice.
      cut = [self.prepare(images[i], None if boxes is None else boxes[i],
                          None if centers is None else centers[i],
                          None if scales is None else scales[i], name=f'images[{i}]')
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


def load(workdir, which='latest', flip_test=True):
  """A `Predictor` from a training workdir's config.json and checkpoint.

  Args:
    workdir: a training workdir (config.json and checkpoints/).
    which: 'latest', 'best' or a step number.
    flip_test: average with the mirrored image's prediction (the papers' test protocol).

  Raises:
    FileNotFoundError: `workdir` does not exist.
    ValueError: no or a bad config.json; no checkpoint, or one that does not fit the
      config (`jhpe.train.checkpoint.CheckpointError`); the messages name the path.
  """
  from jhpe.train import checkpoint  # pylint: disable=g-import-not-at-top
  from jhpe.train import state as state_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir!r} does not exist.')
  config = config_lib.load_config(workdir)
  model = config_lib.build_model(config)
  variables, step = checkpoint.restore_variables(workdir, which)
  # A checkpoint of another model or size fails here, naming the array, not in XLA.
  abstract = jax.eval_shape(
      lambda: state_lib.init_variables(jax.random.PRNGKey(0), model, config))
  checkpoint.check_variables(os.path.join(checkpoint.checkpoint_dir(workdir), str(step)),
                             variables, abstract)
  return Predictor(model, variables, config, flip_test=flip_test, step=step)


# ----------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------


def _write_json_atomic(path, data):
  """Writes JSON to a temporary file and renames it: a crash never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.predictions', suffix='.json')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(data, f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _overlay_names(paths):
  """Unique PNG names from the images' base names (im0001.jpg -> im0001.png)."""
  names, seen = [], {}
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0] or 'image'
    k = seen.get(stem, 0)
    seen[stem] = k + 1
    names.append(f'{stem}.png' if k == 0 else f'{stem}_{k}.png')
  return names


def predict_files(workdir, image_paths, output_dir, which='latest', flip_test=True):
  """The CLI's work: predicts every image, writes predictions.json and overlay PNGs.

  All images are read before anything is written, so a missing or unreadable image (or a
  workdir without a checkpoint) fails before touching `output_dir`.

  Returns:
    The path of predictions.json.
  """
  from jhpe import viz  # pylint: disable=g-import-not-at-top
  if not image_paths:
    raise ValueError('no IMAGE given: pass one or more image files.')
  images = [read_image(p) for p in image_paths]
  predictor = load(workdir, which=which, flip_test=flip_test)
  joints, confidence = predictor.predict_batch(images)
  os.makedirs(output_dir, exist_ok=True)
  records = []
  for path, name, image, j, c in zip(image_paths, _overlay_names(image_paths), images,
                                     joints, confidence):
    png = os.path.join(output_dir, name)
    viz.plot_skeleton(image, j, predictor.skeleton, title=os.path.basename(path),
                      path=png).clear()
    records.append({'image': os.path.abspath(path), 'overlay': png,
                    'joints': np.round(j, 3).tolist(),
                    'confidence': np.round(c, 5).tolist()})
  out = os.path.join(output_dir, 'predictions.json')
  _write_json_atomic(out, {
      'workdir': os.path.abspath(workdir), 'checkpoint': which, 'step': predictor.step,
      'flip_test': predictor.flip_test, 'skeleton': predictor.skeleton.name,
      'joint_names': list(predictor.skeleton.joint_names),
      'coordinates': 'original image pixels (x, y), pixel centres at integers',
      'predictions': records})
  return out


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    out = predict_files(f.workdir, argv[1:], f.output or os.path.join(f.workdir, 'predict'),
                        which=int(f.which) if f.which.isdigit() else f.which,
                        flip_test=f.flip_test)
  except (OSError, ValueError) as e:  # Missing/unreadable files, bad workdir.
    sys.exit(f'jhpe.predict: error: {e}')
  print(out)


def run():
  """Entry point of `python -m jhpe.predict` and the `jhpe-predict` script."""
  # Flags are defined here, not at import time: `jhpe.load` imports this module, and
  # experiments/ define their own --workdir.
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json, checkpoints/).',
                      required=True)
  flags.DEFINE_string('output', None, 'Output directory (default: WORKDIR/predict).')
  flags.DEFINE_string('which', 'latest', "Checkpoint: 'latest', 'best' or a step.")
  flags.DEFINE_bool('flip_test', True, 'Average with the mirrored image (test protocol).')
  app.run(_main)


if __name__ == '__main__':
  run()
