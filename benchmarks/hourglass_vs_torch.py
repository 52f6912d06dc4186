"""The stacked hourglass side by side with a faithful PyTorch port, in one run.

Both sides get the same: architecture (parameter counts checked equal), input (B, 256, 256,
3) in [0, 1] (NCHW for torch), targets (B, 64, 64, J), loss (stage-wise heatmap MSE: the sum
over stacks of the mean squared error), float32, Adam (lr 2.5e-4), BatchNorm in train mode,
and cores (`--threads`; by default all: XLA's pool is sized from the affinity mask, torch
gets `torch.set_num_threads`). The jhpe side is the jhpe model with a plain jitted Adam step
(`jax.value_and_grad` of the loss, optax.adam, buffers donated); the torch side is eager
PyTorch (`zero_grad`, forward, `backward`, `step`). Inference is eval mode, batch B, no
flip. The two sides are timed alternately call by call (`common.time_interleaved`) so a
shared machine's drifting load hits both alike. Compile time is reported apart.

  python -m benchmarks.hourglass_vs_torch                          # 2 and 8 stacks, batch 8
  python -m benchmarks.hourglass_vs_torch --variants=jhpe,xla      # with / without jhpe's flags
  python -m benchmarks.hourglass_vs_torch --scan_stacks            # jhpe's stacks scanned
  python -m benchmarks.hourglass_vs_torch --sides=torch --variants=jhpe,no_malloc  # alone
  python -m benchmarks.hourglass_vs_torch --stacks=1 --size=64 --features=32 --batch=2 \\
      --repeats=2                                                    # quick
"""

import argparse
import sys

from benchmarks import common
from jhpe import cpu_defaults

COLUMNS = ['stacks', 'mode', 'params', 'jhpe_ms', 'torch_ms', 'jhpe_img_s', 'torch_img_s',
           'ratio', 'jhpe_compile_s']
LEARNING_RATE = 2.5e-4


def make_inputs(batch, size, num_joints, seed=0):
  """Random images (B, S, S, 3) in [0, 1] and targets (B, S/4, S/4, J), numpy float32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  targets = rng.uniform(size=(batch, size // 4, size // 4, num_joints)).astype(np.float32)
  return images, targets


def jhpe_side(num_stacks, features, num_joints, depth, images, targets, dtype='float32',
              scan_stacks=False):
  """The jhpe model's train step and inference, compiled.

  Returns:
    dict with 'params' (count), 'train' and 'infer' (callables without arguments that
    run one step), 'compile_train_s', 'compile_infer_s'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jhpe import models  # pylint: disable=g-import-not-at-top
  from jhpe.models import summary  # pylint: disable=g-import-not-at-top

  model = models.get_model('hourglass', num_stacks=num_stacks, num_features=features,
                           num_joints=num_joints, depth=depth, dtype=jnp.dtype(dtype),
                           scan_stacks=scan_stacks)
  images = jnp.asarray(images)
  targets = jnp.asarray(targets)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.key(0), images[:1])
  tx = optax.adam(LEARNING_RATE)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params'])}

  def loss_fn(params, batch_stats, images, targets):
    outputs, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                   train=True, mutable=['batch_stats'])
    loss = sum(jnp.mean(jnp.square(o - targets)) for o in outputs)
    return loss, updates['batch_stats']

  def train_step(state, images, targets):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], state['batch_stats'], images, targets)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state}, loss

  train, compile_train = common.compile_jitted(
      jax.jit(train_step, donate_argnums=0), state, images, targets)
  infer, compile_infer = common.compile_jitted(
      jax.jit(lambda v, x: model.apply(v, x, train=False)), variables, images)
  cell = [state]

  def run_train():
    cell[0], loss = train(cell[0], images, targets)
    return loss

  return {
      'params': summary.count_params(variables),
      'train': run_train,
      # The train step donates its state: infer with the current parameters.
      'infer': lambda: infer({'params': cell[0]['params'],
                              'batch_stats': cell[0]['batch_stats']}, images),
      'compile_train_s': compile_train,
      'compile_infer_s': compile_infer,
  }


def torch_side(num_stacks, features, num_joints, depth, images, targets,
               channels_last=False):
  """The PyTorch port's train step and inference (eager). Same return keys as jhpe_side."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_hourglass  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_hourglass.StackedHourglass(num_stacks=num_stacks, features=features,
                                           depth=depth, num_joints=num_joints)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(targets).permute(0, 3, 1, 2).contiguous()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    y = y.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

  def run_train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = torch_hourglass.stagewise_mse(model(x), y)
    loss.backward()
    optimizer.step()
    return loss

  def run_infer():
    model.eval()
    with torch.inference_mode():
      return model(x)

  return {'params': torch_hourglass.num_params(model), 'train': run_train,
          'infer': run_infer, 'compile_train_s': 0.0, 'compile_infer_s': 0.0}




def compare(num_stacks, batch=8, size=256, features=256, num_joints=16, depth=4,
            modes=('train', 'infer'), repeats=3, warmup=1, channels_last=False,
            dtype='float32', sides=common.SIDES, scan_stacks=False):
  """Rows (one per mode) of the side by side for one number of stacks.

  `sides` may name one side only: it is then timed in a process of its own (no ratio).
  One process shares one malloc between the sides, and glibc's settings move PyTorch's
  step as much as XLA's (benchmarks/README.md).

  Raises a RuntimeError if the two models' parameter counts differ (the port would not be
  the same network).
  """
  common.check_sides(sides)
  images, targets = make_inputs(batch, size, num_joints)
  built = {}
  if 'jhpe' in sides:
    built['jhpe'] = jhpe_side(num_stacks, features, num_joints, depth, images, targets,
                              dtype, scan_stacks)
  if 'torch' in sides:
    built['torch'] = torch_side(num_stacks, features, num_joints, depth, images, targets,
                                channels_last)
  params = {side: b['params'] for side, b in built.items()}
  if len(set(params.values())) > 1:
    raise RuntimeError(
        f'parameter counts differ: jhpe {params["jhpe"]} vs torch port {params["torch"]} '
        f'({num_stacks} stacks, {features} features): the port is not the same network')
  rows = []
  for mode in modes:
    timings = common.time_interleaved(
        {side: b[mode] for side, b in built.items()}, repeats, warmup,
        syncs={'torch': lambda _: None})
    row = {'stacks': num_stacks, 'mode': mode, 'batch': batch, 'size': size,
           'params': next(iter(params.values()))}
    for side, timing in timings.items():
      row.update({f'{side}_ms': timing.median * 1e3, f'{side}_img_s': batch / timing.median,
                  f'{side}_min_ms': timing.min * 1e3})
    if 'jhpe' in built:
      row['jhpe_compile_s'] = built['jhpe'][f'compile_{mode}_s']
    if len(timings) == 2:
      row['ratio'] = timings['torch'].median / timings['jhpe'].median
    rows.append(row)
  return rows


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--stacks', default='2,8', help='comma list of stack counts')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--features', type=int, default=256)
  parser.add_argument('--joints', type=int, default=16)
  parser.add_argument('--depth', type=int, default=4)
  parser.add_argument('--modes', default='train,infer')
  parser.add_argument('--torch_channels_last', action='store_true',
                      help='torch in channels_last memory format (NHWC)')
  common.add_sides_flag(parser)
  parser.add_argument('--scan_stacks', action='store_true',
                      help="jhpe's model with nn.scan over its stacks (--scan_stacks)")
  parser.add_argument('--dtype', default='float32',
                      help="jhpe compute dtype (the comparison is float32; 'bfloat16' "
                           'to try mixed precision)')
  common.add_common_flags(parser, repeats=3)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = (f'stacked hourglass: jhpe vs PyTorch port, {args.size}x{args.size}, batch '
           f'{args.batch}, ratio = jhpe img/s / torch img/s')
  if common.run_rounds_if_asked('benchmarks.hourglass_vs_torch', args, argv, title, COLUMNS):
    return
  if common.run_variants_or_pin_threads('benchmarks.hourglass_vs_torch', args, argv,
                                        title, COLUMNS):
    return
  rows = []
  for stacks in [int(s) for s in args.stacks.split(',')]:
    new = compare(stacks, args.batch, args.size, args.features, args.joints, args.depth,
                  tuple(args.modes.split(',')), args.repeats, args.warmup,
                  args.torch_channels_last, args.dtype, tuple(args.sides.split(',')),
                  args.scan_stacks)
    print(common.format_table(new, COLUMNS), flush=True)  # Partial results early.
    rows += new
  common.report(rows, args, title, COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
