"""Timing helpers shared by the benchmarks.

Rules every benchmark follows (so that figures are comparable):
- compile time is measured apart: a jitted function is lowered and compiled explicitly
  (`compile_jitted`), then only the compiled executable is timed;
- warm-up calls run before timing; every timed call ends with `jax.block_until_ready` (JAX
  dispatches asynchronously, so without it we would time the dispatch only);
- a figure is the median over `repeats` timed calls (the minimum is reported beside it:
  on a shared machine the median says what a user sees, the minimum what the code can do);
- threads: XLA's CPU thread pool is sized from the process's CPU affinity, so `--threads N`
  pins the process to N cores *before JAX starts* and sets `torch.set_num_threads(N)`; by
  default both sides use every core the process may run on;
- jhpe's CPU defaults (`jhpe.cpu_defaults.apply()`: XLA flags, malloc settings) are applied
  in each script's `__main__`, before JAX starts, as jhpe's entry points do.

XLA flags are read once, when JAX initialises its backend, so comparing flag sets needs
separate processes: `run_variants` re-runs a benchmark module once per variant in a
subprocess with its own ``XLA_FLAGS`` / ``JHPE_CPU_DEFAULTS`` and gathers the JSON rows.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from jhpe import cpu_defaults

# Named CPU settings a benchmark can be re-run under (`--variants=jhpe,xla`). Each is the
# environment of a subprocess: `JHPE_CPU_DEFAULTS` and flags appended to ``XLA_FLAGS``.
# The XLA flag variants keep jhpe's malloc settings ('malloc'), so only the flags differ.
VARIANTS = {
    # jhpe's CPU defaults (jhpe/cpu_defaults.py): what its entry points apply.
    'jhpe': {'JHPE_CPU_DEFAULTS': '1', 'XLA_FLAGS': ''},
    # XLA's and glibc's own defaults (YNNPACK convolutions, a fresh mmap of the temporary
    # buffer every step): what a plain JAX user gets.
    'xla': {'JHPE_CPU_DEFAULTS': '0', 'XLA_FLAGS': ''},
    # jhpe's XLA flags without its malloc settings.
    'no_malloc': {'JHPE_CPU_DEFAULTS': 'flags', 'XLA_FLAGS': ''},
    # Only the convolution flag, without routing dots to oneDNN.
    'ynn_conv_off': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': cpu_defaults.CPU_XLA_FLAGS[0]},
    # jhpe's defaults plus oneDNN for convolutions too (experimental fusion path).
    'onednn_conv': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': ' '.join([
            cpu_defaults.CPU_XLA_FLAGS[0],
            '--xla_cpu_experimental_onednn_fusion_type=dot,individual_convolution'])},
    # Convolutions through XNNPACK instead of YNNPACK.
    'xnn_conv': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': ' '.join([
            *cpu_defaults.CPU_XLA_FLAGS,
            '--xla_cpu_experimental_xnn_fusion_type=+individual_convolution'])},
    # The older oneDNN thunks for matmul and convolution fusions.
    'legacy_onednn': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': ' '.join([*cpu_defaults.CPU_XLA_FLAGS, '--xla_cpu_use_onednn=true'])},
    # jhpe's defaults with 512-bit vectors in XLA's own generated code (AVX-512 CPUs).
    'vec512': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': ' '.join([
            *cpu_defaults.CPU_XLA_FLAGS, '--xla_cpu_prefer_vector_width=512'])},
    # No library fusions at all: every op in XLA's own code or Eigen.
    'no_libs': {
        'JHPE_CPU_DEFAULTS': 'malloc',
        'XLA_FLAGS': ' '.join([
            '--xla_cpu_experimental_ynn_fusion_type=-dot,-eltwise,-reduce,'
            '-individual_dot,-individual_convolution',
            '--xla_cpu_use_xnnpack=false'])},
}


def add_common_flags(parser: argparse.ArgumentParser, repeats=5):
  """Flags every benchmark takes (threads, repeats, variants, JSON output).

  `repeats` is the benchmark's default for --repeats (slow benchmarks take fewer).
  """
  parser.add_argument('--repeats', type=int, default=repeats,
                      help='timed calls per figure (the median is reported)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed calls after compilation')
  parser.add_argument('--threads', type=int, default=None,
                      help='cores for both XLA and torch (default: all allowed cores)')
  parser.add_argument('--variants', default='',
                      help='comma-separated XLA flag sets from common.VARIANTS, each run '
                           f'in its own subprocess: {", ".join(VARIANTS)}')
  parser.add_argument('--json_out', default='',
                      help='also write the rows as JSON lines to this file')
  return parser


# The two sides of a side by side: jhpe and the PyTorch port.
SIDES = ('jhpe', 'torch')


def add_sides_flag(parser: argparse.ArgumentParser):
  """--sides: both sides in one process (with their ratio), or one side alone; --rounds."""
  parser.add_argument('--sides', default=','.join(SIDES),
                      help='both sides in one process (the default, with the ratio) or one '
                           'of them alone in its own process')
  parser.add_argument('--rounds', type=int, default=0,
                      help='N > 0: each side alone in a process of its own, alternated N '
                           'times; prints every round and the medians (for a noisy machine)')


def check_sides(sides):
  """Raises a ValueError naming --sides unless `sides` is a non-empty subset of SIDES."""
  if not sides or set(sides) - set(SIDES):
    raise ValueError(f'--sides: expected some of {SIDES}, got {sides}')


def set_threads(threads):
  """Pins the process to `threads` cores (before JAX starts) and sets torch's threads.

  Returns the number of cores both sides will use.
  """
  allowed = sorted(os.sched_getaffinity(0))
  if threads is not None:
    if not 1 <= threads <= len(allowed):
      raise ValueError(
          f'--threads must be in [1, {len(allowed)}] (the cores this process may use), '
          f'got {threads}')
    # XLA sizes its intra-op thread pool from the affinity mask when the backend starts.
    os.sched_setaffinity(0, allowed[:threads])
  n = len(os.sched_getaffinity(0))
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(n)
  except ImportError:
    pass
  return n


def machine_info():
  """The facts a figure needs beside it: CPU, cores, versions, flags, date."""
  cpu = platform.processor() or platform.machine()
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        cpu = line.split(':', 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  import jax  # pylint: disable=g-import-not-at-top
  info = {
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'cpu': cpu,
      'cores': len(os.sched_getaffinity(0)),
      'jax': jax.__version__,
      'device': str(jax.devices()[0].device_kind),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top
    info['torch'] = torch.__version__
    info['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  return info


@dataclasses.dataclass
class Timing:
  """Seconds per call: median and minimum over the timed calls, and compile time."""
  median: float
  min: float
  compile: float = float('nan')
  times: tuple = ()


def time_calls(fn, repeats=5, warmup=1, sync=None):
  """Times `fn()` `repeats` times after `warmup` untimed calls.

  Args:
    fn: a callable without arguments (a closure that threads its own state).
    repeats: timed calls.
    warmup: untimed calls first.
    sync: called on fn's result to wait for it; default `jax.block_until_ready`.
  Returns:
    A `Timing` (compile left NaN).
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  if sync is None:
    import jax  # pylint: disable=g-import-not-at-top
    sync = jax.block_until_ready
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return Timing(median=statistics.median(times), min=min(times), times=tuple(times))


def time_interleaved(fns, repeats=5, warmup=1, syncs=None):
  """Times several callables, alternating them call by call.

  On a shared machine the load drifts; alternating (a, b, a, b, ...) exposes every side to
  the same drift, so their ratio is fairer than timing one after the other.

  Args:
    fns: dict name -> callable without arguments.
    repeats, warmup: as in `time_calls`.
    syncs: dict name -> sync function (default `jax.block_until_ready`).
  Returns:
    dict name -> `Timing`.
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  import jax  # pylint: disable=g-import-not-at-top
  syncs = {name: (syncs or {}).get(name, jax.block_until_ready) for name in fns}
  for _ in range(warmup):
    for name, fn in fns.items():
      syncs[name](fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      syncs[name](fn())
      times[name].append(time.perf_counter() - start)
  return {name: Timing(median=statistics.median(t), min=min(t), times=tuple(t))
          for name, t in times.items()}


def compile_jitted(jitted, *args, **kwargs):
  """Lowers and compiles `jitted` for these arguments; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return compiled, time.perf_counter() - start


def compiled_flops(compiled):
  """FLOPs of one call of a compiled executable by XLA's cost analysis (None if unknown)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def format_table(rows, columns=None):
  """A markdown table of a list of dicts (floats with 3 significant digits), aligned so
  that it reads as well in a terminal as pasted into benchmarks/README.md."""
  if not rows:
    return '(no rows)'
  if columns is None:
    columns = []
    for row in rows:
      columns += [k for k in row if k not in columns]

  def fmt(v):
    if isinstance(v, float):
      if v != v:  # NaN
        return '-'
      return f'{v:.3g}' if abs(v) < 1000 else f'{v:.0f}'
    return '-' if v is None else str(v)

  cells = [[fmt(row.get(c)) for c in columns] for row in rows]
  widths = [max(3, len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  row = lambda values: '| ' + ' | '.join(v.ljust(w) for v, w in zip(values, widths)) + ' |'
  lines = [row(columns), row(['-' * w for w in widths])]
  lines += [row(r) for r in cells]
  return '\n'.join(lines)


def machine_line(info):
  """'# key=value, ...' of `machine_info()`: the line every table is printed under."""
  return '# ' + ', '.join(f'{k}={v}' for k, v in info.items())


def write_json_rows(path, rows, info):
  """The rows as JSON lines, each with the machine it was measured on under '_machine'."""
  with open(path, 'w') as f:
    for row in rows:
      f.write(json.dumps({**row, '_machine': info}) + '\n')


def report(rows, args, title, columns=None):
  """Prints the machine line and the table; writes JSON lines if --json_out was given."""
  info = machine_info()
  print(f'# {title}')
  print(machine_line(info))
  print(format_table(rows, columns))
  if getattr(args, 'json_out', ''):
    write_json_rows(args.json_out, rows, info)


def _strip_flag(argv, name):
  """argv without `--name=V` / `--name V`."""
  out, skip = [], False
  for i, a in enumerate(argv):
    if skip:
      skip = False
      continue
    if a == f'--{name}':
      skip = i + 1 < len(argv)
      continue
    if a.startswith(f'--{name}='):
      continue
    out.append(a)
  return out


def run_variants(module, argv, variants, timeout=None):
  """Runs `python -m module argv` once per XLA flag variant, each in its own process.

  Args:
    module: e.g. 'benchmarks.peak'.
    argv: the module's arguments (without --variants / --json_out; they are removed).
    variants: names from `VARIANTS`.
    timeout: seconds per subprocess.
  Returns:
    rows (list of dicts), each with a 'variant' key first.
  """
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f'--variants: unknown {unknown}; expected names from {list(VARIANTS)}')
  argv = _strip_flag(_strip_flag(list(argv), 'variants'), 'json_out')
  rows = []
  for name in variants:
    env = dict(os.environ)
    env['JHPE_CPU_DEFAULTS'] = VARIANTS[name]['JHPE_CPU_DEFAULTS']
    # Start from the user's XLA_FLAGS minus what jhpe appended in *this* process.
    base = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                    if f.split('=')[0] not in
                    {g.split('=')[0] for g in cpu_defaults.CPU_XLA_FLAGS})
    env['XLA_FLAGS'] = ' '.join(filter(None, [base, VARIANTS[name]['XLA_FLAGS']]))
    print(f'# variant {name}: XLA_FLAGS="{env["XLA_FLAGS"]}" '
          f'JHPE_CPU_DEFAULTS={env["JHPE_CPU_DEFAULTS"]}', flush=True)
    rows += [{'variant': name, **row}
             for row in run_module(module, argv, env, timeout, f'variant {name!r}')]
  return rows


def run_module(module, argv, env=None, timeout=None, what='benchmark'):
  """Rows of `python -m module *argv --json_out=<a temporary file>` in a fresh process.

  `env` defaults to this process's environment (to which a benchmark's `__main__` has
  appended jhpe's XLA flags: the child then finds them there and adds nothing).
  """
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ if env is None else env)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [repo_root, env.get('PYTHONPATH')]))
  with tempfile.NamedTemporaryFile(suffix='.jsonl', delete=False) as f:
    path = f.name
  cmd = [sys.executable, '-m', module, *argv, f'--json_out={path}']
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=repo_root)
    if proc.returncode != 0:
      print(proc.stdout[-3000:], proc.stderr[-3000:], sep='\n', file=sys.stderr)
      raise RuntimeError(f'{what} failed (exit {proc.returncode}): {cmd}')
    with open(path) as f:
      rows = [json.loads(line) for line in f]
  finally:
    os.unlink(path)
  for row in rows:
    row.pop('_machine', None)
  return rows


def merge_rounds(rounds):
  """Per-side rows of several rounds -> one row per round and key, plus summaries.

  Args:
    rounds: a list (one entry per round) of lists of rows, each row from one side alone
      (its timings under '<side>_ms' and '<side>_min_ms'; every other field but
      '<side>_*' and 'ratio' is the key that pairs the sides' rows, e.g. stacks and mode).

  Returns:
    rows with 'round' 1..N and 'ratio' = torch ms / jhpe ms of that round, then for each
    key a 'median' row (each side's median over the rounds, and their ratio) and a 'best'
    row (each side's fastest call over all rounds, and their ratio).
  """
  def key_of(row):
    return tuple((k, v) for k, v in row.items()
                 if k != 'ratio' and not k.startswith(tuple(f'{s}_' for s in SIDES)))

  merged = []  # (key, row) pairs, in the order the rows came.
  for number, rows in enumerate(rounds, 1):
    by_key = {}
    for row in rows:
      by_key.setdefault(key_of(row), {'round': number}).update(row)
    merged += by_key.items()
  out = []
  for key in dict.fromkeys(k for k, _ in merged):
    same = [row for k, row in merged if k == key]
    for row in same:
      if 'jhpe_ms' in row and 'torch_ms' in row:
        row['ratio'] = row['torch_ms'] / row['jhpe_ms']
    out += same
    for name, field, pick in (('median', 'ms', statistics.median), ('best', 'min_ms', min)):
      summary = {'round': name, **dict(key)}
      for side in SIDES:
        values = [row[f'{side}_{field}'] for row in same if f'{side}_{field}' in row]
        if values:
          summary[f'{side}_ms'] = pick(values)
      if 'jhpe_ms' in summary and 'torch_ms' in summary:
        summary['ratio'] = summary['torch_ms'] / summary['jhpe_ms']
      out.append(summary)
  return out


def run_rounds_if_asked(module, args, argv, title, columns):
  """With --rounds=N: each side alone, alternated N times; prints the table; True.

  Without it returns False (the caller measures in this process).
  """
  if not args.rounds:
    return False
  if args.rounds < 0 or args.variants:
    raise ValueError(f'--rounds: expected N >= 1 and no --variants, got {args.rounds}')
  sides = tuple(args.sides.split(','))
  check_sides(sides)
  argv = _strip_flag(_strip_flag(_strip_flag(list(argv), 'rounds'), 'sides'), 'json_out')
  rounds = []
  for number in range(1, args.rounds + 1):
    rows = []
    for side in sides:
      print(f'# round {number}: {side} alone', flush=True)
      rows += run_module(module, [*argv, f'--sides={side}'], what=f'{side} alone')
    rounds.append(rows)
  title = f'{title}; each side alone in its own process, {args.rounds} rounds'
  report(merge_rounds(rounds), args, title, ['round', *columns])
  return True


def run_variants_or_pin_threads(module, args, argv, title, columns=None):
  """If --variants was given, runs them, prints the combined table and returns True.

  Else pins this process to --threads (before JAX starts: see `set_threads`) and returns
  False: the caller then measures in this process.
  """
  if not args.variants:
    set_threads(args.threads)
    return False
  names = [v.strip() for v in args.variants.split(',') if v.strip()]
  rows = run_variants(module, argv if argv is not None else sys.argv[1:], names)
  print(f'# {title} (one subprocess per XLA flag variant)')
  print(format_table(rows, None if columns is None else ['variant', *columns]))
  if args.json_out:
    with open(args.json_out, 'w') as f:
      for row in rows:
        f.write(json.dumps(row) + '\n')
  return True
