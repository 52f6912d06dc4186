"""Tests of jhpe.predict: the Predictor, jhpe.load, the predict CLI and the restore snippet.

One tiny workdir is built per session (`tiny_workdir`): a 2-stack hourglass trained a few
Adam steps on two LSP images and saved through jhpe.train.checkpoint, the format training
writes. test_export.py reuses it.
"""

import functools
import io
import json
import os
import pathlib
import re
import runpy
import shutil
import subprocess
import sys
import zipfile

import jhpe
import jax
import numpy as np
import pytest
from PIL import Image
import scipy.io

from jhpe import codecs
from jhpe import geometry
from jhpe import inference
from jhpe import predict
from jhpe import skeletons
from jhpe import viz
from jhpe.train import checkpoint
from jhpe.train import config as config_lib
from jhpe.train import state as state_lib
from jhpe.train import steps as steps_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LSP_IDS = (1, 2)  # im0001.jpg, im0002.jpg (LSP's training half).
TRAIN_STEPS = 3
TINY_CONFIG = dict(
    model='hourglass', model_kwargs=dict(num_stacks=2, num_features=16, depth=1),
    dataset='lsp', input_size=64, optimizer='adam', learning_rate=1e-3,
    num_train_steps=TRAIN_STEPS, flip_test=True)


def read_lsp(shared_data_dir, ids=LSP_IDS):
  """LSP images (H, W, 3) uint8 and their joints (J, 2), 0-based original pixels."""
  with zipfile.ZipFile(shared_data_dir / 'lsp_dataset.zip') as z:
    joints = scipy.io.loadmat(io.BytesIO(z.read('joints.mat')))['joints']  # (3, 14, N)
    images = [np.asarray(Image.open(io.BytesIO(z.read(f'images/im{i:04d}.jpg')))
                         .convert('RGB')) for i in ids]
  return images, [joints[:2, :, i - 1].T.astype(np.float32) - 1.0 for i in ids]


def build_tiny_workdir(workdir, images, joints):
  """Writes config.json and a checkpoint after TRAIN_STEPS Adam steps on `images`."""
  config = config_lib.Config(**TINY_CONFIG).validate()
  config_lib.save_config(config, workdir)
  model = config_lib.build_model(config)
  state = state_lib.create_train_state(jax.random.PRNGKey(0), model, config)
  # Canvases cut exactly as the predictor cuts them (whole image = person box), so the
  # trained model has seen what the test predicts on. No augmentation: a few plain steps.
  cutter = predict.Predictor(model, state.variables(), config)
  canvases, canvas_joints = [], []
  for image, image_joints in zip(images, joints):
    canvas, to_original = cutter.prepare(image)
    canvases.append(canvas)
    canvas_joints.append(geometry.apply_affine(geometry.invert_affine(to_original),
                                               image_joints))
  canvas_joints = np.stack(canvas_joints).astype(np.float32)
  x = np.stack(canvases).astype(np.float32) / 255.0
  codec = codecs.make_codec(model, config)
  targets, weights = codec.encode(canvas_joints, np.ones(canvas_joints.shape[:2], np.float32))
  tx = state_lib.make_optimizer(config)

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
          mutable=['batch_stats'])
      loss, _ = codec.loss(outputs, targets, weights)
      return loss, updates['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), loss

  losses = []
  for _ in range(TRAIN_STEPS):
    state, loss = train_step(state)
    losses.append(float(loss))
  manager = checkpoint.make_manager(workdir, async_save=False)
  checkpoint.save(manager, TRAIN_STEPS, state.to_dict())
  checkpoint.close(manager)
  return losses


# Built once per process, shared with test_export.py (which imports these functions).
_CACHE = {}


def cached_lsp_sample(shared_data_dir):
  if 'lsp' not in _CACHE:
    _CACHE['lsp'] = read_lsp(shared_data_dir)
  return _CACHE['lsp']


def cached_tiny_workdir(tmp_path_factory, shared_data_dir):
  if 'workdir' not in _CACHE:
    workdir = tmp_path_factory.mktemp('tiny_workdir')
    losses = build_tiny_workdir(str(workdir), *cached_lsp_sample(shared_data_dir))
    assert losses[-1] < losses[0], f'the tiny model did not train: losses {losses}'
    _CACHE['workdir'] = workdir
  return _CACHE['workdir']


def cached_predictor(tmp_path_factory, shared_data_dir):
  if 'predictor' not in _CACHE:
    _CACHE['predictor'] = jhpe.load(str(cached_tiny_workdir(tmp_path_factory,
                                                            shared_data_dir)))
  return _CACHE['predictor']


@pytest.fixture(scope='session')
def lsp_sample(shared_data_dir):
  return cached_lsp_sample(shared_data_dir)


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, shared_data_dir):
  return cached_tiny_workdir(tmp_path_factory, shared_data_dir)


@pytest.fixture(scope='session')
def predictor(tmp_path_factory, shared_data_dir):
  return cached_predictor(tmp_path_factory, shared_data_dir)


def test_load_predicts_an_lsp_image_in_original_pixels(predictor, lsp_sample):
  images, _ = lsp_sample
  image = images[0]
  out = predictor(image)
  assert predictor.step == TRAIN_STEPS and predictor.flip_test
  assert predictor.skeleton == skeletons.LSP
  assert out['joints'].shape == (14, 2) and out['joints'].dtype == np.float32
  assert out['confidence'].shape == (14,)
  assert np.all(np.isfinite(out['joints'])) and np.all(np.isfinite(out['confidence']))
  # The whole image is the person box (with the dataset margin): heatmap peaks lie on the
  # canvas, a square of side 1.25 * max(h, w) around the image's centre.
  h, w = image.shape[:2]
  half = 0.5 * 1.25 * max(h, w) + 1.0
  centre = np.array([(w - 1) / 2, (h - 1) / 2])
  assert np.all(np.abs(out['joints'] - centre) <= half), out['joints']
  # The batch API gives the same joints, image by image.
  joints, confidence = predictor.predict_batch([image])
  np.testing.assert_allclose(joints[0], out['joints'], atol=1e-4)
  np.testing.assert_allclose(confidence[0], out['confidence'], atol=1e-6)


def test_joints_follow_the_person_box_in_original_pixels(predictor, lsp_sample):
  """Shifting the image under the box shifts the joints by exactly as much."""
  image = lsp_sample[0][0]
  h, w = image.shape[:2]
  # A box whose canvas (1.25 x its side) stays inside the image, shifted or not.
  side = 0.5 * min(h, w)
  box = ((w - side) / 2, (h - side) / 2, side, side)
  dx, dy = 7, 4
  shifted = image[dy:, dx:]
  out = predictor(image, box=box)
  out_shifted = predictor(shifted, box=(box[0] - dx, box[1] - dy, box[2], box[3]))
  np.testing.assert_allclose(out_shifted['joints'] + [dx, dy], out['joints'], atol=1e-3)
  np.testing.assert_allclose(out_shifted['confidence'], out['confidence'], atol=1e-5)
  # center/scale is the same box in the datasets' convention.
  c, s = geometry.box_center_scale(box)
  out_cs = predictor(image, center=c, scale=s)
  np.testing.assert_allclose(out_cs['joints'], out['joints'], atol=1e-4)


def test_flip_test_makes_predictions_mirror_symmetric(predictor, lsp_sample):
  """With the flip test, the mirrored image gives the mirrored, left/right-swapped joints."""
  image = lsp_sample[0][1]
  w = image.shape[1]
  out = predictor(image)['joints']
  mirrored = predictor(image[:, ::-1])['joints']
  back = mirrored[skeletons.LSP.flip_permutation]
  back[:, 0] = w - 1 - back[:, 0]
  np.testing.assert_allclose(back, out, atol=1e-3)


def test_grey_and_rgba_images_are_converted(predictor, lsp_sample):
  rgb = lsp_sample[0][0]
  grey = rgb[..., 1]
  as_rgb = predictor(np.repeat(grey[..., None], 3, -1))['joints']
  np.testing.assert_allclose(predictor(grey)['joints'], as_rgb, atol=1e-5)
  np.testing.assert_allclose(predictor(grey[..., None])['joints'], as_rgb, atol=1e-5)
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
  np.testing.assert_allclose(predictor(rgba)['joints'], predictor(rgb)['joints'],
                             atol=1e-5)


@pytest.mark.parametrize('shape', [(40, 30, 2), (40, 30, 5), (40,), (2, 40, 30, 3)])
def test_wrong_channel_counts_raise_naming_the_shape(predictor, shape):
  with pytest.raises(ValueError, match=r'image.*' + re.escape(str(shape))):
    predictor(np.zeros(shape, np.uint8))


def test_bad_inputs_raise_clear_errors(predictor, lsp_sample):
  image = lsp_sample[0][0]
  with pytest.raises(ValueError, match='uint8'):
    predictor(image.astype(np.float32) / 255)
  with pytest.raises(ValueError, match='box'):
    predictor(image, box=(0, 0, -5, 10))
  with pytest.raises(ValueError, match='center and scale'):
    predictor(image, center=(10, 10))
  with pytest.raises(ValueError, match='not both'):
    predictor(image, box=(0, 0, 5, 5), center=(1, 1), scale=3)
  with pytest.raises(ValueError, match=r'boxes must have one entry per image \(2\)'):
    predictor.predict_batch([image, image], [None])
  with pytest.raises(ValueError, match=r'images\[1\]'):
    predictor.predict_batch([image, image[..., :2]])


def test_load_errors_name_the_workdir(tmp_path, tiny_workdir):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match='nowhere'):
    jhpe.load(str(missing))
  no_checkpoint = tmp_path / 'no_checkpoint'
  no_checkpoint.mkdir()
  with pytest.raises(ValueError, match='config.json'):
    jhpe.load(str(no_checkpoint))
  shutil.copy(tiny_workdir / 'config.json', no_checkpoint / 'config.json')
  with pytest.raises(ValueError, match=f'no checkpoint in {no_checkpoint}'):
    jhpe.load(str(no_checkpoint))
  # A checkpoint of another model size is named, not a deep XLA error.
  other = tmp_path / 'other_model'
  shutil.copytree(tiny_workdir, other)
  cfg = json.loads((other / 'config.json').read_text())
  cfg['model_kwargs']['num_features'] = 32
  (other / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match='does not fit this model'):
    jhpe.load(str(other))


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'jhpe.predict', *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def _has_colour(pixels, rgb, tolerance=12):
  target = np.asarray(rgb) * 255
  return bool(np.any(np.all(np.abs(pixels[..., :3] - target) <= tolerance, axis=-1)))


def test_cli_writes_predictions_and_overlays(tmp_path, tiny_workdir, lsp_sample, predictor):
  images, _ = lsp_sample
  paths = []
  for i, image in enumerate(images):
    paths.append(tmp_path / f'person{i}.jpg')
    Image.fromarray(image).save(paths[-1], quality=95)
  grey = tmp_path / 'grey.png'
  Image.fromarray(images[0][..., 0]).save(grey)
  paths.append(grey)
  out_dir = tmp_path / 'out'
  result = _run_cli(f'--workdir={tiny_workdir}', f'--output={out_dir}', *map(str, paths))
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads((out_dir / 'predictions.json').read_text())
  assert data['joint_names'] == list(skeletons.LSP.joint_names)
  assert data['step'] == TRAIN_STEPS
  assert [p['image'] for p in data['predictions']] == [str(p) for p in paths]
  for record, path in zip(data['predictions'], paths):
    assert np.asarray(record['joints']).shape == (14, 2)
    assert np.asarray(record['confidence']).shape == (14,)
    # The JSON holds what the predictor gives for the file (the evaluation's path).
    expected = predictor(str(path))
    np.testing.assert_allclose(record['joints'], expected['joints'], atol=1e-2)
    png = np.asarray(Image.open(record['overlay']).convert('RGB'), np.float32)
    assert png.var() > 0
    assert _has_colour(png, viz.LEFT_COLOR) and _has_colour(png, viz.RIGHT_COLOR)


def test_cli_errors_name_the_problem_and_keep_earlier_output(tmp_path, tiny_workdir):
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  earlier = out_dir / 'predictions.json'
  earlier.write_text('{"earlier": true}')
  image = tmp_path / 'ok.png'
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
  cases = {
      'missing.jpg': [f'--workdir={tiny_workdir}', str(image), str(tmp_path / 'missing.jpg')],
      'empty_workdir': [f'--workdir={tmp_path / "empty_workdir"}', str(image)],
  }
  (tmp_path / 'empty_workdir').mkdir()
  shutil.copy(tiny_workdir / 'config.json', tmp_path / 'empty_workdir' / 'config.json')
  for name, args in cases.items():
    result = _run_cli(f'--output={out_dir}', *args)
    assert result.returncode != 0, name
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('jhpe.predict: error:') and name in last, result.stderr
    assert earlier.read_text() == '{"earlier": true}'
    assert sorted(os.listdir(out_dir)) == ['predictions.json']


def test_read_image_names_unreadable_files(tmp_path):
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not a jpeg')
  with pytest.raises(ValueError, match='broken.jpg.*not a readable image'):
    inference.read_image(str(broken))
  with pytest.raises(FileNotFoundError, match='missing.png'):
    inference.read_image(str(tmp_path / 'missing.png'))
  rgba = tmp_path / 'rgba.png'
  pixels = np.random.default_rng(0).integers(0, 255, (9, 7, 4), dtype=np.uint8)
  Image.fromarray(pixels, 'RGBA').save(rgba)
  np.testing.assert_array_equal(inference.read_image(str(rgba)), pixels[..., :3])


def test_restore_snippet_gives_the_predictors_model_outputs(tiny_workdir, predictor,
                                                           capsys):
  snippet = runpy.run_path(str(REPO_ROOT / 'docs' / 'restore_snippet.py'),
                           run_name='restore_snippet')
  # Its command line: the model on a blank canvas.
  outputs = snippet['main'](['restore_snippet.py', str(tiny_workdir)])
  assert f'step {TRAIN_STEPS}: 2 stage(s)' in capsys.readouterr().out
  s = predictor.input_size
  expected = jax.jit(functools.partial(predictor.model.apply, train=False))(
      predictor.variables, np.zeros((1, s, s, 3), np.float32))
  assert len(outputs) == len(expected) == 2
  for a, b in zip(outputs, expected):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  variables, step = snippet['restore_variables'](str(tiny_workdir))
  _, config = snippet['build_model'](str(tiny_workdir))
  assert step == predictor.step and config['input_size'] == s
  jax.tree.map(np.testing.assert_array_equal, variables, predictor.variables)


# -- One path: the predictor is the evaluation. --


def _eval_pipeline_joints(predictor, jpeg_bytes, joints, center, scale):
  """The evaluation's joints for one stored example: the host pipeline's canvas
  (`jhpe.data.pipeline.HostTransform`) and the jitted eval step."""
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  record = dict(id='big', image=jpeg_bytes, joints=joints.astype(np.float32),
                visible=np.ones(len(joints), np.float32),
                center=np.asarray(center, np.float32), scale=np.float32(scale))
  transform = pipeline.HostTransform([record], 'lsp', 'test', predictor.input_size,
                                     (('lsp', 0, 1),))
  example = transform(0)
  batch = {k: np.asarray(v)[None] for k, v in example.items()}
  out = steps_lib.eval_step(predictor.variables, batch, model=predictor.model,
                            codec=predictor.codec,
                            flip_permutation=predictor.skeleton.flip_permutation,
                            flip_test=predictor.flip_test,
                            test_scales=predictor.test_scales)
  return example, np.asarray(out['joints'])[0]


@pytest.mark.parametrize('upscale', [4, 7])
def test_large_people_get_the_evaluations_joints(tmp_path, predictor, lsp_sample, upscale):
  """A person whose box is >= 4x the canvas: jhpe.load(...) on the original image file
  gives the evaluation pipeline's predictions (same JPEG-draft decode, same crop)."""
  images, joints = lsp_sample
  image = np.asarray(Image.fromarray(images[0]).resize(
      (images[0].shape[1] * upscale, images[0].shape[0] * upscale), Image.BICUBIC))
  path = tmp_path / 'big.jpg'
  Image.fromarray(image).save(path, quality=92)
  big_joints = (joints[0] + 0.5) * upscale - 0.5
  center, scale = geometry.person_center_scale(big_joints, np.ones(14))
  assert scale >= 4 * predictor.input_size
  example, expected = _eval_pipeline_joints(predictor, path.read_bytes(), big_joints,
                                            center, scale)
  canvas, _ = predictor.prepare(str(path), center=center, scale=scale)
  np.testing.assert_array_equal(canvas, example['image'])
  got = predictor(str(path), center=center, scale=scale)['joints']
  np.testing.assert_allclose(got, expected, atol=0.01)
  # The array of the same pixels goes through the box-filter reduce instead of the JPEG
  # draft: antialiased too, so its canvas stays close (a plain bilinear sample of the
  # full-size image differed by 7/255 on average on real photos).
  near, _ = predictor.prepare(inference.read_image(str(path)), center=center, scale=scale)
  assert np.abs(near.astype(np.float64) - canvas).mean() < 4.0


def test_predictor_on_an_exif_photo_is_upright(tmp_path, predictor, lsp_sample):
  upright = lsp_sample[0][0]
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored rotated, as a phone held upright writes it.
  # PNG (lossless, no JPEG draft): the file and its upright pixels give the same canvas.
  path = tmp_path / 'phone.png'
  Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(path,
                                                                   exif=exif.tobytes())
  from_file = predictor(str(path))['joints']
  expected = predictor(inference.read_image(str(path)))['joints']
  np.testing.assert_allclose(from_file, expected, atol=1e-3)
  h, w = upright.shape[:2]  # Joints in the upright frame, as the overlay draws them.
  half = 0.5 * 1.25 * max(h, w) + 1.0
  assert np.all(np.abs(from_file - [(w - 1) / 2, (h - 1) / 2]) <= half)


# -- Test-time settings: the run's own unless overridden. --


def test_settings_default_to_the_runs_own_and_can_be_overridden(tiny_workdir, lsp_sample):
  saved = config_lib.load_config(str(tiny_workdir))
  default = jhpe.load(str(tiny_workdir))
  assert (default.flip_test, default.decode, default.test_scales) == (
      saved.flip_test, saved.decode, tuple(saved.test_scales))
  changed = jhpe.load(str(tiny_workdir), flip_test=False, decode='taylor',
                      test_scales=(0.75, 1.0))
  assert (changed.flip_test, changed.decode, changed.test_scales) == (
      False, 'taylor', (0.75, 1.0))
  image = lsp_sample[0][0]
  assert not np.allclose(changed(image)['joints'], default(image)['joints'], atol=1e-3)
  only_decode = jhpe.load(str(tiny_workdir), decode='argmax')
  assert only_decode.flip_test == saved.flip_test and only_decode.decode == 'argmax'
  with pytest.raises(ValueError, match='--decode=.bogus'):
    jhpe.load(str(tiny_workdir), decode='bogus')
  with pytest.raises(ValueError, match='--test_scales'):
    jhpe.load(str(tiny_workdir), test_scales=(0.0,))


def test_a_synthetic_model_warns_on_photos(tiny_workdir, lsp_sample):
  config = config_lib.load_config(str(tiny_workdir)).replace(dataset='synthetic')
  base = jhpe.load(str(tiny_workdir))
  synthetic = predict.Predictor(base.model, base.variables, config, source='quickstart')
  with pytest.warns(UserWarning, match='synthetic figures only'):
    synthetic(lsp_sample[0][0])
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    base(lsp_sample[0][0])  # An LSP-trained model does not warn.


def test_cli_settings_folders_and_quiet_output(tmp_path, tiny_workdir, lsp_sample):
  images, _ = lsp_sample
  folder = tmp_path / 'mixed'
  folder.mkdir()
  Image.fromarray(images[0]).save(folder / 'a.jpg')
  Image.fromarray(images[1][..., 0]).save(folder / 'b_grey.png')
  Image.fromarray(np.dstack([images[1], np.full(images[1].shape[:2], 200, np.uint8)]),
                  'RGBA').save(folder / 'c_rgba.png')
  (folder / 'notes.txt').write_text('not an image')
  out_dir = tmp_path / 'out'
  result = _run_cli(f'--workdir={tiny_workdir}', f'--output={out_dir}', '--decode=taylor',
                    '--noflip_test', str(folder))
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads((out_dir / 'predictions.json').read_text())
  assert data['decode'] == 'taylor' and data['flip_test'] is False
  assert [os.path.basename(p['image']) for p in data['predictions']] == [
      'a.jpg', 'b_grey.png', 'c_rgba.png']
  assert all(p['seconds'] > 0 for p in data['predictions'])
  # Quiet by default: a header line, one line per image with its time, the JSON path.
  lines = (result.stdout + result.stderr).strip().splitlines()
  assert len(lines) <= 6, lines
  assert sum(' ms' in line for line in lines) == 3


def test_cli_never_writes_over_inputs_and_keeps_every_overlay(tmp_path, tiny_workdir):
  pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
  for folder in ('a', 'b'):
    (tmp_path / folder).mkdir()
    Image.fromarray(pixels).save(tmp_path / folder / 'x.jpg')
  Image.fromarray(pixels).save(tmp_path / 'a' / 'x_pose.png')  # An overlay's name.
  inputs = [tmp_path / 'a' / 'x.jpg', tmp_path / 'b' / 'x.jpg', tmp_path / 'a' / 'x_pose.png']
  before = (tmp_path / 'a' / 'x_pose.png').read_bytes()
  # --output = the images' folder: x.jpg's overlay would be a/x_pose.png, an input.
  result = _run_cli(f'--workdir={tiny_workdir}', f'--output={tmp_path / "a"}',
                    *map(str, inputs))
  assert result.returncode != 0 and 'would replace an input' in result.stderr
  assert (tmp_path / 'a' / 'x_pose.png').read_bytes() == before
  out = tmp_path / 'out'
  result = _run_cli(f'--workdir={tiny_workdir}', f'--output={out}', *map(str, inputs))
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads((out / 'predictions.json').read_text())
  overlays = [p['overlay'] for p in data['predictions']]
  assert len(set(overlays)) == 3 and all(os.path.isfile(o) for o in overlays)
