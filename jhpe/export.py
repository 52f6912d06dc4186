"""Export a trained predictor with `jax.export`, to a file that runs without jhpe.

  from jhpe import export
  export.export_predictor(jhpe.load(workdir), 'pose.jaxexport')

writes the serialized StableHLO of the predictor's jitted canvas function, with the
parameters baked in as constants:

  f(images uint8 (B, S, S, 3)) -> (joints float32 (B, J, 2) canvas pixels,
                                   confidence float32 (B, J))

flip test and decoding included (as the predictor was configured). B is symbolic: any batch
size runs without re-exporting. Cutting the canvas around the person and mapping joints
back to the original image stay with the caller (they are a (3, 3) affine map each way, see
docs/design.md), so the file needs nothing but jax. Next to it, `<path>.json` records the
input size, the joint names, the limbs and the flip test, for whoever reads the output.

Reading it back needs only jax (no jhpe): `load_exported` below imports nothing else and can
be copied into any code base.

ONNX: `export_onnx(predictor, 'pose.onnx')` converts the same canvas function with
jax2onnx (the `onnx` extra: pip install -e ".[onnx]") into a model that onnxruntime runs,
input `images` uint8 (B, S, S, 3), outputs `joints` and `confidence` as above, flip test and
decoding included; `load_onnx` reads it back. Unlike the jax file, B is fixed at export
time (see `export_onnx`).

From the command line (the output defaults to WORKDIR/export/pose.jaxexport or pose.onnx):

  python -m jhpe.export --workdir=DIR --format={jax,onnx} [--output=PATH] [--which=best]
"""

import argparse
import contextlib
import io
import logging
import os
import sys

import jax
from jax import export as jax_export
import jax.numpy as jnp

from jhpe import files

FORMAT = 'jhpe.export/1'
ONNX_FORMAT = 'jhpe.onnx/1'
FORMATS = ('jax', 'onnx')
EXTENSIONS = {'jax': 'jaxexport', 'onnx': 'onnx'}


def _metadata(predictor, fmt, batch):
  """What a reader of an exported file needs beside it (`path`.json)."""
  size = predictor.input_size
  skeleton = predictor.skeleton
  metadata = {
      'format': fmt,
      'input': f'uint8 ({batch}, {size}, {size}, 3) RGB canvas',
      'outputs': ['joints float32 (B, J, 2): (x, y) canvas pixels, pixel centres at '
                  'integers', 'confidence float32 (B, J)'],
      'input_size': size,
      'skeleton': skeleton.name,
      'joint_names': list(skeleton.joint_names),
      'limbs': [list(l) for l in skeleton.limbs],
      'flip_test': predictor.flip_test,
      'decode': predictor.config.decode,
      'model': predictor.config.model,
      'step': predictor.step,
  }
  test_scales = getattr(predictor, 'test_scales', None)  # Multi-scale test, if any.
  if test_scales is not None:
    metadata['test_scales'] = [float(x) for x in test_scales]
  return metadata


def export_predictor(predictor, path, *, batch_size=None, platforms=None):
  """Serializes `predictor`'s canvas function to `path` (and metadata to `path`.json).

  Args:
    predictor: a `jhpe.predict.Predictor`.
    path: the output file.
    batch_size: a fixed batch size, or None for a symbolic one (any size at call time).
    platforms: platforms to lower for, e.g. ('cpu', 'cuda'); None = the current backend.
      The file runs only on the platforms it was lowered for.

  Returns:
    The `jax.export.Exported`.
  """
  size = predictor.input_size
  if batch_size is None:
    (batch,) = jax_export.symbolic_shape('b')
  elif isinstance(batch_size, int) and batch_size > 0:
    batch = batch_size
  else:
    raise ValueError(f'batch_size must be None (symbolic) or a positive int, got '
                     f'{batch_size!r}.')
  spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  exported = jax_export.export(jax.jit(predictor.canvas_function()),
                               platforms=platforms)(spec)
  # bytes(): serialize() gives a bytearray.
  files.write_atomic(path, bytes(exported.serialize()))  # Never half a file at `path`.
  metadata = _metadata(predictor, FORMAT, 'B' if batch_size is None else batch)
  metadata['platforms'] = list(exported.platforms)
  files.write_json(path + '.json', metadata)
  return exported


def load_exported(path):
  """Reads a file written by `export_predictor`; needs only jax (copy it anywhere).

  Args:
    path: the exported file.

  Returns:
    predict(images uint8 (B, S, S, 3)) -> (joints (B, J, 2) canvas pixels,
    confidence (B, J)), with `predict.metadata` (the `path`.json dict, {} if absent) and
    `predict.exported` (the `jax.export.Exported`).
  """
  import json  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  import os  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  from jax import export  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f'exported predictor {path!r} does not exist.')
  with open(path, 'rb') as f:
    exported = export.deserialize(bytearray(f.read()))
  metadata = {}
  if os.path.isfile(path + '.json'):
    with open(path + '.json') as f:
      metadata = json.load(f)

  def predict(images):
    joints, confidence = exported.call(images)
    return joints, confidence

  predict.metadata = metadata
  predict.exported = exported
  return predict


# ----------------------------------------------------------------------------------------
# ONNX.
# ----------------------------------------------------------------------------------------


def _import_onnx_tools():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'ONNX export needs jax2onnx and onnx ({e}); install them with '
                      'pip install -e ".[onnx]".') from None
  return jax2onnx, onnx


@contextlib.contextmanager
def _quiet_converter():
  """Silences jax2onnx's prints and plugin-import warnings; errors still raise.

  jax2onnx 0.13 prints a DEBUG block per flax layer to stdout and logs a traceback for its
  dm_pix plugins, which it skips under jax 0.10; neither concerns a jhpe model.
  """
  loggers = [logging.getLogger(name) for name in ('jax2onnx', 'onnx_ir')]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def onnx_model(predictor, *, batch_size=1, opset=None):
  """`predictor`'s canvas function as an `onnx.ModelProto` (see `export_onnx`)."""
  jax2onnx, onnx = _import_onnx_tools()
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive int (ONNX export fixes the batch), '
                     f'got {batch_size!r}.')
  size = predictor.input_size
  spec = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8)
  options = {} if opset is None else {'opset': int(opset)}
  # jax2onnx traces with its own primitives patched into jax.numpy, while jhpe's jitted
  # helpers (heatmap decoding) cache their traces. A trace cached before the conversion
  # hands jax2onnx primitives it has no rule for (jax 0.10's `stack`), and one cached
  # during it would leave jax2onnx's primitives in this process's jit caches, where XLA
  # cannot lower them ("MLIR translation rule for primitive 'jax.numpy.argmax' not
  # found"): the predictor would break after an export. Hence a clean cache either side.
  jax.clear_caches()
  try:
    with _quiet_converter():
      model = jax2onnx.to_onnx(predictor.canvas_function(), [spec], model_name='jhpe',
                               input_names=['images'],
                               output_names=['joints', 'confidence'], **options)
  finally:
    jax.clear_caches()
  # jax2onnx records some intermediate shapes in NCHW where the values are NHWC, which
  # onnxruntime reports at every load ("Error merging shape info"); the shapes are
  # optional, runtimes infer their own.
  del model.graph.value_info[:]
  onnx.checker.check_model(model)
  return model


def export_onnx(predictor, path, *, batch_size=1, opset=None):
  """Converts `predictor`'s canvas function to ONNX at `path` (and metadata to `path`.json).

  The model: input `images` uint8 (batch_size, S, S, 3), outputs `joints` float32
  (batch_size, J, 2) in canvas pixels and `confidence` float32 (batch_size, J), the
  predictor's flip test and decoding included, the parameters as initializers. It is
  jax2onnx's conversion of `predictor.canvas_function()`, decoding (argmax, sub-pixel
  offsets) and all: the runtime needs nothing else.

  The batch size is fixed: with a symbolic batch jax2onnx (0.13 to 0.17.1) fails on the
  decoding's integer remainder (the flat argmax index -> x, y), in its `rem` rule:
  "InconclusiveDimensionOperation: Symbolic dimension 'B' used in a context that requires
  a constant". Pad a smaller batch, or export one file per batch size.

  Args:
    predictor: a `jhpe.predict.Predictor`.
    path: the output file (conventionally .onnx).
    batch_size: the model's batch size, a positive int.
    opset: the ONNX opset; None: jax2onnx's default (23 in jax2onnx 0.13).

  Returns:
    The `onnx.ModelProto`.
  """
  model = onnx_model(predictor, batch_size=batch_size, opset=opset)
  files.write_atomic(path, model.SerializeToString())  # Never half a file at `path`.
  metadata = _metadata(predictor, ONNX_FORMAT, batch_size)
  metadata['opset'] = max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))
  files.write_json(path + '.json', metadata)
  return model


def load_onnx(path, providers=('CPUExecutionProvider',)):
  """Reads a file written by `export_onnx` into onnxruntime.

  Returns:
    predict(images uint8 (B, S, S, 3)) -> (joints (B, J, 2) canvas pixels, confidence
    (B, J)) as numpy arrays, with `predict.metadata` (the `path`.json dict, {} if absent)
    and `predict.session` (the `onnxruntime.InferenceSession`).
  """
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f'ONNX model {path!r} does not exist.')
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # Errors only.
  session = onnxruntime.InferenceSession(path, options, providers=list(providers))
  metadata = {}
  if os.path.isfile(path + '.json'):
    with open(path + '.json') as f:
      metadata = json.load(f)

  def predict(images):
    joints, confidence = session.run(['joints', 'confidence'],
                                     {'images': np.asarray(images, np.uint8)})
    return joints, confidence

  predict.metadata = metadata
  predict.session = session
  return predict


# ----------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage block)."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _positive_int(text):
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be a positive integer, got {text!r}')
  return value


def _parser():
  parser = _Parser(
      prog='python -m jhpe.export',
      description='Export a trained predictor (model, decoding, flip test) to a file that '
                  'runs without jhpe: jax.export (StableHLO, needs jax) or ONNX (needs '
                  'onnxruntime). Writes PATH and PATH.json (input size, joint names, limbs).')
  parser.add_argument('--workdir', required=True,
                      help='training workdir (config.json, checkpoints/).')
  parser.add_argument('--format', choices=FORMATS, default='jax',
                      help='jax: jax.export, any batch size; onnx: ONNX via jax2onnx, '
                           'a fixed batch size. Default: jax.')
  parser.add_argument('--output', default=None,
                      help='output file (default: WORKDIR/export/pose.jaxexport or '
                           'WORKDIR/export/pose.onnx).')
  parser.add_argument('--which', default='latest',
                      help="checkpoint: 'latest', 'best' or a step number.")
  parser.add_argument('--batch_size', type=_positive_int, default=None,
                      help='fixed batch size (default: symbolic for jax, 1 for onnx).')
  parser.add_argument('--flip_test', action=argparse.BooleanOptionalAction, default=None,
                      help="average with the mirrored canvas (default: the run's setting).")
  return parser


def main(argv=None):
  """`python -m jhpe.export`; returns the path written."""
  parser = _parser()
  args = parser.parse_args(argv)
  output = args.output or os.path.join(args.workdir, 'export',
                                       'pose.' + EXTENSIONS[args.format])
  try:
    import jhpe  # pylint: disable=g-import-not-at-top
    settings = {} if args.flip_test is None else {'flip_test': args.flip_test}
    which = int(args.which) if args.which.isdigit() else args.which
    if args.format == 'onnx':
      _import_onnx_tools()  # Before the checkpoint is read: fail fast.
    predictor = jhpe.load(args.workdir, which=which, **settings)
    if args.format == 'onnx':
      export_onnx(predictor, output, batch_size=args.batch_size or 1)
    else:
      export_predictor(predictor, output, batch_size=args.batch_size)
  except (OSError, ValueError, ImportError) as e:  # Bad workdir, checkpoint or output.
    parser.exit(1, f'{parser.prog}: error: {e}\n')
  print(output)
  return output


if __name__ == '__main__':
  main(sys.argv[1:])
