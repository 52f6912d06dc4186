"""What a run prints while it works: the remaining time, evaluation progress, where it wrote.

  EtaEstimator     remaining time from a moving window of recent step times, the compile
                   and the evaluations kept apart (pure: the caller passes the clock)
  EvalProgress     'evaluating: 320/1000 people' at most every few seconds, then the
                   result line
  final_block      the lines naming the checkpoint, eval files, figures and TensorBoard

Units: metrics are fractions in every file (metrics.jsonl, eval JSON) and percent on the
console (`percent`).
"""

import collections
import os
import sys
import time
from typing import Callable, Optional, Sequence


def format_duration(seconds: float) -> str:
  """65 -> '1m05s'; 3725 -> '1h02m05s'."""
  seconds = int(round(max(seconds, 0)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def percent(fraction: Optional[float]) -> str:
  """0.6993 -> '69.9%' (the console's unit); None -> 'n/a'."""
  return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


class EtaEstimator:
  """The remaining time of a run from its recent step times.

  A run's average speed since it started lies: it includes compiling the step (tens of
  seconds on a CPU, minutes for a paper-scale model) and, after a resume, nothing of the
  steps before it. So only the durations of the last `window` steps count, measured from a
  mark set after the first step of this process (which holds the compilation) and reset
  after each evaluation (whose time is counted apart: the remaining evaluations are added
  at the duration of the last one).

  Args:
    total_steps: the step the run ends at.
    window: steps whose durations are averaged.
  """

  def __init__(self, total_steps: int, window: int = 100):
    self.total_steps = total_steps
    self._durations = collections.deque(maxlen=window)
    self._mark = None  # (step, time) the next duration is measured from.
    self.eval_seconds = None  # The last evaluation's duration.

  def step_done(self, step: int, now: float) -> None:
    """Step `step` finished at `now`. The first call only sets the mark (its step held the
    compilation); later ones add each step's share of the time since the mark."""
    if self._mark is not None and step > self._mark[0]:
      steps = step - self._mark[0]
      self._durations.extend([(now - self._mark[1]) / steps] * min(steps,
                                                                   self._durations.maxlen))
    self._mark = (step, now)

  def mark(self, step: int, now: float) -> None:
    """Measures the next steps from here (after an evaluation or a save that blocked)."""
    self._mark = (step, now)

  def eval_done(self, seconds: float, step: int, now: float) -> None:
    """An evaluation took `seconds`; the step clock restarts after it."""
    self.eval_seconds = seconds
    self.mark(step, now)

  @property
  def seconds_per_step(self) -> Optional[float]:
    if not self._durations:
      return None
    return sum(self._durations) / len(self._durations)

  def remaining(self, step: int, evals_left: int = 0) -> Optional[float]:
    """Seconds to the end from `step` (None before a step was timed): the steps left at
    the window's mean, plus `evals_left` evaluations at the last one's duration."""
    per_step = self.seconds_per_step
    if per_step is None:
      return None
    evals = (self.eval_seconds or 0.0) * evals_left
    return max(self.total_steps - step, 0) * per_step + evals


def evals_left(step: int, total: int, eval_every: int) -> int:
  """Evaluations after `step`: the periodic ones before `total`, and the final one."""
  periodic = (total - 1) // eval_every - step // eval_every if eval_every else 0
  return max(periodic, 0) + 1


def eta_text(eta: EtaEstimator, step: int, eval_every: int) -> str:
  """'ETA 5m03s'; '+ evaluations' while their duration is not known yet; 'ETA --'
  before a step was timed."""
  remaining = eta.remaining(step, evals_left(step, eta.total_steps, eval_every))
  if remaining is None:
    return "ETA --"
  unknown = " + evaluations" if eta.eval_seconds is None else ""
  return f"ETA {format_duration(remaining)}{unknown}"


class EvalProgress:
  """Prints 'evaluating lsp test: 320/1000 people' at most every `every_s` seconds.

  Called with (examples done, examples in all) after each batch; silent for evaluations
  shorter than `every_s`.
  """

  def __init__(self, what: str, every_s: float = 10.0, enabled: bool = True,
               clock: Callable[[], float] = time.monotonic, stream=None):
    self.what = what
    self.every_s = every_s
    self.enabled = enabled
    self._clock = clock
    self._stream = stream
    self.start = clock()
    self._last = self.start

  def __call__(self, done: int, total: int) -> None:
    now = self._clock()
    if self.enabled and now - self._last >= self.every_s and done < total:
      print(f"  evaluating {self.what}: {done}/{total} people "
            f"({format_duration(now - self.start)})", file=self._stream or sys.stdout,
            flush=True)
      self._last = now

  @property
  def elapsed(self) -> float:
    return self._clock() - self.start


def result_line(results: dict, seconds: float) -> str:
  """'eval at step 500: PCK@0.2 62.3%  PCP 63.0%  (1000 people, 41 s)'."""
  parts = [f"eval at step {results.get('step', '?')}: {results['metric']} "
           f"{percent(results['mean'])}"]
  if results.get("pcp"):
    parts.append(f"PCP {percent(results['pcp']['mean'])}")
  return "  ".join(parts) + f"  ({results['num_examples']} people, {seconds:.0f} s)"


def final_block(workdir: str, *, step: int, seconds: float,
                checkpoint: Optional[str], eval_files: Sequence[str] = (),
                figures: Sequence[str] = ()) -> str:
  """The run's last lines: what it wrote and where, and how to look at it."""
  tb = os.path.join(workdir, "tensorboard")
  lines = [f"Done: step {step} in {format_duration(seconds)}. Outputs in {workdir}:"]
  if checkpoint:
    lines.append(f"  checkpoint   {checkpoint}")
  for path in eval_files:
    lines.append(f"  eval         {path}")
  if figures:
    folders = sorted({os.path.dirname(p) for p in figures})
    lines.append(f"  figures      {', '.join(folders)} ({len(figures)} PNG: "
                 f"{', '.join(sorted(os.path.basename(p) for p in figures))})")
  lines.append(f"  tensorboard  tensorboard --logdir {tb}")
  return "\n".join(lines)
