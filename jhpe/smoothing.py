"""Temporal smoothing of joints over video frames: the One-Euro filter (Casiez, Roussel and
Vogel, CHI 2012), an adaptive low-pass whose cutoff rises with the joints' speed, so slow
jitter is smoothed and fast motion is followed without lag."""

import math

import numpy as np


def _smoothing_factor(elapsed, cutoff):
  """The exponential smoothing factor of a first-order low-pass filter.

  alpha = 1 / (1 + tau / Te) with tau = 1 / (2 pi fc) (Casiez et al., eq. 2 and 4).
  """
  tau = 1.0 / (2.0 * np.pi * cutoff)
  return 1.0 / (1.0 + tau / elapsed)


class OneEuroFilter:
  """The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) over arrays of signals.

  Each scalar of the array (e.g. every x and every y of (J, 2) joints) is its own signal,
  as in the paper: a first-order low-pass filter whose cutoff frequency rises with the
  signal's speed, so a still joint's jitter is smoothed away while a moving joint is
  followed with little lag.

    cutoff = min_cutoff + beta * |smoothed speed|

  Args:
    min_cutoff: the cutoff frequency in Hz when the signal is still. Lower: less jitter,
      more lag at slow speeds. The paper's tuning: set beta = 0 and lower min_cutoff until
      the jitter of a still person is gone.
    beta: how fast the cutoff rises with speed, in Hz per (signal unit / s), here 1 / pixel.
      Higher: less lag when moving. Then raise beta until fast moves are followed. Joints
      move in pixels, so the best beta depends on the video's resolution (a person twice as
      big moves twice as many pixels per second: halve beta).
    d_cutoff: the cutoff frequency in Hz of the low-pass filter on the speed estimate
      (the paper fixes it at 1 Hz).

  The first sample passes unchanged. `filter(x, t)` takes timestamps in seconds, strictly
  increasing; the state is the previous sample, so a filter follows one sequence (`reset`
  starts another).
  """

  def __init__(self, min_cutoff=1.0, beta=0.05, d_cutoff=1.0):
    for name, value, minimum in (('min_cutoff', min_cutoff, 0.0), ('beta', beta, None),
                                 ('d_cutoff', d_cutoff, 0.0)):
      ok = isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
      if not ok or (value <= minimum if minimum is not None else value < 0):
        bound = '> 0 (Hz)' if minimum is not None else '>= 0'
        raise ValueError(f'OneEuroFilter {name} must be a finite number {bound}, got '
                         f'{value!r}.')
    self.min_cutoff = float(min_cutoff)
    self.beta = float(beta)
    self.d_cutoff = float(d_cutoff)
    self.reset()

  def reset(self):
    """Forgets the previous sample: the next one passes unchanged."""
    self._x = None  # The previous filtered value, float64 (...).
    self._dx = None  # The previous filtered speed, float64 (...).
    self._t = None

  def filter(self, x, t):
    """Filters one sample.

    Args:
      x: the sample, an array of any shape (the same at every call), e.g. joints (J, 2).
      t: its time in seconds, greater than the previous sample's.

    Returns:
      The filtered sample, float32 of x's shape.
    """
    x = np.asarray(x, np.float64)
    t = float(t)
    if self._x is None:
      self._x, self._dx, self._t = x, np.zeros_like(x), t
      return x.astype(np.float32)
    if x.shape != self._x.shape:
      raise ValueError(f'OneEuroFilter: a sample of shape {x.shape} after samples of shape '
                       f'{self._x.shape}; call reset() between sequences.')
    elapsed = t - self._t
    if not elapsed > 0:
      raise ValueError(f'OneEuroFilter: timestamps must increase, got t={t} after '
                       f't={self._t}.')
    # The speed, itself low-passed at d_cutoff: a raw finite difference of jittery joints
    # would open the main filter at every jitter.
    a_d = _smoothing_factor(elapsed, self.d_cutoff)
    dx = a_d * (x - self._x) / elapsed + (1.0 - a_d) * self._dx
    a = _smoothing_factor(elapsed, self.min_cutoff + self.beta * np.abs(dx))
    self._x = a * x + (1.0 - a) * self._x
    self._dx, self._t = dx, t
    return self._x.astype(np.float32)

  __call__ = filter


def make_smoother(smoothing):
  """`predict_video`'s `smoothing` argument -> a fresh `OneEuroFilter` or None.

  None or False: no smoothing. True: the filter's defaults. A dict: keyword arguments of
  `OneEuroFilter` (min_cutoff, beta, d_cutoff).
  """
  if smoothing is None or smoothing is False:
    return None
  if smoothing is True:
    return OneEuroFilter()
  if isinstance(smoothing, dict):
    unknown = set(smoothing) - {'min_cutoff', 'beta', 'd_cutoff'}
    if unknown:
      raise ValueError(f'smoothing takes min_cutoff, beta and d_cutoff, got unknown '
                       f'{sorted(unknown)}.')
    return OneEuroFilter(**smoothing)
  raise ValueError(f'smoothing must be None, True or a dict of OneEuroFilter arguments '
                   f'(min_cutoff, beta, d_cutoff), got {smoothing!r}.')
