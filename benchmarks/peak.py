"""Measured peak FLOP/s on this machine: a large jitted matmul and a large convolution.

The denominator of every "fraction of peak" in the benchmarks is measured here, in the same
run and on the same machine, rather than taken from a data sheet:
- a large float32 matmul (N x N by N x N, 2 N^3 FLOPs): what the CPU's BLAS-class kernels
  reach, close to the hardware's limit;
- a large float32 3x3 convolution, forward plus backward (the bottleneck 3x3 of the
  hourglass: 128 -> 128 channels at 64x64, batch 8), and each of its three parts apart:
  forward, input gradient, weight gradient (each 2 B H W K^2 Cin Cout FLOPs). The parts
  show where XLA's CPU convolutions lose time (on jaxlib 0.10.2 the weight gradient under
  the default YNNPACK path: run with `--variants=jhpe,xla`).
With torch installed, the same operations through PyTorch (`--torch`) say what the other
framework reaches on the same cores.

  python -m benchmarks.peak                       # default sizes
  python -m benchmarks.peak --variants=jhpe,xla   # with and without jhpe's XLA flags
  python -m benchmarks.peak --matmul_size=512 --conv_size=16 --repeats=2   # quick
"""

import argparse
import sys

from benchmarks import common
from jhpe import cpu_defaults

COLUMNS = ['framework', 'op', 'layout', 'shape', 'gflop', 'ms', 'min_ms', 'gflops']


def _row(framework, op, layout, shape, flops, timing):
  return {
      'framework': framework, 'op': op, 'layout': layout, 'shape': shape,
      'gflop': flops / 1e9, 'ms': timing.median * 1e3, 'min_ms': timing.min * 1e3,
      'gflops': flops / timing.median / 1e9,
  }


def conv_flops(batch, size, cin, cout, kernel):
  """FLOPs of one stride-1 'SAME' convolution (a multiply-add counts 2)."""
  return 2 * batch * size * size * kernel * kernel * cin * cout


def jax_matmul(n, repeats=5, warmup=1):
  """Row for an (n, n) @ (n, n) float32 jitted matmul."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  compiled, _ = common.compile_jitted(jax.jit(jnp.matmul), a, b)
  timing = common.time_calls(lambda: compiled(a, b), repeats, warmup)
  return _row('jax', 'matmul', '-', f'{n}x{n}x{n}', 2 * n ** 3, timing)


def jax_conv(batch, size, cin, cout, kernel=3, layout='NHWC', repeats=5, warmup=1,
             parts=('fwd', 'dgrad', 'wgrad', 'fwd+bwd')):
  """Rows for a float32 stride-1 'SAME' convolution: forward, each gradient, all three.

  Args:
    batch, size, cin, cout, kernel: input (batch, size, size, cin), kernel x kernel.
    layout: 'NHWC' (flax's layout, HWIO kernel) or 'NCHW' (OIHW kernel).
    repeats, warmup: see `common.time_calls`.
    parts: which of 'fwd', 'dgrad' (input gradient), 'wgrad' (weight gradient),
      'fwd+bwd' (all three, as in a train step) to time.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if layout == 'NHWC':
    dims = ('NHWC', 'HWIO', 'NHWC')
    x_shape, w_shape = (batch, size, size, cin), (kernel, kernel, cin, cout)
    y_shape = (batch, size, size, cout)
  elif layout == 'NCHW':
    dims = ('NCHW', 'OIHW', 'NCHW')
    x_shape, w_shape = (batch, cin, size, size), (cout, cin, kernel, kernel)
    y_shape = (batch, cout, size, size)
  else:
    raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32)
  w = jax.random.normal(kw, w_shape, jnp.float32) * 0.05
  g = jax.random.normal(kg, y_shape, jnp.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dims)

  fns = {
      'fwd': (conv, (x, w), 1),
      # vjp with respect to one argument only: XLA drops the unused forward.
      'dgrad': (lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0], (x, w, g), 1),
      'wgrad': (lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0], (x, w, g), 1),
      'fwd+bwd': (jax.value_and_grad(lambda x, w, g: jnp.vdot(conv(x, w), g),
                                     argnums=(0, 1)), (x, w, g), 3),
  }
  flops = conv_flops(batch, size, cin, cout, kernel)
  shape = f'{batch}x{size}x{size}x{cin}->{cout} k{kernel}'
  rows = []
  for part in parts:
    fn, fn_args, n = fns[part]
    compiled, _ = common.compile_jitted(jax.jit(fn), *fn_args)
    timing = common.time_calls(lambda: compiled(*fn_args), repeats, warmup)  # pylint: disable=cell-var-from-loop
    rows.append(_row('jax', f'conv {part}', layout, shape, n * flops, timing))
  return rows


def torch_matmul(n, repeats=5, warmup=1):
  """Row for the same matmul through torch (None without torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  g = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=g)
  b = torch.randn(n, n, generator=g)
  with torch.no_grad():
    timing = common.time_calls(lambda: a @ b, repeats, warmup, sync=lambda _: None)
  return _row('torch', 'matmul', '-', f'{n}x{n}x{n}', 2 * n ** 3, timing)


def torch_conv(batch, size, cin, cout, kernel=3, repeats=5, warmup=1,
               parts=('fwd', 'dgrad', 'wgrad', 'fwd+bwd'), channels_last=False):
  """Rows for the same convolution through torch (NCHW, or channels_last); [] without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  g = torch.Generator().manual_seed(0)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(batch, cin, size, size, generator=g).to(memory_format=fmt)
  w = (torch.randn(cout, cin, kernel, kernel, generator=g) * 0.05).to(memory_format=fmt)
  gy = torch.randn(batch, cout, size, size, generator=g).to(memory_format=fmt)
  pad = kernel // 2

  def fwd_bwd():
    xr = x.detach().requires_grad_(True)
    wr = w.detach().requires_grad_(True)
    F.conv2d(xr, wr, padding=pad).backward(gy)
    return wr.grad

  fns = {
      'fwd': (lambda: F.conv2d(x, w, padding=pad), 1),
      'dgrad': (lambda: torch.nn.grad.conv2d_input(x.shape, w, gy, padding=pad), 1),
      'wgrad': (lambda: torch.nn.grad.conv2d_weight(x, w.shape, gy, padding=pad), 1),
      'fwd+bwd': (fwd_bwd, 3),
  }
  flops = conv_flops(batch, size, cin, cout, kernel)
  shape = f'{batch}x{size}x{size}x{cin}->{cout} k{kernel}'
  layout = 'NHWC' if channels_last else 'NCHW'
  rows = []
  for part in parts:
    fn, n = fns[part]
    if part == 'fwd+bwd':
      timing = common.time_calls(fn, repeats, warmup, sync=lambda _: None)
    else:
      with torch.no_grad():
        timing = common.time_calls(fn, repeats, warmup, sync=lambda _: None)
    rows.append(_row('torch', f'conv {part}', layout, shape, n * flops, timing))
  return rows


def measure(matmul_size=4096, conv_batch=8, conv_size=64, conv_channels=128,
            layouts=('NHWC',), with_torch=False, repeats=5, warmup=1):
  """All peak rows. The peak used for fractions is `peak_gflops(rows)`."""
  rows = [jax_matmul(matmul_size, repeats, warmup)]
  for layout in layouts:
    rows += jax_conv(conv_batch, conv_size, conv_channels, conv_channels, 3, layout,
                     repeats, warmup)
  if with_torch:
    row = torch_matmul(matmul_size, repeats, warmup)
    rows += [row] if row else []
    rows += torch_conv(conv_batch, conv_size, conv_channels, conv_channels, 3,
                       repeats, warmup)
  return rows


def peak_gflops(rows):
  """The measured peak: the best GFLOP/s of any row (in practice the matmul)."""
  return max(r['gflops'] for r in rows)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--matmul_size', type=int, default=4096)
  parser.add_argument('--conv_batch', type=int, default=8)
  parser.add_argument('--conv_size', type=int, default=64)
  parser.add_argument('--conv_channels', type=int, default=128)
  parser.add_argument('--layouts', default='NHWC', help='comma list of NHWC, NCHW')
  parser.add_argument('--torch', action='store_true', help='also time torch')
  common.add_common_flags(parser)
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  title = 'peak FLOP/s (float32)'
  if common.run_variants_or_pin_threads('benchmarks.peak', args, argv, title, COLUMNS):
    return
  rows = measure(args.matmul_size, args.conv_batch, args.conv_size, args.conv_channels,
                 tuple(args.layouts.split(',')), args.torch, args.repeats, args.warmup)
  common.report(rows, args, title, COLUMNS)
  print(f'# measured peak: {peak_gflops(rows):.1f} GFLOP/s')


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
