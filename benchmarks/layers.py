"""The hourglass's layers one at a time, jhpe against the PyTorch port: where the step goes.

`hourglass_vs_torch.py` times whole train steps; this times each kind of layer of the
stacked hourglass alone, forward plus backward in train mode (gradients with respect to the
input and the parameters, as inside a train step), jhpe's own layers (`jhpe.models.layers`)
against the same layers of the PyTorch port (`benchmarks/torch_hourglass.py`), alternated
call by call, at the shapes of the 256 px model's 64x64 level (batch 8, 256 features, the
residual's middle 128):

- `residual`: the whole pre-activation bottleneck (BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1,
  the skip added);
- its parts: `bn_relu` (BatchNorm with batch statistics, then ReLU), `conv1x1` (256 ->
  128), `conv3x3` (128 -> 128); and the hourglass's `max_pool` (2x2) and `upsample` (2x
  nearest);
- `stem`: the first layer, a 7x7 stride-2 conv (3 -> 64) on the whole image (4x the
  level's side: 256 px at the default 64), parameter gradients only, as in a train step
  (nothing needs the image's gradient).

If every layer is as fast as PyTorch's or faster and the whole step is not, the difference
is in how the step is put together (scheduling, layout copies, memory), not in the layers.

  python -m benchmarks.layers                      # default shapes
  python -m benchmarks.layers --layers=residual,conv3x3 --repeats=9
  python -m benchmarks.layers --sides=jhpe; python -m benchmarks.layers --sides=torch
  python -m benchmarks.layers --batch=2 --size=16 --features=32 --repeats=2   # quick
"""

import argparse
import sys

from benchmarks import common
from jhpe import cpu_defaults

LAYERS = ('residual', 'bn_relu', 'conv1x1', 'conv3x3', 'max_pool', 'upsample', 'stem')
STEM_FEATURES = 64  # The stem conv's outputs (Newell et al.), whatever --features.
COLUMNS = ['layer', 'input', 'params', 'jhpe_ms', 'torch_ms', 'ratio', 'jhpe_compile_s']


def input_shape(layer, batch, size, features):
  """(B, H, W, C) of the layer's input at the level of side `size`.

  The 3x3 conv works on the residual's middle width; the stem on the RGB image, 4x the
  level's side (the stem and its max pool divide by 4).
  """
  if layer == 'stem':
    return (batch, 4 * size, 4 * size, 3)
  return (batch, size, size, features // 2 if layer == 'conv3x3' else features)


def jhpe_layer(layer, x, features):
  """jhpe's `layer` on `x` (B, H, W, C): a compiled fwd+bwd callable without arguments.

  Returns:
    (callable, compile seconds, parameter count).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jhpe.models import layers  # pylint: disable=g-import-not-at-top

  f32 = jnp.float32

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
      if layer == 'residual':
        return layers.PreActBottleneck(features)(x, train=True)
      if layer == 'bn_relu':
        return nn.relu(layers.batch_norm(True, f32, f32)(x))
      if layer == 'conv1x1':
        return layers.conv(features // 2, 1, f32, f32)(x)
      if layer == 'conv3x3':
        return layers.conv(features // 2, 3, f32, f32)(x)
      if layer == 'max_pool':
        return layers.max_pool(x, 2, 2, padding='VALID')
      if layer == 'upsample':
        return layers.upsample_nearest(x, 2)
      if layer == 'stem':  # As in `hourglass.StackedHourglass`.
        return nn.Conv(STEM_FEATURES, (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)
      raise ValueError(f'--layers: unknown {layer!r}; expected some of {LAYERS}')

  module = Layer()
  variables = module.init(jax.random.key(0), x)
  params = variables.get('params', {})
  batch_stats = {'batch_stats': variables['batch_stats']} if 'batch_stats' in variables else {}

  def forward(params, x):
    # Train mode: BatchNorm uses (and updates) the batch statistics, as in a train step.
    y, _ = module.apply({'params': params, **batch_stats}, x, mutable=['batch_stats'])
    return y

  out = jax.eval_shape(forward, params, x)
  cotangent = jax.random.normal(jax.random.key(1), out.shape, out.dtype)

  # The cotangent is an argument, not a closed-over constant that XLA would fold into
  # the program.
  def loss(params, x, cotangent):
    return jnp.vdot(forward(params, x), cotangent)

  # The image's gradient is not needed in a train step (the stem's input): XLA prunes it.
  grad = jax.jit(jax.value_and_grad(loss, argnums=0 if layer == 'stem' else (0, 1)))
  compiled, compile_s = common.compile_jitted(grad, params, x, cotangent)
  num_params = sum(p.size for p in jax.tree.leaves(params))
  return (lambda: compiled(params, x, cotangent)), compile_s, num_params


def torch_layer(layer, x, features):
  """The port's `layer` on `x` (B, C, H, W torch tensor): (fwd+bwd callable, parameters)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_hourglass  # pylint: disable=g-import-not-at-top

  modules = {
      'residual': lambda: torch_hourglass.Residual(features, features),
      'bn_relu': lambda: nn.Sequential(nn.BatchNorm2d(features), nn.ReLU(inplace=True)),
      'conv1x1': lambda: nn.Conv2d(features, features // 2, 1),
      'conv3x3': lambda: nn.Conv2d(features // 2, features // 2, 3, padding=1),
      'max_pool': lambda: nn.MaxPool2d(2, 2),
      'upsample': lambda: nn.Upsample(scale_factor=2, mode='nearest'),
      'stem': lambda: nn.Conv2d(3, STEM_FEATURES, 7, 2, 3),
  }
  module = modules[layer]().train()
  with torch.no_grad():
    cotangent = torch.randn_like(module(x))

  def fwd_bwd():
    module.zero_grad(set_to_none=True)
    xr = x.detach().requires_grad_(layer != 'stem')  # The stem: parameter gradients only.
    module(xr).backward(cotangent)
    return xr.grad

  return fwd_bwd, sum(p.numel() for p in module.parameters())


def compare(layer_names=LAYERS, batch=8, size=64, features=256, repeats=5, warmup=1,
            sides=common.SIDES):
  """One row per layer: jhpe and torch fwd+bwd times, alternated; ratio = torch / jhpe.

  `sides` may name one side only, timed in a process of its own (no ratio): one process
  shares one malloc heap between the two frameworks (benchmarks/README.md).
  Raises a RuntimeError if a layer's parameter counts differ (not the same layer).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  unknown = [name for name in layer_names if name not in LAYERS]
  if unknown:
    raise ValueError(f'--layers: unknown {unknown}; expected some of {list(LAYERS)}')
  common.check_sides(sides)
  torch = None
  if 'torch' in sides:
    import torch  # pylint: disable=g-import-not-at-top,redefined-outer-name
  rows = []
  for layer in layer_names:
    shape = input_shape(layer, batch, size, features)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fns, params, row = {}, {}, {'layer': layer, 'input': 'x'.join(map(str, shape))}
    if 'jhpe' in sides:
      fns['jhpe'], row['jhpe_compile_s'], params['jhpe'] = jhpe_layer(
          layer, jax.numpy.asarray(x), features)
    if 'torch' in sides:
      fns['torch'], params['torch'] = torch_layer(
          layer, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), features)
    if len(set(params.values())) > 1:
      raise RuntimeError(f'{layer}: jhpe has {params["jhpe"]} parameters, the PyTorch port '
                         f'{params["torch"]}: not the same layer')
    row['params'] = next(iter(params.values()))
    timings = common.time_interleaved(fns, repeats, warmup, syncs={'torch': lambda _: None})
    for side, timing in timings.items():
      row[f'{side}_ms'] = timing.median * 1e3
      row[f'{side}_min_ms'] = timing.min * 1e3
    if len(timings) == 2:
      row['ratio'] = timings['torch'].median / timings['jhpe'].median
    rows.append(row)
  return rows


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--layers', default=','.join(LAYERS),
                      help=f'comma list of {", ".join(LAYERS)}')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=64, help='height = width of the input')
  parser.add_argument('--features', type=int, default=256)
  common.add_sides_flag(parser)
  common.add_common_flags(parser)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = ('hourglass layers, fwd+bwd in train mode: jhpe vs the PyTorch port, '
           'ratio = torch ms / jhpe ms')
  if common.run_rounds_if_asked('benchmarks.layers', args, argv, title, COLUMNS):
    return
  if common.run_variants_or_pin_threads('benchmarks.layers', args, argv, title, COLUMNS):
    return
  rows = compare(tuple(args.layers.split(',')), args.batch, args.size, args.features,
                 args.repeats, args.warmup, tuple(args.sides.split(',')))
  common.report(rows, args, title, COLUMNS)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
