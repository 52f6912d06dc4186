"""Train-step throughput of each model family, and its distance to the measured peak.

For each family (hourglass, CPM, DeepPose) at a CPU-scale and at the paper-scale config
(`PRESETS`) it times jhpe's real train step (`jhpe.train.steps.make_shard_map_train_step`:
device-side augmentation, target rendering, forward, backward, optimiser, NaN guard) on a
fixed synthetic batch already on the device, so the input pipeline is not in the figure
(`benchmarks/loop.py` measures it). Reported per config:
- compile time apart, images/s (median of `--repeats`);
- FLOPs per image: the eval forward (`jhpe.models.summary.flops_per_image`) and the whole
  train step (XLA's cost analysis of the compiled step, divided by the batch);
- achieved GFLOP/s and its fraction of two peaks measured in the same run
  (`benchmarks/peak.py`): a large matmul (close to the hardware's limit) and a 3x3
  convolution forward+backward (what XLA's convolutions reach on this CPU).

  python -m benchmarks.train_step                                   # every preset
  python -m benchmarks.train_step --configs=hourglass/cpu --variants=jhpe,xla
  python -m benchmarks.train_step --configs=hourglass/tiny --repeats=2 --peak_matmul_size=512
"""

import argparse
import sys

from benchmarks import common
from benchmarks import peak
from jhpe import cpu_defaults

# family/scale -> (model name, model kwargs, input size, optimizer, dataset). The dataset
# gives the joint count and the flip permutation (the data itself is synthetic here).
# 'cpu' is the model of the CPU-scale LSP flagfile (experiments/configs/lsp_<family>.flags,
# the README's results table); 'paper' follows each paper (hourglass: 8 stacks, 256
# features, 256 px, RMSprop, MPII; CPM: 6 stages at 368 px, SGD; DeepPose: AlexNet, 3
# stages at 220 px, SGD; LSP); 'quickstart' is experiments/configs/quickstart.flags'
# model; 'tiny' is for the smoke test.
PRESETS = {
    'hourglass/tiny': ('hourglass', dict(num_stacks=1, num_features=16, depth=2), 32,
                       'rmsprop', 'mpii'),
    'hourglass/quickstart': ('hourglass', dict(num_stacks=2, num_features=32, depth=2), 64,
                             'adam', 'synthetic'),
    'hourglass/cpu': ('hourglass', dict(num_stacks=2, num_features=128, depth=3), 96,
                      'adam', 'lsp'),
    'hourglass/paper': ('hourglass', dict(num_stacks=8, num_features=256), 256, 'rmsprop',
                        'mpii'),
    # The side by side's model (benchmarks.hourglass_vs_torch): the paper's at 2 stacks.
    'hourglass/paper_2stacks': ('hourglass', dict(num_stacks=2, num_features=256), 256,
                                'rmsprop', 'mpii'),
    # The same model with `nn.scan` over its stacks (one stack compiled instead of eight).
    'hourglass/paper_scan': ('hourglass', dict(num_stacks=8, num_features=256,
                                               scan_stacks=True), 256, 'rmsprop', 'mpii'),
    'cpm/tiny': ('cpm', dict(num_stages=2, width=0.0625), 64, 'sgd', 'lsp'),
    'cpm/cpu': ('cpm', dict(num_stages=3, width=0.25), 128, 'adam', 'lsp'),
    'cpm/paper': ('cpm', dict(num_stages=6, width=1.0), 368, 'sgd', 'lsp'),
    'deeppose/tiny': ('deeppose', dict(num_stages=2, width=0.125, fc_features=64), 64,
                      'sgd', 'lsp'),
    'deeppose/cpu': ('deeppose', dict(num_stages=1, backbone='resnet', width=1.0), 96,
                     'adam', 'lsp'),
    'deeppose/paper': ('deeppose', dict(num_stages=3), 220, 'sgd', 'lsp'),
}
DEFAULT_CONFIGS = ('hourglass/cpu', 'hourglass/paper', 'cpm/cpu', 'cpm/paper',
                   'deeppose/cpu', 'deeppose/paper')
COLUMNS = ['config', 'input', 'batch', 'mparams', 'fwd_gflop_img', 'step_gflop_img',
           'compile_s', 'ms', 'img_s', 'gflops', 'frac_matmul_peak', 'frac_conv_peak']


def synthetic_batch(batch, size, num_joints, seed=0):
  """A batch as the host pipeline gives it (docs/design.md, "Batch"), numpy."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
      'joints': rng.uniform(0.2 * size, 0.8 * size, (batch, num_joints, 2)).astype(
          np.float32),
      'visible': np.ones((batch, num_joints), np.float32),
  }


def make_config(name, batch):
  """The `jhpe.train.config.Config` of preset `name` with global batch `batch`."""
  from jhpe.train.config import Config  # pylint: disable=g-import-not-at-top
  if name not in PRESETS:
    raise ValueError(f'--configs: unknown {name!r}; expected one of {sorted(PRESETS)}')
  model_name, kwargs, size, optimizer, dataset = PRESETS[name]
  return Config(model=model_name, model_kwargs=dict(kwargs), input_size=size,
                batch_size=batch, optimizer=optimizer, dataset=dataset)


def prepare_step(config):
  """jhpe's real train step for `config`, compiled for its batch.

  Returns:
    dict: 'model', 'mesh', 'step' (compiled: (state, device batch) -> (state, metrics)),
    'state' (replicated on the mesh), 'compile_s'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import steps  # pylint: disable=g-import-not-at-top

  model = config_lib.build_model(config)  # Joints from the dataset's skeleton.
  mesh = steps.make_mesh()
  step = steps.make_shard_map_train_step(model, config, mesh)
  state = steps.replicate_mesh(
      state_lib.create_train_state(jax.random.key(config.seed), model, config), mesh)
  example = steps.global_batch(
      synthetic_batch(config.batch_size, config.input_size, model.num_joints), mesh)
  compiled, compile_s = common.compile_jitted(step, state, example)
  return {'model': model, 'mesh': mesh, 'step': compiled, 'state': state,
          'compile_s': compile_s}


def measure_config(name, batch=8, repeats=3, warmup=1, dtype='float32'):
  """One row: the real train step of preset `name` (without the fractions of peak)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jhpe.models import summary  # pylint: disable=g-import-not-at-top
  from jhpe.train import steps  # pylint: disable=g-import-not-at-top

  config = dataclasses.replace(make_config(name, batch), dtype=dtype)
  prepared = prepare_step(config)
  model, compiled = prepared['model'], prepared['step']
  device_batch = steps.global_batch(
      synthetic_batch(batch, config.input_size, model.num_joints), prepared['mesh'])
  cell = [prepared['state']]

  def run():
    cell[0], metrics = compiled(cell[0], device_batch)
    return metrics['loss']

  timing = common.time_calls(run, repeats, warmup)
  fwd = summary.flops_per_image(model, config.input_size)
  # XLA counts a scanned loop's body once: a scanned model's step would be undercounted.
  step_flops = (None if getattr(model, 'scan_stacks', False)
                else common.compiled_flops(compiled))
  # XLA's count of the whole step when it has one; else the usual 3x the forward.
  step_per_image = step_flops / batch if step_flops else 3 * fwd
  return {
      'config': name, 'input': config.input_size, 'batch': batch,
      'mparams': summary.count_params(cell[0].params) / 1e6,
      'fwd_gflop_img': fwd / 1e9, 'step_gflop_img': step_per_image / 1e9,
      'compile_s': prepared['compile_s'], 'ms': timing.median * 1e3,
      'min_ms': timing.min * 1e3, 'img_s': batch / timing.median,
      'gflops': step_per_image * batch / timing.median / 1e9,
  }


def add_fractions(rows, peak_rows):
  """Adds the fraction of the measured matmul and conv fwd+bwd peaks to each row."""
  matmul = max(r['gflops'] for r in peak_rows if r['op'] == 'matmul')
  conv = max((r['gflops'] for r in peak_rows if r['op'] == 'conv fwd+bwd'),
             default=float('nan'))
  for row in rows:
    row['peak_matmul_gflops'] = matmul
    row['peak_conv_gflops'] = conv
    row['frac_matmul_peak'] = row['gflops'] / matmul
    row['frac_conv_peak'] = row['gflops'] / conv
  return rows


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                      help=f'comma list of {sorted(PRESETS)}')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--dtype', default='float32', help='compute dtype (float32/bfloat16)')
  parser.add_argument('--peak_matmul_size', type=int, default=2048)
  parser.add_argument('--peak_conv_size', type=int, default=64)
  common.add_common_flags(parser, repeats=3)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = f'train step ({args.dtype}), batch {args.batch}'
  if common.run_variants_or_pin_threads('benchmarks.train_step', args, argv, title, COLUMNS):
    return
  names = [c.strip() for c in args.configs.split(',') if c.strip()]
  for name in names:
    make_config(name, args.batch)  # Fail early on a bad name.
  peak_rows = peak.measure(args.peak_matmul_size, 8, args.peak_conv_size, 128,
                           repeats=args.repeats, warmup=args.warmup)
  print(common.format_table(peak_rows, peak.COLUMNS), flush=True)
  rows = []
  for name in names:
    rows += add_fractions([measure_config(name, args.batch, args.repeats, args.warmup,
                                          args.dtype)], peak_rows)
    print(common.format_table(rows[-1:], COLUMNS), flush=True)
  common.report(rows, args, title, COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
