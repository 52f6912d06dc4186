"""The CPU defaults set at `import jhpe`: XLA flags and glibc malloc settings."""

import json
import os
import subprocess
import sys

import pytest

from jhpe import cpu_defaults


def test_flags_are_appended_once_and_the_users_own_win():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  added = cpu_defaults.apply(env)
  assert added == cpu_defaults.CPU_XLA_FLAGS
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                      *cpu_defaults.CPU_XLA_FLAGS]
  assert cpu_defaults.apply(env) == ()  # Already there: nothing twice.
  own = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
  env = {"XLA_FLAGS": own}
  cpu_defaults.apply(env)
  assert own in env["XLA_FLAGS"] and cpu_defaults.CPU_XLA_FLAGS[0] not in env["XLA_FLAGS"]


@pytest.mark.parametrize("choice", ["0", "malloc"])
def test_opt_out_of_the_flags_leaves_xla_flags_alone(choice):
  env = {"JHPE_CPU_DEFAULTS": choice, "JAX_PLATFORMS": "cuda"}
  assert cpu_defaults.apply(env) == ()
  assert env == {"JHPE_CPU_DEFAULTS": choice, "JAX_PLATFORMS": "cuda"}


def test_unknown_choice_names_the_variable():
  with pytest.raises(ValueError, match="JHPE_CPU_DEFAULTS='yes'.*1, 0, flags, malloc"):
    cpu_defaults.apply({"JHPE_CPU_DEFAULTS": "yes"})


@pytest.mark.parametrize("platforms, expected", [
    ("cpu", True), ("cuda", False), ("tpu,cpu", False), ("cpu,cuda", True)])
def test_malloc_settings_only_for_cpu_processes(platforms, expected):
  assert cpu_defaults._cpu_only({"JAX_PLATFORMS": platforms}) is expected  # pylint: disable=protected-access


# A jitted step whose 128 MB intermediate lives in XLA's per-execution temporary buffer.
_FAULTS_SCRIPT = """
import json, resource
import jhpe
import jax, jax.numpy as jnp

@jax.jit
def step(x):
  y = jnp.cumsum(x * 2.0, axis=0)
  return jnp.sum(jnp.cumsum(y, axis=1))

x = jnp.ones((4096, 8192), jnp.float32)
faults = []
for _ in range(16):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults_per_call(opt_out):
  # Both runs get jhpe's XLA flags (only the malloc settings differ) and one CPU device, as
  # a training run has.
  env = dict(os.environ, JHPE_CPU_DEFAULTS="flags" if opt_out else "1", JAX_PLATFORMS="cpu",
             XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu_defaults.tune_malloc(), reason="needs glibc's mallopt (Linux)")
def test_malloc_settings_stop_per_step_page_faults():
  # Without them glibc mmaps XLA's temporary buffer afresh on every call and the kernel
  # faults in every 4 KiB page of it (~100k per call here). With them the freed buffer is
  # reused from the heap.
  # The heap settles within a few calls (longer when the previous call's buffer is freed
  # late on a busy machine): judge the last calls.
  default = _faults_per_call(opt_out=True)
  tuned = _faults_per_call(opt_out=False)
  assert min(default[-6:]) > 20_000, default
  assert sorted(tuned[-6:])[3] < 1_000, tuned  # The median of the last six.
