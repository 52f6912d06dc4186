"""Input-pipeline throughput, host side and device side apart, in images/s.

Host side: the grain loader of `jhpe.data.pipeline` (read from array_record, JPEG
decode, canvas crop, batching), timed over whole batches after a warm-up. Device side:
the jitted augmentation (`jhpe.train.augment.augment`: affine warp, flip + joint swap,
colour jitter) plus the target heatmaps (`jhpe.heatmaps.render_gaussian`), timed on a
batch already on the device, compile time apart. Compare both with the train step's
images/s (`benchmarks/train_step.py`): the input pipeline must outpace it.

  python -m benchmarks.input_pipeline                           # every config
  python -m benchmarks.input_pipeline --configs=synthetic --batches=5 --repeats=3
  python -m benchmarks.input_pipeline --configs=lsp --worker_count=2

Datasets are built on first use into --data_dir (default: TFDS_DATA_DIR or
~/tensorflow_datasets); LSP needs the archives in --manual_dir (default ../shared/data).
"""

import argparse
import sys
import time

from benchmarks import common
from jhpe import cpu_defaults

# name -> (dataset, split, canvas size, batch size, heatmap stride, sigma, skeleton).
CONFIGS = {
    # The quickstart: the synthetic dataset at a small canvas.
    'synthetic': ('synthetic', 'train', 128, 16, 4, 1.0, 'lsp'),
    # The LSP protocol's training set at the papers' 256 px canvas.
    'lsp': ('lsp+lspet', 'train', 256, 16, 4, 1.0, 'lsp'),
}
COLUMNS = ['config', 'dataset', 'canvas', 'batch', 'workers', 'host_img_s',
           'device_compile_s', 'device_ms', 'device_img_s']


def host_throughput(loader, batches, warmup=2):
  """Images/s of the host loader over `batches` batches after `warmup` ones."""
  it = iter(loader)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  n = 0
  for _ in range(batches):
    n += len(next(it)['index'])
  return n / (time.perf_counter() - start), it


def device_fn(canvas, stride, sigma, flip_permutation):
  """The jitted device-side work of a train step before the model."""
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe import heatmaps  # pylint: disable=g-import-not-at-top
  from jhpe.data import augment  # pylint: disable=g-import-not-at-top
  size = canvas // stride

  @jax.jit
  def fn(rng, batch):
    out = augment.augment(rng, batch, flip_permutation=flip_permutation)
    joints = heatmaps.canvas_to_heatmap(out['joints'], stride)
    targets, weights = heatmaps.render_gaussian(joints, out['visible'], (size, size), sigma)
    return out['image'], targets, weights

  return fn


def run_config(name, args):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  dataset, split, canvas, batch, stride, sigma, skeleton = CONFIGS[name]
  loader = pipeline.make_loader(
      dataset, split, data_dir=args.data_dir or None, manual_dir=args.manual_dir or None,
      batch_size=args.batch_size or batch, canvas_size=canvas, train=True, seed=0,
      worker_count=args.worker_count)
  host, it = host_throughput(loader, args.batches)
  host_batch = next(it)
  device_batch = jax.device_put({k: host_batch[k] for k in ('image', 'joints', 'visible')})
  fn = device_fn(canvas, stride, sigma,
                 np.asarray(skeletons.get_skeleton(skeleton).flip_permutation))
  rng = jax.random.key(0)
  compiled, compile_s = common.compile_jitted(fn, rng, device_batch)
  timing = common.time_calls(lambda: compiled(rng, device_batch), repeats=args.repeats,
                             warmup=args.warmup)
  b = len(host_batch['index'])
  return dict(config=name, dataset=dataset, canvas=canvas, batch=b,
              workers=args.worker_count, host_img_s=host, device_compile_s=compile_s,
              device_ms=1000 * timing.median, device_img_s=b / timing.median)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser)
  parser.add_argument('--configs', default=','.join(CONFIGS),
                      help=f'comma-separated, from {", ".join(CONFIGS)}')
  parser.add_argument('--batches', type=int, default=20, help='host batches timed')
  parser.add_argument('--batch_size', type=int, default=0, help='0 = the config\'s')
  parser.add_argument('--worker_count', type=int, default=0,
                      help='grain worker processes (0 = main process)')
  parser.add_argument('--data_dir', default='', help='TFDS data dir')
  parser.add_argument('--manual_dir', default='', help='folder of the official archives')
  args = parser.parse_args(argv)
  names = [c for c in args.configs.split(',') if c]
  unknown = [c for c in names if c not in CONFIGS]
  if unknown:
    parser.error(f'--configs: unknown {unknown}; choose from {", ".join(CONFIGS)}')
  if common.run_variants_or_pin_threads('benchmarks.input_pipeline', args, argv,
                                        'input pipeline (images/s)', COLUMNS):
    return
  rows = [run_config(name, args) for name in names]
  common.report(rows, args, 'input pipeline (images/s): host = grain loader, '
                'device = jitted augment + target heatmaps', COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main(sys.argv[1:])
