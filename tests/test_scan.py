"""Scanned repeated stages (the hourglass's `scan_stacks`, CPM's `scan_stages`): the same
function as the per-stage model, parameters convertible both ways, remat changing nothing
but memory, and workdirs written before the option existed still resuming."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhpe import losses
from jhpe import models
from jhpe.models import cpm as cpm_lib
from jhpe.models import hourglass as hg
from jhpe.models import layers
from jhpe.models import summary
from jhpe.train import config as config_lib

KW = dict(num_joints=3, num_stacks=3, num_features=8, depth=1)


@pytest.fixture(scope='module')
def per_stack():
  model = models.get_model('hourglass', **KW)
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  return model, model.init(jax.random.key(1), images), images


def _max_difference(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))


def test_the_scanned_layout_is_what_the_scanned_model_initialises(per_stack):
  _, variables, images = per_stack
  scanned = models.get_model('hourglass', **KW, scan_stacks=True)
  own = scanned.init(jax.random.key(1), images)
  converted = hg.stack_variables(variables, KW['num_stacks'])
  assert jax.tree.structure(own) == jax.tree.structure(converted)
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, converted)
  # All three stacks under one leading axis; the back-projections of stacks 0 and 1 under
  # another (the last stack has none); no per-stack name left.
  assert {x.shape[0] for x in jax.tree.leaves(converted['params']['stacks'])} == {
      KW['num_stacks']}
  assert {x.shape[0] for x in jax.tree.leaves(converted['params']['back_projections'])} == {
      KW['num_stacks'] - 1}
  assert set(converted['params']['back_projections']) == {'feat_back', 'heat_back'}
  assert 'back_projections' not in converted['batch_stats']
  assert not any(k.startswith(('stack_', 'hourglass_')) for k in converted['params'])
  # The same number of parameters: nothing stored for the last stack's back-projections.
  assert summary.count_params(own['params']) == summary.count_params(variables['params'])


@pytest.mark.parametrize('num_stacks', [1, 2])
def test_scanned_model_with_one_or_two_stacks(num_stacks):
  kw = dict(KW, num_stacks=num_stacks)
  images = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
  model = models.get_model('hourglass', **kw)
  variables = model.init(jax.random.key(1), images)
  scanned = models.get_model('hourglass', **kw, scan_stacks=True)
  converted = hg.stack_variables(variables, num_stacks)
  assert (jax.tree.map(jnp.shape, scanned.init(jax.random.key(1), images))
          == jax.tree.map(jnp.shape, converted))
  for a, b in zip(model.apply(variables, images), scanned.apply(converted, images),
                  strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_conversion_round_trips_exactly(per_stack):
  _, variables, _ = per_stack
  back = hg.unstack_variables(hg.stack_variables(variables, 3), 3)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  assert _max_difference(back, variables) == 0.0


@pytest.mark.parametrize('remat', [False, True])
def test_scanned_and_per_stack_models_agree_in_loss_and_gradients(per_stack, remat):
  model, variables, images = per_stack
  scanned = models.get_model('hourglass', **KW, scan_stacks=True, remat=remat)
  targets = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  weights = jnp.ones((2, 3))

  def loss_and_stats(m, params, batch_stats):
    outputs, new = m.apply({'params': params, 'batch_stats': batch_stats}, images,
                           train=True, mutable=['batch_stats'])
    total, _ = losses.heatmap_loss(outputs, targets, weights)  # (total, per stage)
    return total, new['batch_stats']

  def grads(m, v):
    return jax.jit(jax.value_and_grad(lambda p: loss_and_stats(m, p, v['batch_stats']),
                                      has_aux=True))(v['params'])

  (loss_a, stats_a), grad_a = grads(model, variables)
  converted = hg.stack_variables(variables, 3)
  (loss_b, stats_b), grad_b = grads(scanned, converted)
  assert abs(float(loss_a) - float(loss_b)) <= 1e-5 * max(1.0, abs(float(loss_a)))
  grad_b = hg.unstack_variables({'params': grad_b}, 3)['params']
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_a))
  assert _max_difference(grad_a, grad_b) <= 1e-4 * scale
  stats_b = hg.unstack_variables({'batch_stats': stats_b}, 3)['batch_stats']
  assert _max_difference(stats_a, stats_b) <= 1e-5
  # Eval mode: the same heatmaps stack by stack.
  out_a = model.apply(variables, images)
  out_b = scanned.apply(converted, images)
  assert len(out_a) == len(out_b) == 3
  for a, b in zip(out_a, out_b):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_needs_scan():
  with pytest.raises(ValueError, match='scan_stacks'):
    models.get_model('hourglass', **KW, remat=True)


def test_a_workdir_from_before_the_option_resumes(tmp_path):
  """config.json written without `scan_stacks`/`remat` equals them at their defaults; a
  change of layout is still refused."""
  config = config_lib.Config(model='hourglass', model_kwargs=dict(num_stacks=2),
                             dataset='synthetic')
  config_lib.save_config(config, str(tmp_path))
  now = config_lib.Config(model='hourglass', dataset='synthetic',
                          model_kwargs=dict(num_stacks=2, scan_stacks=False, remat=False))
  config_lib.check_resumable(now, str(tmp_path))  # No error.
  scanned = config_lib.Config(model='hourglass', dataset='synthetic',
                              model_kwargs=dict(num_stacks=2, scan_stacks=True))
  with pytest.raises(ValueError, match='model_kwargs'):
    config_lib.check_resumable(scanned, str(tmp_path))
  assert 'scan_stacks' not in json.loads((tmp_path / 'config.json').read_text())[
      'model_kwargs']


def test_the_summary_counts_every_scanned_stack():
  """XLA counts a loop body once; the summary counts the scanned model as its twin."""
  per_stack = summary.flops_per_image(models.get_model('hourglass', **KW), 32)
  scanned = summary.flops_per_image(models.get_model('hourglass', **KW, scan_stacks=True), 32)
  assert scanned == per_stack


def test_cpm_scanned_over_its_stages_is_the_same_function():
  kw = dict(num_joints=3, num_stages=3, width=0.0625)
  model = models.get_model('cpm', **kw)
  scanned = models.get_model('cpm', **kw, scan_stages=True)
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images)
  converted = cpm_lib.stack_variables(variables, 3)
  own = scanned.init(jax.random.key(1), images)
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, converted)
  assert not any(k.startswith(('stage2_', 'stage3_')) for k in converted['params'])
  back = cpm_lib.unstack_variables(converted, 3)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  assert _max_difference(back, variables) == 0.0
  for a, b in zip(model.apply(variables, images), scanned.apply(converted, images)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('kernel,padding,shape', [
    (3, 'SAME', (2, 9, 7, 3)), (3, 'VALID', (2, 9, 7, 3)), (7, 'SAME', (1, 8, 8, 4)),
    (11, 'SAME', (2, 12, 12, 3)), (4, 'SAME', (2, 6, 6, 3)), (3, ((1, 0), (2, 1)), (2, 9, 7, 3))])
def test_convolution_gradients_are_lax_gradients(kernel, padding, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], 5))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  for stride in (1, 2):  # Stride 2 goes to lax as it is.
    y_ref, vjp_ref = jax.vjp(lambda a, b, s=stride: jax.lax.conv_general_dilated(
        a, b, (s, s), padding, dimension_numbers=dn), x, w)
    y, vjp = jax.vjp(lambda a, b, s=stride: layers.conv_nhwc(
        a, b, (s, s), padding, dimension_numbers=dn), x, w)
    cotangent = jax.random.normal(jax.random.key(2), y.shape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(cotangent), vjp_ref(cotangent), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _convolution_forms(jitted, *args):
  """The dim_labels of every convolution in `jitted`'s compiled program, in order."""
  text = jitted.lower(*args).compile().as_text()
  return re.findall(r'convolution\(.*?dim_labels=([^,\s]+)', text)


def test_convolutions_in_a_scan_compile_to_the_fast_form():
  """XLA:CPU runs only NHWC/HWIO convolutions with Eigen and rewrites the gradient
  convolutions JAX emits into that form only outside loops; `layers.conv` emits them in
  it, so a scanned stage's backward pass has no plain-loop convolution."""
  module = layers.conv(4, 3, jnp.float32, jnp.float32)
  x = jnp.ones((2, 8, 8, 4))
  kernels = jax.vmap(lambda k: module.init(k, x))(jax.random.split(jax.random.key(0), 3))

  def loss(stacked, x):
    x, _ = jax.lax.scan(lambda h, v: (jax.nn.relu(module.apply(v, h)), None), x, stacked)
    return (x ** 2).sum()

  labels = _convolution_forms(jax.jit(jax.grad(loss)), kernels, x)
  assert len(labels) == 3  # Forward, input gradient, kernel gradient.
  assert set(labels) == {'b01f_01io->b01f'}, labels


@pytest.mark.parametrize('name,kwargs,size', [
    ('hourglass', dict(KW, scan_stacks=True), 64),
    # CPM's 11x11 kernels need maps wider than 11 (else XLA swaps the operands).
    ('cpm', dict(num_joints=3, num_stages=3, width=0.0625, scan_stages=True), 128)])
def test_scanned_models_gradients_have_only_fast_form_convolutions(name, kwargs, size):
  """The scanned models' whole backward pass, compiled: no convolution XLA:CPU would run
  as a plain loop (the scanned 8-stack step once took 246 s instead of 13)."""
  model = models.get_model(name, **kwargs)
  images = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  variables = model.init(jax.random.key(1), images)

  def loss(params):
    outputs = model.apply({**variables, 'params': params}, images, train=True,
                          mutable=['batch_stats'])[0]
    return sum((o ** 2).sum() for o in outputs)

  labels = _convolution_forms(jax.jit(jax.grad(loss)), variables['params'])
  assert labels and set(labels) == {'b01f_01io->b01f'}, sorted(set(labels))
