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
"""

import json
import os

import jax
from jax import export as jax_export
import jax.numpy as jnp

FORMAT = 'jhpe.export/1'


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
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(exported.serialize())
  os.replace(tmp, path)  # Never half a file at `path`.
  skeleton = predictor.skeleton
  metadata = {
      'format': FORMAT,
      'input': f'uint8 (B, {size}, {size}, 3) RGB canvas',
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
      'platforms': list(exported.platforms),
  }
  with open(path + '.json', 'w') as f:
    json.dump(metadata, f, indent=1)
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
