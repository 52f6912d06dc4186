r"""The predict command line: `jhpe-predict` / `python -m jhpe.predict`.

  jhpe-predict photo.jpg                          # the shipped model, ./predict/
  jhpe-predict --workdir=DIR --decode=taylor --noflip_test photos/ clip.mp4
  jhpe-predict --box=40,10,80,200 photo.jpg       # one person, its box
  jhpe-predict --boxes=boxes.json group.jpg       # several people: one prediction per box

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


def parse_box(text):
  """'x,y,w,h' -> [x, y, w, h] (ValueError naming --box)."""
  try:
    box = [float(v) for v in text.split(',')]
  except ValueError:
    box = []
  if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
    raise ValueError(f'--box={text}: expected x,y,w,h in pixels with w, h > 0.')
  return box


def read_boxes(path, image_paths, score_threshold=0.0):
  """--boxes=FILE -> {image path: [[x, y, w, h], ...]} for the images given.

  The file is either {image file name: [[x, y, w, h], ...]} (a name as given or its base
  name) or a COCO results list [{'image_id', 'bbox', 'score'}] (a detector's person boxes,
  those scored >= `score_threshold`), matched to images named by their id as COCO's are
  (000000000139.jpg is image_id 139). An image with no entry has no person.
  """
  from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top  # Light.
  data = files.read_json(path, f'--boxes={path}')
  out = {p: [] for p in image_paths}
  if isinstance(data, list):
    by_id = {}
    for b in coco_eval.read_person_boxes(path, score_threshold, flag='--boxes',
                                         entries=data):
      by_id.setdefault(b['image_id'], []).append(b['bbox'].tolist())
    for p in image_paths:
      stem = os.path.splitext(os.path.basename(p))[0]
      if stem.isdigit():
        out[p] = by_id.get(int(stem), [])
  elif isinstance(data, dict):
    for p in image_paths:
      boxes = data.get(p, data.get(os.path.basename(p), []))
      try:
        out[p] = [parse_box(','.join(str(v) for v in b)) for b in boxes]
      except (TypeError, ValueError):
        raise ValueError(f'--boxes={path}: the boxes of {os.path.basename(p)!r} must be '
                         f'[[x, y, w, h], ...] with w, h > 0, got {str(boxes)[:80]}.'
                         ) from None
  else:
    raise ValueError(f'--boxes={path}: expected {{image name: [[x, y, w, h], ...]}} or a '
                     'COCO results list [{"image_id", "bbox", "score"}].')
  if image_paths and not any(out.values()):
    raise ValueError(f'--boxes={path}: no box for any of the {len(image_paths)} images '
                     '(keys are image file names; COCO results match images named by '
                     'their image_id).')
  return out


def predict_files(predictor, image_paths, output_dir, log=print, boxes=None):
  """The CLI's work on images: predicts each, writes overlays and predictions.json.

  Every image's header is read before anything is written, so a missing or unreadable
  image fails before touching `output_dir`; no output ever replaces an input.

  Args:
    boxes: optional {image path: [[x, y, w, h], ...]}: the people of each image (one
      prediction per box, all drawn); without, the whole image is the person.

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
    if boxes is None:
      out = predictor(path)
      people = [(None, out['joints'], out['confidence'])]
    else:
      out = predictor.predict_people(path, boxes[path])
      people = list(zip(out['boxes'].tolist(), out['joints'], out['confidence']))
    seconds = time.perf_counter() - start
    image = inference.read_image(path)
    png = os.path.join(output_dir, name)
    viz.plot_skeleton(image, np.stack([j for _, j, _ in people]) if people else np.zeros(
        (0, predictor.num_joints, 2)), predictor.skeleton, title=os.path.basename(path),
                      path=png, boxes=None if boxes is None else boxes[path]).clear()
    first = not records
    for box, joints, confidence in people:  # One prediction per person (box).
      records.append({'image': os.path.abspath(path), 'overlay': png,
                      **({} if box is None else {'box': np.round(box, 2).tolist()}),
                      'joints': np.round(joints, 3).tolist(),
                      'confidence': np.round(confidence, 5).tolist(),
                      'seconds': round(seconds / max(len(people), 1), 4)})
    # The first image's time includes compiling the model for this batch shape.
    shown = (f'mean confidence {float(np.mean(out["confidence"])):.2f}' if people
             else 'no person box')
    log(f'{path}: {png}  {len(people)} {"person" if len(people) == 1 else "people"}, '
        f'{shown}  {1000 * seconds:.0f} ms{" (with compilation)" if first else ""}')
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
    if f.box and f.boxes:
      raise ValueError('give --box (one person box for every image) or --boxes=FILE, not '
                       'both.')
    boxes = None
    if f.box:
      box = parse_box(f.box)
      boxes = {p: [box] for p in images}
    elif f.boxes:
      boxes = read_boxes(f.boxes, images, f.box_score_threshold)
    print(f'{model}: step {predictor.step}, flip test {predictor.flip_test}, decode '
          f'{predictor.decode}, scales {",".join(map(str, predictor.test_scales))}',
          flush=True)
    if images:
      print(predict_files(predictor, images, output, boxes=boxes), flush=True)
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
  flags.DEFINE_string('box', None, 'Images: the person box x,y,w,h in pixels (default: '
                      'the whole image is the person).')
  flags.DEFINE_string('boxes', None, 'Images: a JSON of person boxes, several per image: '
                      '{"image.jpg": [[x, y, w, h], ...]} or a detector\'s COCO results '
                      '[{"image_id", "bbox", "score"}] (images named by their id). One '
                      'prediction per box; all drawn.')
  flags.DEFINE_float('box_score_threshold', 0.0, '--boxes in COCO results format: keep '
                     'the boxes scored at least this.')
  flags.DEFINE_bool('verbose', False, 'Show the libraries\' logging (JAX, orbax, absl).')
  app.run(_main)
