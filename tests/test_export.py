"""Tests of jhpe.export: the exported predictor runs with jax alone and matches jhpe's."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jhpe import export
from jhpe import geometry

# The tiny workdir and its predictor are built once per process, by test_predict's helpers.
try:
  import test_predict  # pylint: disable=g-import-not-at-top
except ImportError:  # tests/ imported as a package.
  from tests import test_predict  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def predictor(tmp_path_factory, shared_data_dir):
  return test_predict.cached_predictor(tmp_path_factory, shared_data_dir)


@pytest.fixture(scope='module')
def canvases(predictor, shared_data_dir):
  """Three LSP images, their canvases (3, S, S, 3) uint8 and canvas_to_original."""
  images, _ = test_predict.cached_lsp_sample(shared_data_dir)
  images = [images[0], images[1], images[0][:, ::-1]]
  cut = [predictor.prepare(image) for image in images]
  return images, np.stack([c for c, _ in cut]), np.stack([m for _, m in cut])


@pytest.fixture(scope='module')
def exported_path(predictor, tmp_path_factory):
  path = tmp_path_factory.mktemp('export') / 'pose.jaxexport'
  export.export_predictor(predictor, str(path))
  return path


# The reader, run in a process where `import jhpe` fails: `load_exported`'s own source (it
# promises to need only jax) and a few lines of numpy around it.
_STANDALONE = """
import sys
sys.modules['jhpe'] = None  # Any `import jhpe` now raises ImportError.
import numpy as np

{load_exported}

predict = load_exported(sys.argv[1])
for name in sys.argv[2:]:
  joints, confidence = predict(np.load(name + '.npy'))
  np.save(name + '_joints.npy', np.asarray(joints))
  np.save(name + '_confidence.npy', np.asarray(confidence))
print(predict.metadata['skeleton'], 'jhpe' in sys.modules and sys.modules['jhpe'] is not None)
"""


def test_exported_file_runs_without_jhpe_and_matches_the_predictor(
    predictor, canvases, exported_path, tmp_path):
  originals, images, to_original = canvases
  script = tmp_path / 'standalone.py'
  script.write_text(_STANDALONE.format(
      load_exported=textwrap.dedent(inspect.getsource(export.load_exported))))
  # The batch size is symbolic: 3 and 1 images through the same file.
  np.save(tmp_path / 'three.npy', images)
  np.save(tmp_path / 'one.npy', images[1:2])
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run(
      [sys.executable, str(script), str(exported_path), str(tmp_path / 'three'),
       str(tmp_path / 'one')], cwd=tmp_path, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['lsp', 'False']
  joints, confidence = predictor.predict_canvas(images)
  exported_joints = np.load(tmp_path / 'three_joints.npy')
  np.testing.assert_allclose(exported_joints, joints, atol=1e-4)
  np.testing.assert_allclose(np.load(tmp_path / 'three_confidence.npy'), confidence,
                             atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / 'one_joints.npy'), joints[1:2], atol=1e-4)
  # Mapped through canvas_to_original, they are the predictor's joints in the images.
  original, _ = predictor.predict_batch(originals)
  np.testing.assert_allclose(geometry.apply_affine(to_original, exported_joints), original,
                             atol=1e-3)


def test_load_exported_in_process_and_metadata(predictor, canvases, exported_path):
  predict = export.load_exported(str(exported_path))
  meta = json.loads((exported_path.parent / 'pose.jaxexport.json').read_text())
  assert predict.metadata == meta
  assert meta['input_size'] == predictor.input_size
  assert meta['joint_names'] == list(predictor.skeleton.joint_names)
  assert meta['flip_test'] is True and meta['step'] == predictor.step
  assert str(predict.exported.in_avals[0].shape[0]) == 'b'
  images = canvases[1]  # The batch size the other test compiled.
  joints, confidence = predict(images)
  expected, expected_conf = predictor.predict_canvas(images)
  np.testing.assert_allclose(np.asarray(joints), expected, atol=1e-4)
  np.testing.assert_allclose(np.asarray(confidence), expected_conf, atol=1e-5)


def test_fixed_batch_export_and_bad_arguments(predictor, tmp_path):
  exported = export.export_predictor(predictor, str(tmp_path / 'b2'), batch_size=2)
  assert exported.in_avals[0].shape == (2, predictor.input_size, predictor.input_size, 3)
  with pytest.raises(ValueError, match='batch_size'):
    export.export_predictor(predictor, str(tmp_path / 'bad'), batch_size=0)
  with pytest.raises(FileNotFoundError, match='nothing.jaxexport'):
    export.load_exported(str(tmp_path / 'nothing.jaxexport'))


# ----------------------------------------------------------------------------------------
# ONNX (the `onnx` extra).
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def onnx_path(tmp_path_factory, shared_data_dir, predictor):
  """The tiny workdir exported through the command line, batch 3."""
  pytest.importorskip('jax2onnx', reason='the onnx extra: pip install -e .[onnx]')
  pytest.importorskip('onnxruntime', reason='the onnx extra: pip install -e .[onnx]')
  workdir = test_predict.cached_tiny_workdir(tmp_path_factory, shared_data_dir)
  path = tmp_path_factory.mktemp('onnx') / 'pose.onnx'
  assert predictor.flip_test  # The CLI loads the same workdir with the same defaults.
  assert export.main([f'--workdir={workdir}', '--format=onnx', f'--output={path}',
                      '--batch_size=3']) == str(path)
  return path


def test_onnx_model_in_onnxruntime_matches_the_predictor(predictor, canvases, onnx_path):
  predict = export.load_onnx(str(onnx_path))
  inputs = predict.session.get_inputs()
  assert [(i.name, i.type, i.shape) for i in inputs] == [
      ('images', 'tensor(uint8)', [3, predictor.input_size, predictor.input_size, 3])]
  assert [o.name for o in predict.session.get_outputs()] == ['joints', 'confidence']
  meta = predict.metadata
  assert meta['format'] == export.ONNX_FORMAT and meta['flip_test'] is True
  assert meta['joint_names'] == list(predictor.skeleton.joint_names)
  images = canvases[1]
  joints, confidence = predict(images)
  expected, expected_conf = predictor.predict_canvas(images)
  assert joints.shape == expected.shape and joints.dtype == np.float32
  # Within half a pixel (the argmax, offsets and flip merge run in ONNX operators).
  np.testing.assert_allclose(joints, expected, atol=0.5)
  np.testing.assert_allclose(confidence, expected_conf, atol=1e-3)
  # Three other canvases: noise, a mirrored and a darkened person. (No flat canvas: its
  # heatmaps have exact ties, which two runtimes may break at different pixels.)
  rng = np.random.default_rng(0)
  other = np.stack([rng.integers(0, 256, images.shape[1:], dtype=np.uint8),
                    images[1, :, ::-1], (images[2] * 0.6).astype(np.uint8)])
  joints, _ = predict(other)
  np.testing.assert_allclose(joints, predictor.predict_canvas(other)[0], atol=0.5)
  # The conversion left the process's jit caches clean: the predictor still runs.
  np.testing.assert_allclose(predictor.predict_canvas(images)[0], expected, atol=1e-5)


def test_export_command_line_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    export.main([f'--workdir={tmp_path / "nowhere"}', '--format=jax'])
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'nowhere' in err and 'error' in err, err
  with pytest.raises(SystemExit) as e:
    export.main([f'--workdir={tmp_path}', '--format=tflite'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and "'tflite'" in err and '--format' in err, err
  with pytest.raises(SystemExit) as e:
    export.main([f'--workdir={tmp_path}', '--batch_size=0'])
  assert e.value.code == 2 and '--batch_size' in capsys.readouterr().err
