"""The training loop with its input pipeline: is the data path the bottleneck?

Three figures for one config, in one run, on the same data:
- pipeline: host batches/s of the real loader alone (`jhpe.train.loop.make_train_loader`:
  grain, JPEG decode, canvas crop), converted to images/s;
- step: the real train step alone on a fixed batch already on the device;
- loop: what `jhpe.train.loop` does per step, minus logging and checkpoints: next host
  batch, put it on the device, train step, then fetch the previous step's scalar metrics
  (the loop reads step N's metrics, for its NaN guard, once step N+1 is queued).
If `loop` is well below `step`, the data path is the bottleneck; the issue's target is a
pipeline at least 2x the step's images/s. On a 2-core machine the host pipeline and XLA
share the same cores, so `loop` can fall below both even when the pipeline alone is fast.

  python -m benchmarks.loop                                        # hourglass/cpu on LSP
  python -m benchmarks.loop --configs=hourglass/quickstart --dataset=synthetic --batch=16
  python -m benchmarks.loop --dataset=synthetic/tiny --configs=hourglass/tiny --steps=3 --repeats=1
"""

import argparse
import dataclasses
import sys
import time

from benchmarks import common
from benchmarks import train_step
from jhpe import cpu_defaults

COLUMNS = ['config', 'dataset', 'batch', 'workers', 'pipeline_img_s', 'pipeline_startup_s',
           'pipeline_steady_img_s', 'step_img_s',
           'loop_img_s', 'pipeline_over_step', 'loop_over_step', 'verdict']


def _rate(fn, steps, batch):
  """Images/s of `steps` calls of `fn` (each one batch), fn fully synchronous."""
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return steps * batch / (time.perf_counter() - start)


def measure(name, dataset, batch=8, steps=10, repeats=3, num_workers=0, data_dir=''):
  """One row for preset `name` (`train_step.PRESETS`) trained on `dataset`.

  Each of step / pipeline / loop is timed over `steps` batches, `repeats` times (the
  median is reported); step and loop after one untimed warm-up batch.
  """
  import statistics  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe.train import loop as loop_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import steps as steps_lib  # pylint: disable=g-import-not-at-top

  config = dataclasses.replace(train_step.make_config(name, batch), dataset=dataset,
                               num_workers=num_workers, data_dir=data_dir)
  # grain prefetches (threads, a buffer of hundreds of examples) as soon as an iterator
  # starts: a buffer filled while something else ran would inflate the next figure, so the
  # pipeline and the loop each read a fresh iterator. The pipeline is timed from the
  # iterator's creation (start-up included: a lower bound) and, apart, after its first
  # batch (the steady rate, what a long run sees); the loop from its second step.
  new_iter = lambda: iter(loop_lib.make_train_loader(config))  # Builds data on first use.
  keys = ('image', 'joints', 'visible')
  prepared = train_step.prepare_step(config)
  step, mesh = prepared['step'], prepared['mesh']
  cell = [prepared['state']]

  def device_batch(host):
    return steps_lib.global_batch({k: host[k] for k in keys}, mesh)

  fixed = device_batch(next(new_iter()))

  def step_only(_):
    cell[0], metrics = step(cell[0], fixed)
    jax.device_get(metrics['loss'])

  def pipeline_only(data_iter):
    next(data_iter)

  pending = []

  def loop_step(data_iter):
    cell[0], metrics = step(cell[0], device_batch(next(data_iter)))
    if pending:  # As the loop does: the previous step's metrics, this step queued.
      jax.device_get(pending.pop())
    pending.append(metrics)

  def loop_block(data_iter):
    for _ in range(steps):
      loop_step(data_iter)
    jax.device_get(pending.pop())  # The block ends when its last step has.

  rates = {}
  for label, fn in (('step', step_only), ('pipeline', pipeline_only), ('loop', loop_step)):
    samples = []
    for _ in range(repeats):
      if label == 'pipeline':
        start = time.perf_counter()
        data_iter = new_iter()
        fn(data_iter)
        first = time.perf_counter()
        for _ in range(steps):
          fn(data_iter)
        end = time.perf_counter()
        samples.append(((steps + 1) * batch / (end - start), first - start,
                        steps * batch / (end - first)))
        continue
      data_iter = new_iter()
      fn(data_iter)  # Warm-up (and the iterator's start-up).
      if label == 'loop':
        jax.device_get(pending.pop())
        samples.append(_rate(lambda: loop_block(data_iter), 1, steps * batch))  # pylint: disable=cell-var-from-loop
      else:
        samples.append(_rate(lambda: fn(data_iter), steps, batch))  # pylint: disable=cell-var-from-loop
    if label == 'pipeline':  # (with start-up, start-up seconds, after the first batch)
      rates['pipeline'], startup_s, rates['pipeline_steady'] = (
          statistics.median(column) for column in zip(*samples))
      continue
    rates[label] = statistics.median(samples)
  ratio_loop = rates['loop'] / rates['step']
  return {
      'config': name, 'dataset': dataset, 'batch': batch, 'workers': num_workers,
      'pipeline_img_s': rates['pipeline'], 'pipeline_startup_s': startup_s,
      'pipeline_steady_img_s': rates['pipeline_steady'], 'step_img_s': rates['step'],
      'loop_img_s': rates['loop'],
      'pipeline_over_step': rates['pipeline'] / rates['step'],
      'loop_over_step': ratio_loop,
      'verdict': 'data-bound' if ratio_loop < 0.9 else 'compute-bound',
      'compile_s': prepared['compile_s'],
  }


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='hourglass/cpu',
                      help=f'comma list of {sorted(train_step.PRESETS)}')
  parser.add_argument('--dataset', default='lsp',
                      help="training data ('lsp', 'synthetic', ...; built on first use)")
  parser.add_argument('--data_dir', default='', help="TFDS data dir ('' = default)")
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=10, help='batches per timed block')
  parser.add_argument('--num_workers', default='0',
                      help='comma list of grain worker counts (0 = in the main process)')
  common.add_common_flags(parser, repeats=3)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = f'training loop vs train step alone, batch {args.batch}'
  if common.run_variants_or_pin_threads('benchmarks.loop', args, argv, title, COLUMNS):
    return
  rows = []
  for name in [c.strip() for c in args.configs.split(',') if c.strip()]:
    for workers in [int(w) for w in args.num_workers.split(',')]:
      rows.append(measure(name, args.dataset, args.batch, args.steps, args.repeats,
                          workers, args.data_dir))
      print(common.format_table(rows[-1:], COLUMNS), flush=True)
  common.report(rows, args, title, COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
