"""jhpe's CPU defaults (XLA flags, glibc malloc settings): what `cpu_defaults.apply()` sets,
that the entry points apply them, and that `import jhpe` alone changes nothing."""

import json
import os
import subprocess
import sys

import pytest

from jhpe import cpu_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, *args, **env):
  """Runs `python -c code` in the repository with jhpe's variables unset (plus `env`)."""
  environ = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "JHPE_CPU_DEFAULTS")}
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(environ, JAX_PLATFORMS="cpu", **env))


def test_import_jhpe_leaves_xla_flags_alone():
  # Nor do the modules the entry points are made of: only running one applies the flags.
  proc = _python("import os; x = os.environ.get('XLA_FLAGS'); import jhpe, jhpe.train.config, "
                 "experiments.common, experiments.evaluate; "
                 "assert os.environ.get('XLA_FLAGS') == x, os.environ.get('XLA_FLAGS')")
  assert proc.returncode == 0, proc.stderr[-2000:]


# Whether glibc serves a 64 MB malloc with its own mmap (its default above 32 MB at most)
# or from the heap (`MALLOC_SETTINGS`: no mmap), after the statement in argv[1].
_MMAP_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):  # glibc >= 2.33.
  print("no mallinfo2"); sys.exit(0)
class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
              "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
exec(sys.argv[1])
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(mmapped)
"""


def _mmapped_blocks(statement):
  proc = _python(_MMAP_PROBE, statement)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout.strip()
  if out == "no mallinfo2":
    pytest.skip("needs glibc >= 2.33 (mallinfo2)")
  return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux)")
def test_import_jhpe_leaves_malloc_alone():
  assert _mmapped_blocks("import jhpe") == 1  # glibc's default: the block is mmapped.
  # The probe sees the settings when they are applied.
  assert _mmapped_blocks("from jhpe import cpu_defaults; cpu_defaults.apply()") == 0


# Runs entry point argv[1] as `python -m` would, with the flags after it; then prints the
# process's XLA_FLAGS.
_RUN_ENTRY_POINT = """
import os, runpy, sys
module = sys.argv.pop(1)
try:
  runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
  assert e.code == 2, e.code
print(os.environ.get("XLA_FLAGS"))
"""


@pytest.mark.parametrize("module, bad_flag", [
    ("experiments.hourglass", "--optimizer=lamb"),
    ("experiments.evaluate", "--decode=nope")])
def test_entry_points_apply_the_defaults_first(module, bad_flag):
  # Applied before the flags are even parsed (so before anything starts JAX): a flag error
  # exits at once, the flags already in the process's environment.
  proc = _python(_RUN_ENTRY_POINT, module, bad_flag)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == list(cpu_defaults.CPU_XLA_FLAGS), proc.stdout


def test_entry_point_names_a_bad_choice_in_one_line():
  proc = subprocess.run([sys.executable, "-m", "experiments.hourglass", "--summary"],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JHPE_CPU_DEFAULTS="yes", JAX_PLATFORMS="cpu"))
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith("error: JHPE_CPU_DEFAULTS='yes'"), errors


def test_the_tests_run_with_the_flags():
  # tests/conftest.py applies them for the session (unless the user opted out).
  if os.environ.get("JHPE_CPU_DEFAULTS", "1") in ("1", "flags"):
    assert all(f in os.environ["XLA_FLAGS"].split() for f in cpu_defaults.CPU_XLA_FLAGS)


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
import json, resource, time
from jhpe import cpu_defaults
cpu_defaults.apply()
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
  # XLA frees the temporary buffer on its worker thread after the result is ready. On a
  # busy machine that can come after the next call has allocated, and the heap grows
  # instead of reusing it (measured: ~68k faults on such calls); a training loop has host
  # work between steps, so give the free the same room here.
  time.sleep(0.1)
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
  # The heap settles within a few calls: judge the last calls.
  default = _faults_per_call(opt_out=True)
  tuned = _faults_per_call(opt_out=False)
  assert min(default[-6:]) > 20_000, default
  assert sorted(tuned[-6:])[3] < 1_000, tuned  # The median of the last six.
