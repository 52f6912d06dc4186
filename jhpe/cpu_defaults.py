"""CPU settings that make JAX train convolutional nets several times faster on the CPU.

Call `apply()` once, first thing, before JAX initialises its backends (before any JAX
computation; and before JAX's threads start allocating):

  from jhpe import cpu_defaults
  cpu_defaults.apply()

`import jhpe` does not do it (importing a library should not change the process): the
entry points do, `experiments.common.run`, `experiments.evaluate`, the benchmarks and the
tests' conftest. ``JHPE_CPU_DEFAULTS`` chooses what `apply` sets (below).

Two measured fixes (jaxlib 0.10.2, benchmarks/README.md):

1. XLA flags. XLA's default CPU convolution backend (YNNPACK) computes the weight gradient
   of 3x3 convolutions 4-5x slower than the Eigen path. Routing convolutions away from
   YNNPACK fusions, and dots to oneDNN, roughly doubles the training throughput of a
   2-stack hourglass on a 2-core machine. Flags the user already put in ``XLA_FLAGS`` win.
2. glibc malloc. XLA's CPU runtime allocates each execution's temporary buffer (323 MB for
   a 2-stack hourglass step at 128 px, batch 4; GBs at 256 px) with `posix_memalign` and
   frees it when the step ends. glibc serves such sizes with a fresh `mmap` and returns
   them with `munmap`, so every step page-faults the whole buffer in again: a training run
   spent 21% of its CPU time in the kernel. With one malloc arena, no mmap and no trimming
   the next step reuses the freed heap memory: 0 page faults per step, and the LSP
   flagfile model's train step runs 1.57x faster (benchmarks/README.md). (XLA frees the
   buffer on a worker thread once the result is ready; on a busy machine a step that
   allocates before the previous one has freed grows the heap and faults once more.)
   One arena because glibc's per-thread arenas fall back to mmap for any request larger
   than their 64 MB heaps whatever the settings, and XLA allocates from worker threads.
   The cost: the heap keeps its peak size until the process exits (with many forced host
   devices it grows for the first ~10 steps before the buffers are reused), and in a
   process where something else allocates heavily too (PyTorch beside JAX) the freed
   buffer gets split and the gain shrinks; the JPEG-decoding data path itself runs a third
   slower in one arena (benchmarks/README.md: an open question for the whole loop).

Both concern CPU-only processes: the flags only steer XLA's CPU backend, and the malloc
settings are skipped where a GPU/TPU plugin is installed or ``JAX_PLATFORMS`` names
another platform. ``JHPE_CPU_DEFAULTS`` chooses: ``1`` (default) both, ``0`` neither,
``flags`` or ``malloc`` one of them.
"""

import ctypes
import importlib.util
import os
import sys

CPU_XLA_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
)

# mallopt(3) parameters (glibc's malloc.h) and the values set: one arena, no mmap, and
# -1 = never trim the heap.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")
# The values of JHPE_CPU_DEFAULTS: both settings, neither, the flags only, malloc only.
CHOICES = ("1", "0", "flags", "malloc")


def apply(environ=os.environ):
  """Appends `CPU_XLA_FLAGS` to ``XLA_FLAGS`` and tunes malloc, as ``JHPE_CPU_DEFAULTS`` says.

  Returns the flags that were added.
  """
  choice = environ.get("JHPE_CPU_DEFAULTS", "1")
  if choice not in CHOICES:
    raise ValueError(f"JHPE_CPU_DEFAULTS={choice!r} is not allowed; choose one of "
                     f"{', '.join(CHOICES)}.")
  added = ()
  if choice in ("1", "flags"):
    current = environ.get("XLA_FLAGS", "")
    added = tuple(
        flag for flag in CPU_XLA_FLAGS
        if flag.split("=")[0] not in current)
    if added:
      environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  if choice in ("1", "malloc") and _cpu_only(environ):
    tune_malloc()
  return added


def _cpu_only(environ):
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def tune_malloc():
  """Applies `MALLOC_SETTINGS` with glibc's mallopt; False where there is none (macOS, musl)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  # glibc only.
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)
