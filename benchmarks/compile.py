"""Compile time of jhpe's real train step: per-stack against scanned stacks, and the
second start of the same config with the persistent compilation cache.

Each measurement is a fresh process (nothing cached in memory) that builds the train step
of a `benchmarks.train_step` preset and times `lower().compile()`:
- 'cold': an empty cache folder (what the first start of a config pays);
- 'warm': the same folder again (a resume, the second evaluation, the next sweep point
  with the same shapes), so XLA's work is read from `jhpe.compilation_cache`.
Rounds alternate the configs, so a drift of the machine's speed affects each alike; the
table gives medians over rounds.

  python -m benchmarks.compile                                  # paper-scale hourglass
  python -m benchmarks.compile --configs=hourglass/tiny --rounds=1          # smoke test
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks import common
from jhpe import cpu_defaults

COLUMNS = ['config', 'cache', 'compile_s', 'rounds']


def _child(name, batch, cache_dir):
  """In the fresh process: compile the preset's train step; one JSON line of seconds."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from jhpe import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable(cache_dir)
  start = time.perf_counter()
  prepared = train_step.prepare_step(train_step.make_config(name, batch))
  print(json.dumps({'compile_s': prepared['compile_s'],
                    'build_and_compile_s': time.perf_counter() - start}), flush=True)


def _measure(name, batch, cache_dir):
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [repo_root, os.environ.get('PYTHONPATH')])))
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.compile', '--child', name,
                         '--batch', str(batch), '--cache_dir', cache_dir],
                        env=env, cwd=repo_root, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    print(proc.stderr[-3000:], file=sys.stderr)
    raise RuntimeError(f'compiling {name} failed (exit {proc.returncode})')
  return json.loads(proc.stdout.strip().splitlines()[-1])['compile_s']


def measure(names, batch, rounds):
  """{(config, 'cold'|'warm'): [seconds per round]}."""
  times = {}
  for _ in range(rounds):
    for name in names:
      cache_dir = tempfile.mkdtemp(prefix='jhpe_compile_cache_')
      try:
        for cache in ('cold', 'warm'):
          times.setdefault((name, cache), []).append(_measure(name, batch, cache_dir))
      finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='hourglass/paper,hourglass/paper_scan')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--cache_dir', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--json_out', default=None, help='also write the rows as JSON lines')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.child:
    _child(args.child, args.batch, args.cache_dir)
    return
  names = [c.strip() for c in args.configs.split(',') if c.strip()]
  rows = [{'config': name, 'cache': cache, 'compile_s': statistics.median(seconds),
           'rounds': len(seconds)}
          for (name, cache), seconds in measure(names, args.batch, args.rounds).items()]
  print(json.dumps(common.machine_info()), flush=True)
  print(common.format_table(rows, COLUMNS), flush=True)
  if args.json_out:
    with open(args.json_out, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the figures are under jhpe's CPU defaults.
  main()
