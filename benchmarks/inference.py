"""Inference latency and throughput: batch 1 and 32, with and without the flip test.

Times jhpe's prediction path (`jhpe.inference.predict_canvas`: the model in eval mode,
the flip test when on (a second pass on the mirrored images, heatmaps flipped back and
averaged), decoding to canvas pixels), jitted, on images already on the device. Latency is
the median time of one call at batch 1; throughput is images/s at batch 32 (`--batches`).

  python -m benchmarks.inference                                  # every 'cpu'/'paper' preset
  python -m benchmarks.inference --configs=hourglass/paper --variants=jhpe,xla
  python -m benchmarks.inference --configs=hourglass/tiny --batches=1,4 --repeats=2   # quick
"""

import argparse
import sys

from benchmarks import common
from benchmarks import train_step
from jhpe import cpu_defaults

COLUMNS = ['config', 'input', 'batch', 'flip', 'compile_s', 'ms', 'img_s']


def measure_config(name, batches=(1, 32), flips=(False, True), repeats=5, warmup=1):
  """Rows for preset `name` (`train_step.PRESETS`): one per (batch, flip)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from jhpe import codecs  # pylint: disable=g-import-not-at-top
  from jhpe import inference  # pylint: disable=g-import-not-at-top

  config = train_step.make_config(name, max(batches))
  model = config_lib.build_model(config)
  flip_permutation = np.asarray(config_lib.skeleton_of(config).flip_permutation)
  variables = jax.jit(lambda r: state_lib.init_variables(r, model, config))(
      jax.random.key(0))
  variables = {'params': variables['params'],
               'batch_stats': variables.get('batch_stats', {})}
  rng = np.random.default_rng(0)
  rows = []
  for flip in flips:
    fn = jax.jit(functools.partial(
        inference.predict_canvas, model=model, codec=codecs.make_codec(model, config),
        flip_permutation=flip_permutation, flip_test=flip,
        test_scales=tuple(config.test_scales)))
    for batch in batches:
      images = jax.device_put(rng.uniform(
          size=(batch, config.input_size, config.input_size, 3)).astype(np.float32))
      compiled, compile_s = common.compile_jitted(fn, variables, images)
      timing = common.time_calls(lambda: compiled(variables, images)[0], repeats, warmup)  # pylint: disable=cell-var-from-loop
      rows.append({
          'config': name, 'input': config.input_size, 'batch': batch, 'flip': flip,
          'compile_s': compile_s, 'ms': timing.median * 1e3, 'min_ms': timing.min * 1e3,
          'img_s': batch / timing.median,
      })
  return rows


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(train_step.DEFAULT_CONFIGS),
                      help=f'comma list of {sorted(train_step.PRESETS)}')
  parser.add_argument('--batches', default='1,32')
  parser.add_argument('--flips', default='0,1', help='comma list of 0 (off) / 1 (on)')
  common.add_common_flags(parser)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = 'inference (eval mode, decode included; flip = flip test)'
  if common.run_variants_or_pin_threads('benchmarks.inference', args, argv, title, COLUMNS):
    return
  names = [c.strip() for c in args.configs.split(',') if c.strip()]
  for name in names:
    train_step.make_config(name, 1)  # Fail early on a bad name.
  batches = tuple(int(b) for b in args.batches.split(','))
  flips = tuple(bool(int(f)) for f in args.flips.split(','))
  rows = []
  for name in names:
    new = measure_config(name, batches, flips, args.repeats, args.warmup)
    print(common.format_table(new, COLUMNS), flush=True)
    rows += new
  common.report(rows, args, title, COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
