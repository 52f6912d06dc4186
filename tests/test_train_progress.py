"""The run's console: the ETA from recent step times, evaluation progress, the final block."""

import numpy as np
import pytest

from jhpe.train import progress


def _simulate(compile_s, step_s, eval_s, eval_every, total, jitter, seed=0):
  """Finish times of steps 1..total: the first holds the compilation, a periodic
  evaluation follows each multiple of eval_every and the final one the last step.

  Returns (finish time of each step, the end time of the run)."""
  rng = np.random.default_rng(seed)
  now, times, marks = 0.0, {}, {}
  for step in range(1, total + 1):
    now += step_s * (1 + jitter * rng.uniform(-1, 1)) + (compile_s if step == 1 else 0)
    times[step] = now
    if eval_every and step % eval_every == 0 and step < total:
      marks[step] = (now, eval_s)
      now += eval_s
  return times, marks, now + eval_s


# (steps timed, periodic evaluations every, their seconds). Before the first evaluation
# its duration is unknown (the console then says 'ETA ... + evaluations'): the runs with
# periodic evaluations are checked after the first one.
@pytest.mark.parametrize("n, eval_every, eval_s", [
    (10, 0, 2.0), (30, 0, 2.0), (500, 0, 2.0), (260, 250, 20.0), (600, 250, 20.0),
    (900, 250, 20.0)])
def test_eta_after_n_steps_is_within_20_percent_of_the_remaining_time(n, eval_every,
                                                                      eval_s):
  total = 1000
  times, marks, end = _simulate(compile_s=41.0, step_s=0.3, eval_s=eval_s,
                                eval_every=eval_every, total=total, jitter=0.3)
  eta = progress.EtaEstimator(total)
  for step in range(1, n + 1):
    eta.step_done(step, times[step])
    if step in marks:
      eta.eval_done(marks[step][1], step, marks[step][0] + marks[step][1])
  remaining = eta.remaining(n, progress.evals_left(n, total, eval_every))
  truth = end - times[n]
  assert remaining == pytest.approx(truth, rel=0.2), (n, remaining, truth)


def test_eta_excludes_the_compilation_and_the_steps_before_a_resume():
  # A run resumed at step 500 of 600: 41 s compiling, then 1 s per step. The average
  # since the process started (the old ETA) would say 100 x (41 + 10) / 10 = 510 s.
  eta = progress.EtaEstimator(600)
  assert eta.remaining(500) is None  # Nothing timed yet: the console prints '--'.
  eta.step_done(501, 41.0)  # The first step: compile + one step.
  for k in range(2, 11):
    eta.step_done(500 + k, 41.0 + (k - 1))
  assert eta.remaining(510) == pytest.approx(90.0)


def test_evals_left_counts_the_periodic_and_the_final_evaluation():
  assert progress.evals_left(0, 1000, 250) == 4  # 250, 500, 750 and the final one.
  assert progress.evals_left(500, 1000, 250) == 2
  assert progress.evals_left(999, 1000, 250) == 1
  assert progress.evals_left(10, 100, 0) == 1


def test_eval_progress_prints_at_most_every_interval(capsys):
  clock = iter([0.0, 1.0, 12.0, 13.0, 30.0]).__next__
  shown = progress.EvalProgress("lsp test", every_s=10.0, clock=clock)
  for done in (16, 32, 48, 64):
    shown(done, 1000)
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["  evaluating lsp test: 32/1000 people (0m12s)",
                   "  evaluating lsp test: 64/1000 people (0m30s)"]


def test_result_line_and_final_block_name_the_outputs():
  results = {"step": 500, "metric": "PCKh@0.5", "mean": 0.6234, "pcp": {"mean": 0.5},
             "num_examples": 2958}
  assert progress.result_line(results, 41.2) == (
      "eval at step 500: PCKh@0.5 62.3%  PCP 50.0%  (2958 people, 41 s)")
  block = progress.final_block("w", step=10, seconds=65, checkpoint="w/checkpoints/10",
                               eval_files=["w/eval/a.json"], figures=["w/figures/a.png"])
  assert block.splitlines() == [
      "Done: step 10 in 1m05s. Outputs in w:", "  checkpoint   w/checkpoints/10",
      "  eval         w/eval/a.json", "  figures      w/figures (1 PNG: a.png)",
      "  tensorboard  tensorboard --logdir w/tensorboard"]
