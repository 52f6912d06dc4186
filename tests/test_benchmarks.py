"""Smoke tests of benchmarks/: the PyTorch port is the same network, the scripts run.

No speed is asserted: timings only have to be positive numbers. The torch parts are
skipped when torch (the `bench` extra) is not installed.
"""

import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

# benchmarks/ is a folder of scripts next to the package, not an installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import peak  # pylint: disable=g-import-not-at-top,wrong-import-position


def _positive_finite(x):
  return np.isfinite(x) and x > 0


def test_time_calls_counts_and_orders():
  calls = []
  timing = common.time_calls(lambda: calls.append(1) or np.zeros(()), repeats=3, warmup=2)
  assert len(calls) == 5
  assert len(timing.times) == 3
  assert 0 <= timing.min <= timing.median


def test_time_calls_rejects_zero_repeats():
  with pytest.raises(ValueError, match='repeats'):
    common.time_calls(lambda: None, repeats=0)


def test_time_interleaved_alternates():
  order = []
  timings = common.time_interleaved(
      {'a': lambda: order.append('a'), 'b': lambda: order.append('b')}, repeats=2,
      warmup=1, syncs={'a': lambda _: None, 'b': lambda _: None})
  assert order == ['a', 'b'] * 3
  assert set(timings) == {'a', 'b'}


def test_format_table_lists_every_row_and_column():
  table = common.format_table([{'x': 1.23456, 'y': 'a'}, {'x': float('nan'), 'y': 'b'}])
  lines = table.splitlines()
  assert len(lines) == 4
  assert 'x' in lines[0] and 'y' in lines[0]
  assert '1.23' in lines[2] and '-' in lines[3]
  # Markdown: every line a row of 2 cells, the second a separator.
  assert all(l.startswith('| ') and l.endswith(' |') and l.count(' | ') == 1 for l in lines)
  assert set(lines[1]) <= set('|- ')


def test_run_variants_rejects_unknown_name():
  with pytest.raises(ValueError, match='--variants'):
    common.run_variants('benchmarks.peak', [], ['no_such_variant'])


def test_strip_flag_removes_both_spellings():
  argv = ['--a=1', '--variants', 'jhpe,xla', '--b', '--variants=x', '--json_out=f']
  assert common._strip_flag(common._strip_flag(argv, 'variants'), 'json_out') == [
      '--a=1', '--b']


def test_peak_conv_rows_and_flops():
  rows = peak.jax_conv(1, 8, 4, 8, 3, 'NHWC', repeats=1, warmup=0,
                       parts=('wgrad', 'fwd+bwd'))
  assert [r['op'] for r in rows] == ['conv wgrad', 'conv fwd+bwd']
  flops = peak.conv_flops(1, 8, 4, 8, 3)
  assert flops == 2 * 8 * 8 * 9 * 4 * 8
  assert rows[-1]['gflop'] == pytest.approx(3 * flops / 1e9)
  assert all(_positive_finite(r['gflops']) for r in rows)
  nchw = peak.jax_conv(1, 8, 4, 8, 3, 'NCHW', repeats=1, warmup=0, parts=('fwd',))
  assert nchw[0]['layout'] == 'NCHW'
  with pytest.raises(ValueError, match='layout'):
    peak.jax_conv(1, 8, 4, 8, 3, 'NHCW', repeats=1)


def test_peak_matmul_is_the_peak_of_its_rows():
  rows = [peak.jax_matmul(64, repeats=1, warmup=0)]
  assert rows[0]['gflop'] == pytest.approx(2 * 64 ** 3 / 1e9)
  assert peak.peak_gflops(rows + [{'gflops': 0.0}]) == rows[0]['gflops']


def test_train_step_tiny_hourglass_runs():
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  row = train_step.measure_config('hourglass/tiny', batch=2, repeats=1, warmup=0)
  assert row['img_s'] > 0 and row['compile_s'] > 0
  # The whole train step costs more than the forward pass it contains.
  assert row['step_gflop_img'] > row['fwd_gflop_img'] > 0
  rows = train_step.add_fractions([row], [
      {'op': 'matmul', 'gflops': 2 * row['gflops']},
      {'op': 'conv fwd+bwd', 'gflops': row['gflops']}])
  assert rows[0]['frac_matmul_peak'] == pytest.approx(0.5)
  assert rows[0]['frac_conv_peak'] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='--configs'):
    train_step.make_config('hourglass/huge', 2)


def test_inference_tiny_rows_cover_flip():
  from benchmarks import inference  # pylint: disable=g-import-not-at-top
  rows = inference.measure_config('hourglass/tiny', batches=(1,), flips=(False, True),
                                  repeats=1, warmup=0)
  assert [(r['batch'], r['flip']) for r in rows] == [(1, False), (1, True)]
  assert all(_positive_finite(r['img_s']) for r in rows)


# -- The PyTorch side (the `bench` extra). --


def _torch_port():
  pytest.importorskip('torch')
  from benchmarks import torch_hourglass  # pylint: disable=g-import-not-at-top
  return torch_hourglass


@pytest.mark.parametrize('kwargs', [
    dict(num_stacks=1, features=16, depth=1, num_joints=3),
    dict(num_stacks=2, features=32, depth=2, num_joints=5, num_modules=2),
])
def test_torch_port_param_count_equals_jhpe(kwargs):
  torch_hourglass = _torch_port()
  from jhpe import models  # pylint: disable=g-import-not-at-top
  from jhpe.models import summary  # pylint: disable=g-import-not-at-top
  ours = models.get_model('hourglass', num_stacks=kwargs['num_stacks'],
                          num_features=kwargs['features'], depth=kwargs['depth'],
                          num_joints=kwargs['num_joints'],
                          num_modules=kwargs.get('num_modules', 1))
  size = 4 * 2 ** kwargs['depth']
  expected = summary.count_params(summary.abstract_variables(ours, size))
  assert torch_hourglass.num_params(torch_hourglass.StackedHourglass(**kwargs)) == expected


def test_torch_port_paper_model_size():
  torch_hourglass = _torch_port()
  n = torch_hourglass.num_params(torch_hourglass.StackedHourglass())
  assert abs(n - 25.1e6) / 25.1e6 < 0.03


def test_torch_port_output_shapes_and_loss():
  torch_hourglass = _torch_port()
  import torch  # pylint: disable=g-import-not-at-top
  model = torch_hourglass.StackedHourglass(num_stacks=2, features=16, depth=2,
                                           num_joints=3)
  with torch.no_grad():
    outputs = model(torch.rand(2, 3, 32, 32))
  assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 8)] * 2
  loss = torch_hourglass.stagewise_mse(outputs, torch.zeros(2, 3, 8, 8))
  expected = sum(float((o ** 2).mean()) for o in outputs)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_hourglass_vs_torch_tiny_side_by_side():
  _torch_port()
  from benchmarks import hourglass_vs_torch  # pylint: disable=g-import-not-at-top
  rows = hourglass_vs_torch.compare(1, batch=1, size=16, features=8, num_joints=2,
                                    depth=1, repeats=1, warmup=0)
  assert [r['mode'] for r in rows] == ['train', 'infer']
  for r in rows:
    assert r['ratio'] == pytest.approx(r['jhpe_img_s'] / r['torch_img_s'])
    assert _positive_finite(r['jhpe_img_s']) and _positive_finite(r['torch_img_s'])


@pytest.mark.parametrize("side", ["jhpe", "torch"])
def test_hourglass_vs_torch_one_side_alone_has_no_ratio(side):
  if side == "torch":
    _torch_port()
  from benchmarks import hourglass_vs_torch  # pylint: disable=g-import-not-at-top
  rows = hourglass_vs_torch.compare(1, batch=1, size=16, features=8, num_joints=2,
                                    depth=1, repeats=1, warmup=0, sides=(side,))
  other = "torch" if side == "jhpe" else "jhpe"
  for r in rows:
    assert _positive_finite(r[f"{side}_img_s"])
    assert "ratio" not in r and f"{other}_ms" not in r
  with pytest.raises(ValueError, match="--sides"):
    hourglass_vs_torch.compare(1, sides=("tensorflow",))


def test_layers_tiny_rows_pair_each_layer_with_the_ports():
  _torch_port()
  from benchmarks import layers  # pylint: disable=g-import-not-at-top
  rows = layers.compare(batch=1, size=8, features=8, repeats=1, warmup=0)
  assert [r['layer'] for r in rows] == list(layers.LAYERS)
  by_layer = {r['layer']: r for r in rows}
  # Same parameter counts on both sides (compare raises otherwise); these are the counts.
  assert by_layer['residual']['params'] == 256  # BN 16, 1x1 36, BN 8, 3x3 148, BN 8, 1x1 40.
  assert by_layer['max_pool']['params'] == by_layer['upsample']['params'] == 0
  # The stem: 7x7x3x64 + 64 whatever the features, on the image 4x the level's side.
  assert by_layer['stem']['params'] == 9472 and by_layer['stem']['input'] == '1x32x32x3'
  for r in rows:
    assert r['ratio'] == pytest.approx(r['torch_ms'] / r['jhpe_ms'])
    assert _positive_finite(r['jhpe_ms']) and _positive_finite(r['torch_ms'])


def test_layers_jhpe_alone_has_no_ratio_and_unknown_names_are_refused():
  from benchmarks import layers  # pylint: disable=g-import-not-at-top
  rows = layers.compare(('residual', 'max_pool'), batch=1, size=8, features=8, repeats=1,
                        warmup=0, sides=('jhpe',))
  assert [r['params'] for r in rows] == [256, 0]
  for r in rows:
    assert _positive_finite(r['jhpe_ms']) and 'ratio' not in r and 'torch_ms' not in r
  with pytest.raises(ValueError, match="--layers: unknown"):
    layers.compare(('residual', 'attention'), batch=1, size=8, features=8)
  with pytest.raises(ValueError, match="--sides"):
    layers.compare(('residual',), sides=('tensorflow',))


def test_merge_rounds_pairs_each_sides_rows_and_summarises():
  def side(name, mode, ms, min_ms):
    return {'stacks': 2, 'mode': mode, f'{name}_ms': ms, f'{name}_min_ms': min_ms}

  rounds = [[side('jhpe', 'train', 10., 9.), side('jhpe', 'infer', 2., 2.),
             side('torch', 'train', 12., 11.), side('torch', 'infer', 3., 3.)],
            [side('jhpe', 'train', 14., 8.), side('jhpe', 'infer', 4., 1.),
             side('torch', 'train', 7., 6.), side('torch', 'infer', 3., 2.)],
            [side('jhpe', 'train', 12., 12.), side('jhpe', 'infer', 3., 3.),
             side('torch', 'train', 13., 13.), side('torch', 'infer', 6., 6.)]]
  rows = common.merge_rounds(rounds)
  train = [r for r in rows if r['mode'] == 'train']
  assert [r['round'] for r in train] == [1, 2, 3, 'median', 'best']
  assert [r['ratio'] for r in train[:3]] == pytest.approx([1.2, 0.5, 13 / 12])
  # The medians of each side (12 and 12), not the median of the rounds' ratios.
  assert (train[3]['jhpe_ms'], train[3]['torch_ms'], train[3]['ratio']) == (12., 12., 1.)
  assert (train[4]['jhpe_ms'], train[4]['torch_ms']) == (8., 6.)
  assert train[4]['ratio'] == pytest.approx(0.75)
  infer = [r for r in rows if r['mode'] == 'infer']
  assert infer[3]['ratio'] == pytest.approx(3. / 3.) and infer[4]['ratio'] == 2.


def test_layers_rounds_time_each_side_alone_in_its_own_process(tmp_path):
  _torch_port()
  from benchmarks import layers  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'rows.jsonl'
  layers.main(['--rounds=1', '--layers=max_pool', '--batch=1', '--size=8', '--features=8',
               '--repeats=1', '--warmup=0', f'--json_out={out}'])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 'median', 'best']
  assert rows[0]['layer'] == 'max_pool' and _positive_finite(rows[0]['jhpe_ms'])
  assert rows[0]['ratio'] == pytest.approx(rows[0]['torch_ms'] / rows[0]['jhpe_ms'])
  with pytest.raises(ValueError, match="--rounds"):
    layers.main(['--rounds=2', '--variants=jhpe'])


def test_jax_backend_is_available():
  # The benchmarks time on the default backend; it must be up after jhpe's CPU defaults.
  assert jax.devices()


def test_loop_tiny_row_has_the_three_rates(tmp_path):
  from benchmarks import loop  # pylint: disable=g-import-not-at-top
  row = loop.measure('hourglass/tiny', 'synthetic/tiny', batch=2, steps=2, repeats=1,
                     data_dir=str(tmp_path))
  for key in ('pipeline_img_s', 'pipeline_steady_img_s', 'step_img_s', 'loop_img_s'):
    assert row[key] > 0
  assert row['loop_over_step'] == pytest.approx(row['loop_img_s'] / row['step_img_s'])
  assert row['verdict'] in ('data-bound', 'compute-bound')


@pytest.mark.parametrize('family', ['hourglass', 'cpm', 'deeppose'])
def test_cpu_presets_are_the_lsp_flagfiles_models(family):
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  flags = {}
  path = pathlib.Path(__file__).parent.parent / 'experiments' / 'configs' / f'lsp_{family}.flags'
  for line in path.read_text().splitlines():
    if line.startswith('--') and '=' in line:
      key, value = line[2:].split('=', 1)
      flags[key] = value
  model, kwargs, size, optimizer, dataset = train_step.PRESETS[f'{family}/cpu']
  assert (model, size, optimizer, dataset) == (
      family, int(flags['input_size']), flags['optimizer'], flags['dataset'])
  for key, value in kwargs.items():
    assert str(value) == flags[key], key


_HLO = """HloModule jit_train_step

%fused_computation.7 (param_0.1: f32[32768,128], param_1.2: f32[128,256]) -> f32[32768,256] {
  %param_0.1 = f32[32768,128]{1,0} parameter(0)
  %param_1.2 = f32[128,256]{1,0} parameter(1)
  ROOT %dot.9 = f32[32768,256]{1,0} dot(%param_0.1, %param_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.8 (param_0.3: f32[], param_1.4: f32[8,64,64,256]) -> f32[256] {
  %param_1.4 = f32[8,64,64,256]{3,2,1,0} parameter(1)
  %param_0.3 = f32[] parameter(0)
  ROOT %reduce.1 = f32[256]{0} reduce(%param_1.4, %param_0.3), dimensions={0,1,2}, to_apply=%add
}

ENTRY %main.1 (p: f32[8,64,64,128]) -> f32[32768,256] {
  %ynn_fusion.7 = f32[32768,256]{1,0} fusion(%bitcast.1, %copy.2), kind=kCustom, calls=%fused_computation.7, metadata={op_name="jit(train_step)/transpose(jvp(StackedHourglass))/stem_res1/conv3/dense/dot_general"}
  %ynn_fusion.8 = f32[256]{0} fusion(%constant.1, %x.2), kind=kCustom, calls=%fused_computation.8, metadata={op_name="jit(train_step)/jvp(StackedHourglass)/hourglass_0/hourglass_0._residuals/up1_0/bn1/reduce_sum"}
  %conv.3 = f32[8,64,64,128]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %multi.5 = (f32[256]{0}, f32[128]{0}) fusion(%conv.3), kind=kLoop, calls=%fused_computation.10
  %loop.6 = (s32[], u32[4]{0}) while(%init), condition=%cond, body=%body
  ROOT %multiply_add_fusion.4 = f32[32768,256]{1,0} fusion(%ynn_fusion.7), kind=kLoop, calls=%fused_computation.9
}
"""


def test_profile_step_names_each_thunk_and_rates_library_dots():
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  instructions, computations = profile_step.parse_hlo(_HLO)
  assert instructions['conv.3']['opcode'] == 'convolution'
  assert instructions['multi.5']['shape'] == '(f32[256]{0}, f32[128]{0})'  # A tuple.
  assert instructions['multi.5']['opcode'] == 'fusion'
  assert profile_step.classify('ynn_fusion.7', instructions, computations) == (
      'ynn dot', 2 * 32768 * 256 * 128)
  assert profile_step.classify('ynn_fusion.8', instructions, computations)[0] == 'ynn reduce'
  assert profile_step.classify('conv.3', instructions, computations)[0].startswith('convolution')
  assert profile_step.layer_of(instructions['ynn_fusion.7']['line']) == ('stem_res1/conv3', 'bwd')
  assert profile_step.layer_of(instructions['ynn_fusion.8']['line']) == ('hourglass_0/up1_0', 'fwd')
  assert profile_step.union_us([(0, 10), (5, 20), (30, 40)]) == 30
  # Two steps of 100 us: the dot 40 us each (2 x 32768 x 256 x 128 FLOPs), the reduce
  # 10 us overlapping it, the convolution's 1 us dispatch; 59 us of each step uncovered.
  events = []
  for start in (0, 100):
    events += [{'name': 'ynn_fusion.7', 'ts': start, 'dur': 40},
               {'name': 'ynn_fusion.8', 'ts': start + 30, 'dur': 10},
               {'name': 'conv.3', 'ts': start + 40, 'dur': 1},
               # A loop spanning the reduce (its body): not counted twice.
               {'name': 'loop.6', 'ts': start + 30, 'dur': 10},
               {'name': 'PjitFunction(jit(train_step))', 'ts': start, 'dur': 100}]
  kinds, layers, top = profile_step.summarise(
      events, instructions, computations, steps=2, step_us=100, config_name='x', top=2)
  by_kind = {r['kind']: r for r in kinds}
  assert by_kind['ynn dot']['ms_per_step'] == pytest.approx(0.040)
  assert by_kind['ynn dot']['gflops'] == pytest.approx(2 * 32768 * 256 * 128 / 40e-6 / 1e9)
  assert by_kind[profile_step.NOT_COVERED]['share'] == pytest.approx(0.59)
  assert kinds[0]['kind'] == profile_step.NOT_COVERED  # Sorted by time.
  assert not any('while' in r['kind'] for r in kinds)
  assert [r['op'] for r in top] == ['ynn_fusion.7', 'ynn_fusion.8']
  assert {(r['layer'], r['pass']) for r in layers} >= {('stem_res1/conv3', 'bwd')}


def test_profile_step_tiny_run_traces_the_real_step():
  # In its own process: the per-thunk trace flag is read when JAX starts.
  rows = common.run_module('benchmarks.profile_step', [
      '--configs=hourglass/tiny', '--steps=1', '--warmup=1', '--top=3'], timeout=600)
  kinds = {r['kind']: r for r in rows if 'kind' in r and 'op' not in r}
  assert 'ynn dot' in kinds and kinds['ynn dot']['gflops'] > 0
  # What the traced ops cover and what they do not add up to the step at least.
  assert sum(r['share'] for r in kinds.values()) >= 0.99
  layers = {r['layer'] for r in rows if 'layer' in r and 'op' not in r}
  assert any(layer.startswith('stem_res1') for layer in layers)
  tops = [r['ms_per_step'] for r in rows if 'op' in r]
  assert len(tops) == 3 and tops == sorted(tops, reverse=True)
