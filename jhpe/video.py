r"""Pose in a video: every frame through a predictor, an annotated video and a JSON-lines file.

  from jhpe import video
  out = video.predict_video(jhpe.load(workdir), 'clip.mp4', 'out/')
  out['video']   # out/clip_pose.mp4: the frames with the skeleton drawn on them
  out['jsonl']   # out/clip_pose.jsonl: one line per frame, in frame order:
                 # {"frame": 0, "time": 0.0, "joints": [[x, y], ...], "confidence": [...]}

Joints are in the frame's pixels (x, y), pixel centres at integers (docs/design.md), the
whole frame being the person box unless `box` is given. With `smoothing` the joints written
and drawn are One-Euro filtered (`jhpe.smoothing.OneEuroFilter`) and each line also holds the unfiltered
`raw_joints`.

Decoding and encoding: imageio's FFMPEG plugin on the ffmpeg binary that the
imageio-ffmpeg wheel carries, rather than PyAV. Both install from wheels with FFmpeg inside
and both stream frames, so memory stays bounded either way. imageio-ffmpeg is a small pure
Python wrapper around a separate ffmpeg process: nothing is compiled against FFmpeg's
libraries, so it cannot break with a new FFmpeg or Python ABI, the same code writes the
output video, and imageio is the library the tests already use to make videos. PyAV would
give each frame's own timestamp (exact times for variable frame rate video) and skip one
copy of each frame through a pipe; neither matters next to a network's forward pass. The
price of the pipe: frame times here are `index / fps`, exact for the constant frame rate of
cameras and encoders' defaults, approximate for variable frame rate video.

Memory: frames are read, predicted (`predictor.predict_batch`, `chunk_size` at a time),
drawn and written chunk by chunk; a video of any length holds one chunk in memory.

Outputs are written under temporary names in the output folder and renamed at the end, so
a failure (an unreadable frame, a full disk, Ctrl-C) leaves an earlier run's files as they
were and no half-written file under the final names. The output video has no audio track.
"""

import json
import math
import os
import tempfile
import warnings

import numpy as np
from PIL import Image
from PIL import ImageDraw

from jhpe import smoothing as smoothing_lib
from jhpe import viz

SUFFIX = '_pose'
JOINT_COLOR = (255, 230, 0)  # Yellow, as `viz.draw_skeleton`'s joints.
# What `is_video_path` calls a video (GIF stays an image: PIL reads it).
VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.wmv',
                    '.flv', '.ts', '.3gp')


def is_video_path(path):
  """Whether `path`'s extension is a video container's (for a CLI to route files)."""
  return os.path.splitext(str(path))[1].lower() in VIDEO_EXTENSIONS


# ----------------------------------------------------------------------------------------
# Drawing.
# ----------------------------------------------------------------------------------------


def _rgb255(color):
  return tuple(int(round(255 * c)) for c in color[:3])


def draw_pose(frame, joints, skeleton, *, visible=None, line_width=None):
  """The skeleton drawn on a copy of `frame` with PIL (a few ms a frame, not matplotlib's).

  Limbs are coloured by side as in `jhpe.viz` (`viz.limb_color`), joints are dots.

  Args:
    frame: (H, W, 3) uint8 RGB.
    joints: (J, 2) joints (x, y) in the frame's pixels, pixel centres at integers.
    skeleton: the `Skeleton` of `joints`.
    visible: optional (J,) mask; limbs touching a joint with visible <= 0 are not drawn.
    line_width: limb width in pixels; None scales it with the frame (2 px at 300 px).

  Returns:
    (H, W, 3) uint8, the frame with the skeleton on it.
  """
  frame = np.asarray(frame)
  joints = np.asarray(joints, np.float32)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}.')
  if joints.shape != (skeleton.num_joints, 2):
    raise ValueError(f'joints must have shape ({skeleton.num_joints}, 2) for the '
                     f'{skeleton.name} skeleton, got {joints.shape}.')
  shown = (np.ones(len(joints), bool) if visible is None
           else np.asarray(visible).reshape(-1) > 0)
  shown &= np.all(np.isfinite(joints), axis=-1)
  if line_width is None:
    line_width = max(2, int(round(min(frame.shape[:2]) / 150)))
  radius = max(1.5, 0.75 * line_width)
  image = Image.fromarray(frame)
  draw = ImageDraw.Draw(image)
  # PIL addresses pixel (i, j) by the integer point (i, j): the design's convention.
  for a, b in skeleton.limbs:
    if shown[a] and shown[b]:
      draw.line([tuple(joints[a]), tuple(joints[b])], width=line_width,
                fill=_rgb255(viz.limb_color(skeleton, (a, b))))
  for (x, y), s in zip(joints, shown):
    if s:
      draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=JOINT_COLOR)
  return np.asarray(image)


def _even(frame):
  """Pads a frame to even height and width by repeating its last row/column.

  H.264 in yuv420p (the pixel format every player reads) needs even sizes; padding keeps
  every pixel where it was, where rescaling would move the drawn joints.
  """
  h, w = frame.shape[:2]
  if h % 2 == 0 and w % 2 == 0:
    return frame
  return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge')


# ----------------------------------------------------------------------------------------
# Reading and writing.
# ----------------------------------------------------------------------------------------


def output_paths(input_path, output_dir):
  """The files `predict_video` writes: (`<stem>_pose.mp4`, `<stem>_pose.jsonl`)."""
  stem = os.path.splitext(os.path.basename(input_path))[0] or 'video'
  return (os.path.join(output_dir, stem + SUFFIX + '.mp4'),
          os.path.join(output_dir, stem + SUFFIX + '.jsonl'))


def open_video(path):
  """An imageio reader of `path` and its frame rate (frames per second).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a video ffmpeg can read, or has no usable frame rate.
  """
  try:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'jhpe.video needs imageio and imageio-ffmpeg ({e}); install them '
                      'with pip install -e ".[video]".') from None
  if not os.path.isfile(path):
    raise FileNotFoundError(f'video {path!r} does not exist (or is not a file).')
  try:
    reader = imageio.get_reader(path, format='FFMPEG')
    meta = reader.get_meta_data()
  except (OSError, RuntimeError, ValueError, IndexError, KeyError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f'video {path!r} is not a video ffmpeg can read ({first}).') from None
  fps = meta.get('fps')
  if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
    reader.close()
    raise ValueError(f'video {path!r} has no usable frame rate (ffmpeg reports fps={fps!r}).')
  return reader, float(fps)


def _chunks(reader, size, path):
  """Yields lists of at most `size` frames (H, W, 3) uint8, in order."""
  chunk = []
  index = 0
  frames = iter(reader)
  while True:
    try:
      frame = next(frames)
    except StopIteration:
      break
    except (OSError, RuntimeError, ValueError) as e:
      raise ValueError(f'video {path!r}: cannot decode frame {index}: {e}') from None
    chunk.append(np.asarray(frame, np.uint8)[..., :3])
    index += 1
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _progress_bar(enabled, total, desc):
  """tqdm (a dependency of tensorflow-datasets) on stderr, or nothing."""
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=desc, unit='frame', disable=not enabled, leave=True,
                   dynamic_ncols=True)


def _file_mode():
  """The permissions open() gives a new file: 0666 less the process's umask."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _line(index, time, joints, confidence, raw_joints=None):
  record = {'frame': index, 'time': round(time, 6),
            'joints': np.round(joints, 3).tolist(),
            'confidence': np.round(confidence, 5).tolist()}
  if raw_joints is not None:
    record['raw_joints'] = np.round(raw_joints, 3).tolist()
  return json.dumps(record, separators=(',', ':'))


def predict_video(predictor, input_path, output_dir, *, smoothing=None, box=None,
                  chunk_size=None, quality=7, progress=True):
  """Predicts the pose in every frame of a video; writes an annotated video and JSON lines.

  Args:
    predictor: a `jhpe.predict.Predictor` (`jhpe.load(workdir)`).
    input_path: a video file ffmpeg reads (mp4, mov, avi, webm, mkv, ...).
    output_dir: the folder for the outputs (created if needed); see `output_paths`.
    smoothing: None (default) for the raw per-frame joints; True for the One-Euro filter
      with its defaults; or a dict of `OneEuroFilter` arguments (min_cutoff, beta,
      d_cutoff), e.g. {'min_cutoff': 0.5, 'beta': 0.02}.
    box: optional person box (x, y, w, h) in the frame's pixels, the same for every frame;
      None: the whole frame.
    chunk_size: frames per `predict_batch` call (and in memory at once); None: the
      predictor's `max_batch` (16 if it has none).
    quality: the output video's quality, 0 (smallest) to 10 (best), imageio's scale.
    progress: show a progress bar (tqdm, on stderr).

  Returns:
    {'video': path, 'jsonl': path, 'frames': N, 'fps': float, 'size': (W, H),
     'skeleton': name, 'joint_names': [...], 'smoothing': None or the filter's arguments}.

  Each line of the JSON-lines file is one frame, in order: {"frame": index from 0, "time":
  seconds (index / fps), "joints": [[x, y] x J] frame pixels, "confidence": [J floats]}
  plus "raw_joints" (the unfiltered joints) when smoothing. The annotated video has the
  input's frame rate, H.264 in yuv420p; an odd width or height gains one repeated column
  or row (H.264 needs even sizes), which leaves every coordinate where it was.

  Raises:
    FileNotFoundError: `input_path` does not exist.
    ValueError: `input_path` is not a readable video, has no frames, or would be
      overwritten by the output; bad `smoothing`, `box` or `chunk_size`.
  """
  smoother = smoothing_lib.make_smoother(smoothing)  # Bad arguments fail before any work.
  if chunk_size is None:
    chunk_size = int(getattr(predictor, 'max_batch', 16))
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}.')
  if not (isinstance(quality, (int, float)) and 0 <= quality <= 10):
    raise ValueError(f'quality must be a number in [0, 10], got {quality!r}.')
  video_path, jsonl_path = output_paths(input_path, output_dir)
  for out in (video_path, jsonl_path):
    if os.path.exists(input_path) and os.path.abspath(out) == os.path.abspath(input_path):
      raise ValueError(f'the output {out!r} would overwrite the input video; choose '
                       f'another output folder.')
  with warnings.catch_warnings():
    # imageio starts ffmpeg with subprocess (fork, then exec at once); JAX's warning about
    # forking a multithreaded process concerns children that go on running Python.
    warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called',
                            category=RuntimeWarning)
    return _predict_video(predictor, input_path, video_path, jsonl_path, output_dir,
                          smoother=smoother, box=box, chunk_size=chunk_size,
                          quality=quality, progress=progress)


def _predict_video(predictor, input_path, video_path, jsonl_path, output_dir, *, smoother,
                   box, chunk_size, quality, progress):
  """`predict_video` after its arguments are checked."""
  skeleton = predictor.skeleton
  reader, fps = open_video(input_path)  # A bad input fails before anything is written.
  tmp_video = tmp_jsonl = lines = writer = None
  count, size = 0, None
  try:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.basename(video_path)[:-len('.mp4')]
    # Temporary names in the output folder (the same file system, so os.replace is
    # atomic); the .mp4 ending tells ffmpeg the container.
    fd, tmp_video = tempfile.mkstemp(dir=output_dir, prefix=f'.{stem}.', suffix='.tmp.mp4')
    os.close(fd)
    fd, tmp_jsonl = tempfile.mkstemp(dir=output_dir, prefix=f'.{stem}.',
                                     suffix='.tmp.jsonl')
    lines = os.fdopen(fd, 'w')
    meta = reader.get_meta_data()
    duration = meta.get('duration')
    total = (int(round(duration * fps)) if isinstance(duration, (int, float))
             and math.isfinite(duration) and duration > 0 else None)
    # macro_block_size=1: imageio would otherwise rescale to a multiple of 16; `_even`
    # pads instead.
    writer = imageio.get_writer(tmp_video, format='FFMPEG', mode='I', fps=fps,
                                codec='libx264', quality=quality, pixelformat='yuv420p',
                                macro_block_size=1, ffmpeg_log_level='error')
    with lines, _progress_bar(progress, total, os.path.basename(input_path)) as bar:
      for chunk in _chunks(reader, chunk_size, input_path):
        joints, confidence = predictor.predict_batch(
            chunk, None if box is None else [box] * len(chunk))
        for frame, raw, conf in zip(chunk, joints, confidence):
          if size is None:
            size = (frame.shape[1], frame.shape[0])
          elif (frame.shape[1], frame.shape[0]) != size:
            raise ValueError(f'video {input_path!r}: frame {count} is '
                             f'{frame.shape[1]}x{frame.shape[0]}, earlier ones '
                             f'{size[0]}x{size[1]}.')
          time = count / fps
          smooth = None if smoother is None else smoother(raw, time)
          shown = raw if smooth is None else smooth
          writer.append_data(_even(draw_pose(frame, shown, skeleton)))
          lines.write(_line(count, time, shown, conf, None if smooth is None else raw))
          lines.write('\n')
          count += 1
        bar.update(len(chunk))
    writer.close()
    writer = None
    if count == 0:
      raise ValueError(f'video {input_path!r} has no frames.')
    if os.path.getsize(tmp_video) == 0:  # ffmpeg can fail without an exception.
      raise RuntimeError(f'ffmpeg wrote nothing for {video_path!r}.')
    for tmp in (tmp_jsonl, tmp_video):
      os.chmod(tmp, _file_mode())  # mkstemp's 0600 -> what open() would have given.
    os.replace(tmp_jsonl, jsonl_path)
    os.replace(tmp_video, video_path)
  finally:
    reader.close()
    if lines is not None:
      lines.close()
    if writer is not None:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except  # The first error is the one to see.
        pass
    for tmp in (tmp_video, tmp_jsonl):
      if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)
  return {'video': video_path, 'jsonl': jsonl_path, 'frames': count, 'fps': fps,
          'size': size, 'skeleton': skeleton.name,
          'joint_names': list(skeleton.joint_names),
          'smoothing': None if smoother is None else {
              'min_cutoff': smoother.min_cutoff, 'beta': smoother.beta,
              'd_cutoff': smoother.d_cutoff}}
