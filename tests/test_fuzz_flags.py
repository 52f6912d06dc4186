"""Hypothesis fuzz over the numeric flags (#24): refused in one line, or trained finitely.

Every float flag gets values drawn from the whole float line (NaN, infinities, negative,
huge) and from the edges of its allowed range. A value `Config.validate` refuses is one
line naming a drawn flag, raised before anything is built; a set it accepts trains two
steps of a tiny hourglass with a finite loss. Validation is cheap, so it sees many
examples; training compiles per set of values (they are constants of the jitted step), so
two: every flag at the top of its range, and one drawn set, on an 8-feature, one-stack
model at 32 px (compiling dominates: 60-110 s for both on the shared 2-core machine; marked slow).
"""

import math

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from jhpe.train import config as config_lib
from jhpe.train import config_checks
from jhpe.train import state as state_lib
from jhpe.train import steps as steps_lib

TINY = config_lib.Config(
    model="hourglass", model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
    dataset="synthetic/tiny", input_size=32, batch_size=4, learning_rate=1e-3)
FLOAT_FLAGS = sorted(name for name, _ in config_checks.float_values(TINY))
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _edges(flag):
  low, high, _, _ = config_checks.FLOAT_RANGES.get(flag, (-1.0, 1.0, False, False))
  return [low, high, math.nextafter(low, -math.inf), math.nextafter(high, math.inf),
          -0.0, 1.0, 0.5]


ANY_VALUE = {flag: st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                             st.sampled_from(_edges(flag))) for flag in FLOAT_FLAGS}


def _in_range(flag, value):
  try:
    config_checks.check_float(flag, value)
    return True
  except ValueError:
    return False


@hypothesis.settings(max_examples=300, **SETTINGS)
@hypothesis.given(st.fixed_dictionaries({}, optional=ANY_VALUE))
def test_any_float_values_are_refused_in_one_line_or_accepted_in_range(values):
  config = TINY.replace(**values)
  try:
    config.validate()
  except ValueError as e:
    text = str(e)
    assert "\n" not in text
    assert any(text.startswith(f"--{flag}=") for flag in values), text
    return
  for flag, value in values.items():
    assert math.isfinite(value), (flag, value)
    assert _in_range(flag, value), (flag, value)


def _valid(flag):
  low, high, low_open, high_open = config_checks.FLOAT_RANGES[flag]
  high = min(high, 1e3)  # Unbounded above: an ample finite value.
  return st.floats(low, high, exclude_min=low_open, exclude_max=high_open or high == 1e3)


# The flags the train step reads; values from their whole allowed range.
TRAINED = ("aug_rotation", "aug_scale", "aug_translate", "aug_color", "sigma",
           "grad_clip", "weight_decay", "ema_decay", "momentum")


def _upper_edges():
  out = {}
  for flag in TRAINED:
    _, high, _, high_open = config_checks.FLOAT_RANGES[flag]
    out[flag] = 1e3 if math.isinf(high) else (math.nextafter(high, 0) if high_open else high)
  return out


@pytest.mark.slow
@hypothesis.settings(max_examples=1, **SETTINGS)
@hypothesis.example(_upper_edges(), "sgd")  # Every flag at the top of its range.
@hypothesis.given(st.fixed_dictionaries({flag: _valid(flag) for flag in TRAINED}),
                  st.sampled_from(["adam", "rmsprop"]))
def test_accepted_values_train_two_steps_with_finite_loss(values, optimizer):
  config = TINY.replace(optimizer=optimizer, **values).validate()
  model = config_lib.build_model(config)
  state = state_lib.create_train_state(jax.random.PRNGKey(0), model, config)
  step = steps_lib.make_pmap_train_step(model, config)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
               joints=rng.uniform(4, 28, (4, 14, 2)).astype(np.float32),
               visible=np.ones((4, 14), np.float32))
  rep = steps_lib.replicate_pmap(state)
  for _ in range(2):
    rep, metrics = step(rep, steps_lib.shard_batch_pmap(batch, 1))
    assert float(metrics["nonfinite"][0]) == 0.0, values
    assert np.isfinite(float(metrics["loss"][0])), values
