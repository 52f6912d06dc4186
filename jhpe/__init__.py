"""jhpe: 2D human pose estimation in JAX/Flax (DeepPose, CPM, Stacked Hourglass).

Importing jhpe is light and changes nothing in the process: no JAX computation, no
TensorFlow, no environment variable, no allocator setting. Training convolutional nets on
the CPU is several times faster with jhpe's measured XLA flags and glibc malloc settings;
a program that wants them calls, before JAX initialises its backends (before any JAX
computation):

  from jhpe import cpu_defaults
  cpu_defaults.apply()

The entry points (experiments/, benchmarks/) do; see ``jhpe.cpu_defaults``.
"""

__version__ = "0.1.0"


def load(name_or_workdir="lsp_hourglass", which="latest", **settings):
  """A `jhpe.predict.Predictor`: a shipped model by name or a training workdir.

  `jhpe.load()` is the shipped LSP hourglass; `settings` (flip_test, decode, test_scales)
  override the run's own test-time settings. See `jhpe.predict.load`.
  """
  from jhpe import predict  # pylint: disable=g-import-not-at-top
  return predict.load(name_or_workdir, which, **settings)
