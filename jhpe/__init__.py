"""jhpe: 2D human pose estimation in JAX/Flax (DeepPose, CPM, Stacked Hourglass).

Importing jhpe is light: no JAX computation, no TensorFlow. It does one thing at import
time: on the CPU, XLA's default convolution backend computes 3x3 weight gradients several
times slower than the Eigen path, so unless the user opted out we append the measured
flags to ``XLA_FLAGS`` (see ``jhpe.cpu_defaults``). They only steer XLA's CPU backend, so
GPU and TPU runs are unaffected. They must be set before JAX initialises its backends:
import jhpe before doing any JAX computation.
"""

from jhpe import cpu_defaults as _cpu_defaults

_cpu_defaults.apply()

__version__ = "0.1.0"


def load(workdir, **kwargs):
  """Returns a `jhpe.predict.Predictor` for a training workdir (see its docstring)."""
  from jhpe import predict  # pylint: disable=g-import-not-at-top
  return predict.load(workdir, **kwargs)
