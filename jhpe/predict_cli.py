r"""The predict command line: `jhpe-predict` / `python -m jhpe.predict`.

  jhpe-predict photo.jpg                          # the shipped model, ./predict/
  jhpe-predict --workdir=DIR --decode=taylor --noflip_test photos/ clip.mp4

Inputs are image files, folders (their image and video files, in name order) and videos.
Images: one overlay PNG each and `predictions.json` (joints in original pixels, confidences,
seconds per image); videos: `jhpe.video`. Test-time settings default to the model's own.
The console shows one line per image (its time); --verbose shows the libraries' logging.
Bad input is one line `jhpe.predict: error: ...` naming the file or flag, exit status 1,
before anything is written.
"""

import os
import sys
import time
import warnings

import numpy as np

from jhpe import files
from jhpe import inference
from jhpe.predict import DEFAULT_MODEL, load

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                    '.ppm', '.pgm')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')

def overlay_names(paths):
  """One distinct overlay name per image: im0001.jpg -> im0001_pose.png; a second x.jpg
  (from another folder) -> x_pose_1.png, whatever the other inputs are called."""
  names, used = [], set()
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0] or 'image'
    name, k = f'{stem}_pose.png', 0
    while name in used:
      k += 1
      name = f'{stem}_pose_{k}.png'
    used.add(name)
    names.append(name)
  return names


def _check_outputs(image_paths, output_dir, names):
  """Refuses an output folder where an overlay or predictions.json would replace an input
  (say `--output` is the images' own folder and an image is called x_pose.png)."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f'--output={output_dir} is a file, not a folder.')
  inputs = {os.path.realpath(p) for p in image_paths}
  for name in [*names, 'predictions.json']:
    target = os.path.realpath(os.path.join(output_dir, name))
    if target in inputs:
      raise ValueError(f'writing {target} would replace an input image; choose another '
                       '--output folder.')


def expand_inputs(paths):
  """Files and folders -> (image files, video files), folders listed in name order.

  A folder contributes its files with an image or video extension (not recursive);
  other files in it are skipped. A path that does not exist is a FileNotFoundError.
  """
  images, videos = [], []
  for path in paths:
    if os.path.isdir(path):
      entries = sorted(os.path.join(path, n) for n in os.listdir(path))
      files = [e for e in entries if os.path.isfile(e)]
    elif os.path.isfile(path):
      files = [path]
    else:
      raise FileNotFoundError(f'input {path!r} does not exist.')
    for f in files:
      ext = os.path.splitext(f)[1].lower()
      if ext in VIDEO_EXTENSIONS:
        videos.append(f)
      elif ext in IMAGE_EXTENSIONS or f == path:  # A file named directly is tried.
        images.append(f)
  return images, videos


def predict_files(predictor, image_paths, output_dir, log=print):
  """The CLI's work on images: predicts each, writes overlays and predictions.json.

  Every image's header is read before anything is written, so a missing or unreadable
  image fails before touching `output_dir`; no output ever replaces an input.

  Returns:
    The path of predictions.json.
  """
  from jhpe import viz  # pylint: disable=g-import-not-at-top
  for path in image_paths:  # Fail early, naming the file.
    inference.encoded_size(inference.read_bytes(path), f'image {path!r}')
  names = overlay_names(image_paths)
  _check_outputs(image_paths, output_dir, names)
  os.makedirs(output_dir, exist_ok=True)
  records = []
  for path, name in zip(image_paths, names):
    start = time.perf_counter()
    out = predictor(path)
    seconds = time.perf_counter() - start
    image = inference.read_image(path)
    png = os.path.join(output_dir, name)
    viz.plot_skeleton(image, out['joints'], predictor.skeleton,
                      title=os.path.basename(path), path=png).clear()
    records.append({'image': os.path.abspath(path), 'overlay': png,
                    'joints': np.round(out['joints'], 3).tolist(),
                    'confidence': np.round(out['confidence'], 5).tolist(),
                    'seconds': round(seconds, 4)})
    # The first image's time includes compiling the model for this batch shape.
    log(f'{path}: {png}  mean confidence {float(np.mean(out["confidence"])):.2f}  '
        f'{1000 * seconds:.0f} ms{" (with compilation)" if len(records) == 1 else ""}')
  out_path = os.path.join(output_dir, 'predictions.json')
  files.write_json(out_path, {
      'model': predictor.source, 'step': predictor.step,
      'flip_test': predictor.flip_test, 'decode': predictor.decode,
      'test_scales': list(predictor.test_scales), 'skeleton': predictor.skeleton.name,
      'joint_names': list(predictor.skeleton.joint_names),
      'coordinates': 'original image pixels (x, y), upright (EXIF applied), pixel centres '
                     'at integers',
      'predictions': records})
  return out_path


def _quiet():
  """Keeps the console to the results: JAX's backend probing, orbax and absl chatter off."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)
  for name in ('jax', 'jax._src.xla_bridge', 'orbax', 'absl', 'tensorstore'):
    logging.getLogger(name).setLevel(logging.ERROR)
  warnings.filterwarnings('ignore', module='orbax')


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f.verbose:
    _quiet()
  try:
    inputs = argv[1:]
    if not inputs:
      raise ValueError('no INPUT given: pass image files, folders of images or videos.')
    images, videos = expand_inputs(inputs)
    if not images and not videos:
      raise ValueError(f'no image or video found in {inputs}.')
    output = f.output or (os.path.join(f.workdir, 'predict') if f.workdir else 'predict')
    if os.path.exists(output) and not os.path.isdir(output):  # Before loading the model.
      raise ValueError(f'--output={output} is a file, not a folder.')
    which = int(f.which) if f.which.isdigit() else f.which
    scales = None if f.test_scales is None else [float(s) for s in f.test_scales]
    model = f.workdir or f.model
    predictor = load(model, which=which, flip_test=f.flip_test, decode=f.decode,
                     test_scales=scales)
    print(f'{model}: step {predictor.step}, flip test {predictor.flip_test}, decode '
          f'{predictor.decode}, scales {",".join(map(str, predictor.test_scales))}',
          flush=True)
    if images:
      print(predict_files(predictor, images, output), flush=True)
    for video in videos:
      from jhpe import video as video_lib  # pylint: disable=g-import-not-at-top
      out = video_lib.predict_video(predictor, video, output,
                                    smoothing=True if f.smoothing else None)
      print(f'{video}: {out["video"]}, {out["jsonl"]} ({out["frames"]} frames)', flush=True)
  except (OSError, ValueError) as e:  # Missing/unreadable files, bad workdir or setting.
    sys.exit(f'jhpe.predict: error: {e}')


def run():
  """Defines the flags and runs the command line."""
  # Flags are defined here, not at import time: `jhpe.load` imports this module, and
  # experiments/ define their own --workdir. The CPU defaults are the entry point's to set.
  from jhpe import cpu_defaults  # pylint: disable=g-import-not-at-top
  cpu_defaults.apply()
  from jhpe import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # JHPE_COMPILATION_CACHE moves it ('' turns it off).
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'A training workdir (config.json, checkpoints/); '
                      'default: the shipped --model.')
  flags.DEFINE_string('model', DEFAULT_MODEL, 'A shipped model (jhpe/pretrained/) used '
                      'when no --workdir is given.')
  flags.DEFINE_string('output', None, "Output directory (default: WORKDIR/predict, or "
                      "./predict with a shipped model).")
  flags.DEFINE_string('which', 'latest', "Checkpoint: 'latest', 'best' or a step.")
  flags.DEFINE_bool('flip_test', None, "Average with the mirrored image (default: the "
                    "run's own setting).")
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum('decode', None, config_lib.DECODE_METHODS,
                    "Heatmap decoding (default: the run's own).")
  flags.DEFINE_list('test_scales', None, "Multi-scale test factors, e.g. 0.8,1,1.2 "
                    "(default: the run's own).")
  flags.DEFINE_bool('smoothing', False, 'Videos: One-Euro temporal smoothing of the '
                    'joints (jhpe.video).')
  flags.DEFINE_bool('verbose', False, 'Show the libraries\' logging (JAX, orbax, absl).')
  app.run(_main)
