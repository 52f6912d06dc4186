"""Tests of jhpe.video: the One-Euro filter, drawing, and a video through a tiny predictor."""

import json
import os

import numpy as np
import pytest

from jhpe import skeletons
from jhpe import smoothing
from jhpe import video
from jhpe import viz

imageio = pytest.importorskip('imageio.v2', reason='the video extra: pip install -e .[video]')
pytest.importorskip('imageio_ffmpeg', reason='the video extra: pip install -e .[video]')

# The tiny workdir and its predictor are built once per process, by test_predict's helpers.
try:
  import test_predict  # pylint: disable=g-import-not-at-top
except ImportError:  # tests/ imported as a package.
  from tests import test_predict  # pylint: disable=g-import-not-at-top

FPS = 10.0

# ----------------------------------------------------------------------------------------
# The One-Euro filter.
# ----------------------------------------------------------------------------------------


def _run(f, signal, fps=30.0):
  return np.stack([f(x, i / fps) for i, x in enumerate(signal)])


def test_one_euro_constant_signal_stays_constant_and_keeps_shape():
  f = smoothing.OneEuroFilter()
  joints = np.random.default_rng(0).uniform(0, 200, (14, 2)).astype(np.float32)
  out = _run(f, [joints] * 20)
  assert out.shape == (20, 14, 2) and out.dtype == np.float32
  np.testing.assert_allclose(out, np.broadcast_to(joints, out.shape), atol=1e-4)


def test_one_euro_first_sample_passes_and_reset_forgets():
  f = smoothing.OneEuroFilter(min_cutoff=0.5)
  np.testing.assert_array_equal(f(np.array([3.0, 4.0]), 0.0), [3.0, 4.0])
  assert not np.allclose(f(np.array([10.0, 10.0]), 0.1), [10.0, 10.0])  # Smoothed.
  f.reset()
  np.testing.assert_array_equal(f(np.array([10.0, 10.0]), 5.0), [10.0, 10.0])


def test_one_euro_reduces_the_jitter_of_a_still_point():
  rng = np.random.default_rng(1)
  noisy = 100.0 + rng.normal(0.0, 2.0, (300, 14, 2))
  out = _run(smoothing.OneEuroFilter(min_cutoff=1.0, beta=0.0), noisy)
  # Skip the start (the first sample passes unchanged): a 1 Hz low-pass at 30 fps keeps
  # about 1/11 of white noise's variance.
  assert out[30:].var() < 0.2 * noisy[30:].var(), (out[30:].var(), noisy[30:].var())
  np.testing.assert_allclose(out[30:].mean(), 100.0, atol=0.5)


def _frames_to_settle(out, target, tolerance=1.0):
  far = np.nonzero(np.abs(out - target) > tolerance)[0]
  return 0 if len(far) == 0 else int(far[-1]) + 1


def test_one_euro_follows_a_step_with_bounded_lag_and_beta_shortens_it():
  step = np.concatenate([np.zeros(10), np.full(60, 100.0)])[:, None]  # 100 px at frame 10.
  slow = _run(smoothing.OneEuroFilter(min_cutoff=1.0, beta=0.0), step)[10:, 0]
  fast = _run(smoothing.OneEuroFilter(min_cutoff=1.0, beta=0.05), step)[10:, 0]
  for out in (slow, fast):
    assert np.all(np.diff(out) >= -1e-9) and np.all(out <= 100.0 + 1e-6)  # No overshoot.
  # beta = 0 is a plain 1 Hz low-pass: within 1 px after ln(0.01) / ln(1 - 0.173) = 25
  # frames at 30 fps. The speed term opens the filter on the jump: much sooner.
  assert _frames_to_settle(slow, 100.0) <= 26
  assert _frames_to_settle(fast, 100.0) <= 8
  assert fast[0] > 2 * slow[0]


def test_one_euro_bad_arguments():
  with pytest.raises(ValueError, match='min_cutoff'):
    smoothing.OneEuroFilter(min_cutoff=0.0)
  with pytest.raises(ValueError, match='beta'):
    smoothing.OneEuroFilter(beta=-1.0)
  f = smoothing.OneEuroFilter()
  f(np.zeros((14, 2)), 1.0)
  with pytest.raises(ValueError, match='timestamps must increase'):
    f(np.zeros((14, 2)), 1.0)
  with pytest.raises(ValueError, match='shape'):
    f(np.zeros((16, 2)), 2.0)
  with pytest.raises(ValueError, match='unknown'):
    smoothing.make_smoother({'mincutoff': 1.0})
  assert smoothing.make_smoother(None) is None
  assert smoothing.make_smoother({'beta': 0.1}).beta == 0.1


# ----------------------------------------------------------------------------------------
# Drawing.
# ----------------------------------------------------------------------------------------


def test_draw_pose_colours_limbs_by_side_and_leaves_the_frame_alone():
  skeleton = skeletons.LSP
  frame = np.zeros((120, 100, 3), np.uint8)
  # Joints spread on a grid, far from each other.
  joints = np.stack(np.meshgrid(np.linspace(15, 85, 4), np.linspace(15, 105, 4)),
                    -1).reshape(-1, 2)[:skeleton.num_joints].astype(np.float32)
  out = video.draw_pose(frame, joints, skeleton, line_width=3)
  assert out.shape == frame.shape and out.dtype == np.uint8
  assert not frame.any()  # A copy: the input frame is unchanged.
  for j in range(skeleton.num_joints):
    x, y = np.round(joints[j]).astype(int)
    np.testing.assert_array_equal(out[y, x], video.JOINT_COLOR)
  a, b = skeleton.limbs[0]
  x, y = np.round((joints[a] + joints[b]) / 2).astype(int)
  colour = tuple(int(round(255 * c)) for c in viz.limb_color(skeleton, (a, b)))
  assert tuple(out[y, x]) == colour
  assert out[0, 99].sum() == 0  # A corner no limb crosses.
  with pytest.raises(ValueError, match=r'\(14, 2\)'):
    video.draw_pose(frame, joints[:5], skeleton)


def test_is_video_path():
  assert video.is_video_path('a/clip.MP4') and video.is_video_path('b.webm')
  assert not video.is_video_path('im0001.jpg') and not video.is_video_path('anim.gif')
  assert video.output_paths('x/clip.mov', 'out') == ('out/clip_pose.mp4',
                                                     'out/clip_pose.jsonl')


# ----------------------------------------------------------------------------------------
# A video through a tiny predictor.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def predictor(tmp_path_factory, shared_data_dir):
  return test_predict.cached_predictor(tmp_path_factory, shared_data_dir)


def _write_video(path, frames, fps=FPS):
  # yuv444p: H.264 in 4:2:0 cannot hold the odd width this test wants.
  writer = imageio.get_writer(str(path), format='FFMPEG', fps=fps, codec='libx264',
                              quality=9, pixelformat='yuv444p', macro_block_size=1,
                              ffmpeg_log_level='error')
  for frame in frames:
    writer.append_data(frame)
  writer.close()


def _read_video(path):
  reader = imageio.get_reader(str(path), format='FFMPEG')
  try:
    return np.stack([np.asarray(f) for f in reader]), reader.get_meta_data()
  finally:
    reader.close()


@pytest.fixture(scope='module')
def clip(shared_data_dir, tmp_path_factory):
  """9 frames of an LSP person drifting right, 10 fps, odd width (to be padded)."""
  images, _ = test_predict.cached_lsp_sample(shared_data_dir)
  person = images[0][:96, :80]
  frames = []
  for i in range(9):
    frame = np.full((112, 121, 3), 90, np.uint8)
    frame[8:8 + person.shape[0], 2 * i:2 * i + person.shape[1]] = person
    frames.append(frame)
  path = tmp_path_factory.mktemp('clip') / 'walk.mp4'
  _write_video(path, frames)
  return path


def test_predict_video_round_trip(predictor, clip, tmp_path):
  out = video.predict_video(predictor, str(clip), str(tmp_path), chunk_size=4,
                            progress=False)
  assert out['video'] == str(tmp_path / 'walk_pose.mp4')
  assert out['jsonl'] == str(tmp_path / 'walk_pose.jsonl')
  assert out['frames'] == 9 and out['fps'] == FPS and out['size'] == (121, 112)
  assert sorted(os.listdir(tmp_path)) == ['walk_pose.jsonl', 'walk_pose.mp4']  # No temp.
  (tmp_path / 'plain').write_text('')  # The permissions open() gives under this umask.
  mode = os.stat(tmp_path / 'plain').st_mode & 0o777
  assert [os.stat(out[k]).st_mode & 0o777 for k in ('video', 'jsonl')] == [mode, mode]
  os.unlink(tmp_path / 'plain')
  annotated, meta = _read_video(out['video'])
  assert annotated.shape == (9, 112, 122, 3)  # One repeated column: H.264 wants even.
  assert meta['fps'] == FPS
  records = [json.loads(line) for line in open(out['jsonl'])]
  assert [r['frame'] for r in records] == list(range(9))
  np.testing.assert_allclose([r['time'] for r in records], np.arange(9) / FPS)
  joints = np.array([r['joints'] for r in records], np.float32)
  confidence = np.array([r['confidence'] for r in records], np.float32)
  assert joints.shape == (9, 14, 2) and confidence.shape == (9, 14)
  assert 'raw_joints' not in records[0]
  # They are the predictor's joints on the decoded frames, in the frames' pixels: chunking
  # and the JSON rounding lose nothing that matters.
  frames, _ = _read_video(clip)
  expected, expected_conf = predictor.predict_batch(list(frames))
  np.testing.assert_allclose(joints, expected, atol=2e-3)
  np.testing.assert_allclose(confidence, expected_conf, atol=2e-5)
  # The whole frame is the person box: joints lie on the canvas cut around the frame, a
  # square of side 1.25 * max(H, W) around its centre.
  centre = np.array([(121 - 1) / 2, (112 - 1) / 2])
  assert np.all(np.abs(joints - centre) <= 0.5 * 1.25 * 121 + 1.0), joints
  # The skeleton of the JSON joints is drawn: where `draw_pose` changes a frame, the
  # annotated video's brightness is the drawing's, not the input's. (Brightness: yuv420p
  # keeps it at full resolution but halves the colour's, which smears 2 px lines.)
  luma = lambda x: np.asarray(x, np.float32) @ np.float32([0.299, 0.587, 0.114])
  drawn = np.stack([video.draw_pose(f, j, predictor.skeleton) for f, j in
                    zip(frames, joints)])
  changed = np.any(drawn != frames, axis=-1)
  assert changed.mean() > 0.01
  near = np.abs(luma(annotated[:, :, :121]) - luma(drawn))[changed].mean()
  far = np.abs(luma(annotated[:, :, :121]) - luma(frames))[changed].mean()
  assert near < far / 4, (near, far)
  # The padded column repeats the last one (to H.264's rounding).
  pad = np.abs(annotated[:, :, 121].astype(int) - annotated[:, :, 120]).mean()
  assert pad < 3, pad


def test_predict_video_smoothing_records_raw_joints(predictor, clip, tmp_path):
  out = video.predict_video(predictor, str(clip), str(tmp_path),
                            smoothing={'min_cutoff': 0.5, 'beta': 0.0}, progress=False)
  assert out['smoothing'] == {'min_cutoff': 0.5, 'beta': 0.0, 'd_cutoff': 1.0}
  records = [json.loads(line) for line in open(out['jsonl'])]
  raw = np.array([r['raw_joints'] for r in records])
  smooth = np.array([r['joints'] for r in records])
  np.testing.assert_allclose(smooth[0], raw[0], atol=1e-3)  # The first passes unchanged.
  f = smoothing.OneEuroFilter(min_cutoff=0.5, beta=0.0)
  expected = np.stack([f(j, i / FPS) for i, j in enumerate(raw)])
  np.testing.assert_allclose(smooth, expected, atol=2e-3)
  # A 0.5 Hz low-pass at 10 fps moves less from frame to frame than the raw joints.
  assert np.abs(np.diff(smooth, axis=0)).sum() < np.abs(np.diff(raw, axis=0)).sum()


class _FailingPredictor:
  """Delegates to a predictor, and fails on its second batch."""

  def __init__(self, predictor):
    self.skeleton = predictor.skeleton
    self._predictor = predictor
    self.calls = 0

  def predict_batch(self, images, boxes=None):
    self.calls += 1
    if self.calls == 2:
      raise RuntimeError('the second batch fails')
    return self._predictor.predict_batch(images, boxes)


def test_predict_video_bad_input_and_a_failure_keep_earlier_files(predictor, clip,
                                                                  tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.mp4'):
    video.predict_video(predictor, str(tmp_path / 'missing.mp4'), str(tmp_path))
  text = tmp_path / 'notes.mp4'
  text.write_text('not a video')
  with pytest.raises(ValueError, match='notes.mp4.*not a video'):
    video.predict_video(predictor, str(text), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()  # Nothing written for a bad input.
  with pytest.raises(ValueError, match='smoothing'):
    video.predict_video(predictor, str(clip), str(tmp_path), smoothing='on')
  # An earlier run's files survive a run that fails halfway, and no temp file stays.
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'walk_pose.jsonl').write_text('earlier\n')
  (out / 'walk_pose.mp4').write_bytes(b'earlier')
  failing = _FailingPredictor(predictor)
  with pytest.raises(RuntimeError, match='second batch'):
    video.predict_video(failing, str(clip), str(out), chunk_size=4, progress=False)
  assert failing.calls == 2
  assert sorted(os.listdir(out)) == ['walk_pose.jsonl', 'walk_pose.mp4']
  assert (out / 'walk_pose.jsonl').read_text() == 'earlier\n'
  assert (out / 'walk_pose.mp4').read_bytes() == b'earlier'
