"""Where jhpe's real train step spends its time, op by op, on XLA's CPU backend.

XLA:CPU runs a compiled step as a sequence of thunks (library dots, reductions, fused
elementwise loops, convolutions, copies). With ``--xla_cpu_enable_xprof_traceme=true`` (set
here, before JAX starts) each thunk leaves a trace event; this script runs the step under
`jax.profiler.trace`, reads the events back from the Perfetto trace, names each one with its
HLO instruction (`compiled.as_text()`) and the flax module it came from (the op_name
metadata), and prints:
- by kind: library (YNNPACK / oneDNN) dots with their GFLOP/s, library reductions, XLA's own
  fused loops, transposes and copies, and what no thunk event covers;
- by layer: the flax module path (forward and backward apart);
- the slowest single ops.

Read it with two caveats. Ops XLA hands to Eigen (its convolutions, and the dots it keeps
for itself: the 1x1 convolutions' weight gradients) run asynchronously: their thunk event
covers the dispatch only, so their time shows as "not covered by a traced op" (with the
gaps between thunks). And independent thunks run concurrently on the thread pool, so an op's
wall time includes the cores it shared: shares are what the step waits for, not pure costs.

  python -m benchmarks.profile_step --configs=hourglass/paper --batch=8 --steps=2
  python -m benchmarks.profile_step --configs=hourglass/tiny --steps=1 --top=10   # quick
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from benchmarks import common
from jhpe import cpu_defaults

TRACEME_FLAG = '--xla_cpu_enable_xprof_traceme=true'
KIND_COLUMNS = ['config', 'kind', 'ms_per_step', 'share', 'ops_per_step', 'gflops']
LAYER_COLUMNS = ['config', 'layer', 'pass', 'ms_per_step', 'share', 'ops_per_step']
TOP_COLUMNS = ['config', 'op', 'kind', 'layer', 'pass', 'shape', 'ms_per_step', 'gflops']
NOT_COVERED = 'not covered by a traced op (Eigen convolutions and dots, gaps)'

# name = shape opcode(operands...): a shape is one array or a tuple of them.
# Thunks that run other thunks (a loop's body, a branch): their events span their
# children's, which are traced themselves, so they are not counted again.
_CONTAINERS = ('while', 'conditional', 'call')
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (\([^()]*\)|\S+) (\w+)\((.*)')
_COMPUTATION = re.compile(r'%?([\w.\-]+) \(.*\) -> .* \{$')


def parse_hlo(text):
  """Instructions of an optimised HLO module text.

  Returns:
    (instructions, computations): name -> dict(shape, opcode, line) for every instruction,
    and fused computation name -> its lines.
  """
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(1), [])
      continue
    if line.startswith('}'):
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match:
      name, shape, opcode, _ = match.groups()
      shape = shape if shape.startswith('(') else shape.split('{')[0]  # Drop the layout.
      instructions[name] = {'shape': shape, 'opcode': opcode, 'line': line}
      if current is not None:
        current.append(line)
  return instructions, computations


def _dims(shape):
  inner = re.search(r'\[([\d,]*)\]', shape)
  return [int(d) for d in inner.group(1).split(',') if d] if inner else []


def dot_flops(line, operand_shapes):
  """2 x output elements x contracted size of a dot's HLO line."""
  out = _dims(line.split(' = ', 1)[1].split(' ', 1)[0])
  lhs = _dims(operand_shapes[0])
  contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
  size = 1
  for d in (contracting.group(1).split(',') if contracting else []):
    size *= lhs[int(d)]
  elements = 1
  for d in out:
    elements *= d
  return 2 * elements * size


def classify(name, instructions, computations):
  """(kind, FLOPs or 0) of the thunk named `name`."""
  inst = instructions[name]
  line, opcode = inst['line'], inst['opcode']
  if opcode == 'convolution':
    return 'convolution (Eigen; dispatch only)', 0
  if opcode == 'dot':
    # Eigen's matmul, dispatched asynchronously like its convolutions: no rate.
    return 'dot (Eigen; dispatch only)', 0
  if opcode == 'fusion' and 'kind=kCustom' in line:
    called = re.search(r'calls=%?([\w.\-]+)', line).group(1)
    body = computations.get(called, [])
    root = next((l for l in body if 'ROOT' in l), '')
    root_op = _INSTRUCTION.match(root).group(3) if root else '?'
    library = name.split('_fusion')[0]  # ynn / onednn / xnn
    if root_op == 'dot':
      params = sorted((l for l in body if ' parameter(' in l),
                      key=lambda l: int(re.search(r'parameter\((\d+)\)', l).group(1)))
      shapes = [l.split(' = ', 1)[1].split(' ', 1)[0] for l in params]
      return f'{library} dot', dot_flops(root, shapes)
    if root_op == 'reduce':
      return f'{library} reduce', 0
    return f'{library} elementwise', 0
  if opcode in ('copy', 'transpose') or name.startswith(('transpose', 'copy')):
    return 'transpose / copy', 0
  if opcode == 'fusion':
    return 'XLA fused loop (elementwise, BN apply, pool)', 0
  return f'other ({opcode})', 0


def layer_of(line):
  """('stem_res1/conv2', 'fwd'|'bwd') from an instruction's op_name metadata."""
  op_name = re.search(r'op_name="([^"]*)"', line)
  if not op_name:
    return '(no metadata)', '-'
  path = op_name.group(1)
  backward = 'transpose(' in path
  # 'jit(train_step)/transpose(jvp(StackedHourglass))/stem_res1/conv2/conv_general_dilated':
  # drop the transformations, the method names ('hourglass_0._residuals') and the primitive.
  parts = [p for p in path.split('/') if p and '(' not in p]
  modules = [p for p in parts[:-1] if '.' not in p]
  return ('/'.join(modules[:2]) or '(step: loss, optimiser, augmentation)',
          'bwd' if backward else 'fwd')


def union_us(intervals):
  """Microseconds covered by a list of (start, end) intervals."""
  total, current = 0, None
  for start, end in sorted(intervals):
    if current is None or start > current[1]:
      if current:
        total += current[1] - current[0]
      current = [start, end]
    else:
      current[1] = max(current[1], end)
  return total + (current[1] - current[0] if current else 0)


def read_trace_events(trace_dir):
  """The complete ('X') events of the newest Perfetto trace under `trace_dir`."""
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))
  if not files:
    raise RuntimeError(f'jax.profiler wrote no Perfetto trace under {trace_dir}')
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [e for e in events if e.get('ph') == 'X']


def summarise(events, instructions, computations, steps, step_us, config_name, top):
  """Rows by kind, by layer, and the `top` slowest ops, per step."""
  thunks = [e for e in events if e['name'] in instructions
            and instructions[e['name']]['opcode'] not in _CONTAINERS]
  # name -> (kind, FLOPs, (layer, pass)), once per op rather than per event.
  ops = {name: (*classify(name, instructions, computations),
                layer_of(instructions[name]['line']))
         for name in {e['name'] for e in thunks}}
  by_kind, by_layer, by_op = (collections.defaultdict(lambda: [0, 0, 0])
                              for _ in range(3))
  for event in thunks:
    name = event['name']
    kind, flops, layer = ops[name]
    for table, key in ((by_kind, kind), (by_layer, layer), (by_op, name)):
      table[key][0] += event['dur']
      table[key][1] += 1
      table[key][2] += flops
  covered = union_us([(e['ts'], e['ts'] + e['dur']) for e in thunks])
  per_step = lambda us: us / 1e3 / steps
  gflops = lambda us, flops: flops / us / 1e3 if flops and us else None
  kind_rows = [{'config': config_name, 'kind': kind, 'ms_per_step': per_step(us),
                'share': us / steps / step_us, 'ops_per_step': count // steps,
                'gflops': gflops(us, flops)}
               for kind, (us, count, flops) in by_kind.items()]
  kind_rows.append({'config': config_name, 'kind': NOT_COVERED,
                    'ms_per_step': per_step(max(0, steps * step_us - covered)),
                    'share': max(0, steps * step_us - covered) / steps / step_us,
                    'ops_per_step': None, 'gflops': None})
  layer_rows = [{'config': config_name, 'layer': layer, 'pass': direction,
                 'ms_per_step': per_step(us), 'share': us / steps / step_us,
                 'ops_per_step': count // steps}
                for (layer, direction), (us, count, _) in by_layer.items()]
  top_rows = []
  for name, (us, _, flops) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
    kind, _, (layer, direction) = ops[name]
    top_rows.append({'config': config_name, 'op': name, 'kind': kind,
                     'layer': layer, 'pass': direction,
                     'shape': instructions[name]['shape'], 'ms_per_step': per_step(us),
                     'gflops': gflops(us, flops)})
  by_time = lambda rows: sorted(rows, key=lambda r: -r['ms_per_step'])
  return by_time(kind_rows), by_time(layer_rows), top_rows


def profile_config(name, batch, steps, warmup, top):
  """Profiles `steps` calls of preset `name`'s real train step; (kinds, layers, top ops)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from jhpe.train import steps as steps_lib  # pylint: disable=g-import-not-at-top

  config = train_step.make_config(name, batch)
  prepared = train_step.prepare_step(config)
  instructions, computations = parse_hlo(prepared['step'].as_text())
  device_batch = steps_lib.global_batch(
      train_step.synthetic_batch(batch, config.input_size, prepared['model'].num_joints),
      prepared['mesh'])
  cell = [prepared['state']]

  def run():
    cell[0], metrics = prepared['step'](cell[0], device_batch)
    jax.block_until_ready(metrics)

  for _ in range(warmup):
    run()
  with tempfile.TemporaryDirectory(prefix='jhpe_profile_') as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        run()
      step_us = (time.perf_counter() - start) / steps * 1e6
    events = read_trace_events(trace_dir)
  return summarise(events, instructions, computations, steps, step_us, name, top)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='hourglass/cpu',
                      help='comma list of benchmarks.train_step presets')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=2, help='profiled steps')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps before')
  parser.add_argument('--top', type=int, default=25, help='slowest single ops listed')
  parser.add_argument('--layers', type=int, default=25, help='slowest layers listed')
  parser.add_argument('--json_out', default='', help='also write the rows as JSON lines')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0 or args.top < 0 or args.layers < 0:
    parser.error('--steps must be >= 1; --warmup, --top and --layers >= 0')
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  names = [c.strip() for c in args.configs.split(',') if c.strip()]
  for name in names:
    train_step.make_config(name, args.batch)  # Fail early on a bad name.
  rows = []
  for name in names:
    kinds, layers, top = profile_config(name, args.batch, args.steps, args.warmup, args.top)
    print(f'\n## {name}, batch {args.batch}: by kind')
    print(common.format_table(kinds, KIND_COLUMNS[1:]))
    print(f'\n## {name}: by layer (the {args.layers} slowest)')
    print(common.format_table(layers[:args.layers], LAYER_COLUMNS[1:]))
    print(f'\n## {name}: the {args.top} slowest ops')
    print(common.format_table(top, TOP_COLUMNS[1:]), flush=True)
    rows += kinds + layers + top
  info = common.machine_info()
  print('\n' + common.machine_line(info))
  if args.json_out:
    common.write_json_rows(args.json_out, rows, info)


if __name__ == '__main__':
  cpu_defaults.apply()  # Before JAX starts: the profile is under jhpe's CPU defaults.
  if TRACEME_FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TRACEME_FLAG}".strip()
  main()
