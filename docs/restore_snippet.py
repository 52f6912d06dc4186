"""Restore a jhpe checkpoint's parameters with orbax and flax alone, and run the model.

Research code that does not want jhpe's training machinery (its TrainState, optimiser,
checkpoint manager options, data pipeline) reads a workdir like this:

  python docs/restore_snippet.py WORKDIR [IMAGE]

The checkpoint is orbax's standard layout (see jhpe/train/checkpoint.py):
`WORKDIR/checkpoints/<step>/state` holds the dict {'step', 'params', 'batch_stats',
'opt_state', 'rng', 'ema_params' (only with --ema_decay)} as a plain PyTree of arrays, so
`StandardRestore()` without a target gives numpy arrays in the flax variable layout.
jhpe is imported for one thing only: the flax module's definition, rebuilt from the run's
`config.json` (the architecture flags and the dataset's joint count).

The model takes float32 images (B, S, S, 3) in [0, 1], S = config['input_size'], and returns
a list over stages; heatmap models give (B, S/stride, S/stride, K) per stage.
"""

import functools
import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp


def restore_variables(workdir, step=None):
  """({'params', 'batch_stats'} numpy trees, step) of `workdir`'s checkpoint `step`.

  `step` None means the latest. Uses the EMA parameters when the run kept them (the
  predictor and the evaluation do the same).
  """
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  state = restored['state']
  params = state.get('ema_params') or state['params']
  return {'params': params, 'batch_stats': state.get('batch_stats', {})}, step


def build_model(workdir):
  """The flax module of the run, from its config.json; and the config dict."""
  from jhpe.train import config as config_lib  # The module definition only.
  config = config_lib.load_config(workdir)
  return config_lib.build_model(config), json.loads(config.to_json())


def main(argv):
  if len(argv) not in (2, 3):
    sys.exit(f'usage: python {argv[0]} WORKDIR [IMAGE]')
  workdir = argv[1]
  variables, step = restore_variables(workdir)
  model, config = build_model(workdir)
  size = config['input_size']
  if len(argv) == 3:
    from PIL import Image
    # The whole image squeezed onto the canvas; jhpe.predict crops around the person.
    image = Image.open(argv[2]).convert('RGB').resize((size, size))
    images = np.asarray(image, np.float32)[None] / 255.0
  else:
    images = np.zeros((1, size, size, 3), np.float32)
  outputs = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  print(f'step {step}: {len(outputs)} stage(s), last stage output '
        f'{tuple(outputs[-1].shape)}')
  return outputs


if __name__ == '__main__':
  main(sys.argv)
