"""The training loop: `train_and_evaluate(config, workdir)`.

What a run guarantees:
- Resume: a run restarted with the same command continues from the latest finished
  checkpoint (params, optimiser, step, RNG, data iterator); randomness is a function of
  (seed, step, example), so on the CPU the resumed run ends bitwise as an uninterrupted one.
- Preemption: SIGTERM or Ctrl-C (during training or evaluation) saves a checkpoint at the
  current step and returns cleanly (`result['preempted']`; the entry points exit 0); the
  restart continues exactly. A second Ctrl-C aborts at once (exit status 130; the last
  complete checkpoint is kept). In a multi-host run a SIGTERM on any process stops every
  process at the same step.
- NaN/Inf: a step whose loss, gradients or new params are not finite is not applied.
  `nan_policy='stop'` stops the run with `NonFiniteError` naming the step (checkpoints on
  disk are all from good steps); 'skip' counts it (`skipped_steps` in metrics.jsonl) and
  goes on.
- One run per workdir: a lock file (flock, so the lock of a dead process is free again)
  makes a second run in the same workdir refuse with `WorkdirLockedError`.
- Checkpoint writes are atomic (orbax writes a temporary folder and renames it), so a run
  killed during an async save restarts from the previous complete checkpoint.
"""

import contextlib
import json
import logging
import os
import time
from typing import Optional

import jax
import numpy as np

from jhpe.train import cascade
from jhpe.train import checkpoint as ckpt
from jhpe.train import config as config_lib
from jhpe.train import evaluate as eval_lib
from jhpe.train import evaluators
from jhpe.train import progress
from jhpe.train.runtime import MetricWriter, PreemptionFlag, WorkdirLock, eval_record
from jhpe.train.runtime import NonFiniteError  # pylint: disable=unused-import  # Raised here.
from jhpe.train import state as state_lib
from jhpe.train import steps as steps_lib
from jhpe.train.config import Config

# -- The loop. --


def make_train_loader(config: Config):
  """This process's shard of the training data (shuffled, repeated)."""
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_loader(
      config.train_dataset or config.dataset, config.train_split,
      data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
      batch_size=config.batch_size // jax.process_count(), canvas_size=config.input_size,
      train=True, seed=config.seed, shard_index=jax.process_index(),
      shard_count=jax.process_count(), skip_bad_examples=config.skip_bad_examples,
      worker_count=config.num_workers)


class _Runner:
  """The state of one `train_and_evaluate` call (devices, step function, writers)."""

  def __init__(self, config: Config, workdir: str, preempt: PreemptionFlag,
               train_loader=None, eval_loader=None, stage_training=None):
    self.config = config
    self.workdir = workdir
    self.preempt = preempt
    self.chief = jax.process_index() == 0
    self.model = config_lib.build_model(config)
    self.mesh = steps_lib.make_mesh()
    self.pmap = config.parallel == "pmap"
    self.train_loader = train_loader
    self.eval_loader = eval_loader
    self.writer = MetricWriter(workdir, enabled=self.chief)
    self.outputs = {"eval_files": [], "figures": []}  # What the last evaluation wrote.
    self.manager = ckpt.make_manager(workdir, keep=config.keep_checkpoints,
                                     async_save=config.async_checkpoints)
    flips = config_lib.skeleton_of(config).flip_permutation
    if self.pmap:
      self.train_step = steps_lib.make_pmap_train_step(
          self.model, config, flip_permutation=flips, stage_training=stage_training)
    else:
      self.train_step = steps_lib.make_shard_map_train_step(
          self.model, config, self.mesh, flip_permutation=flips,
          stage_training=stage_training)

  # Device placement.
  def to_devices(self, state):
    if self.pmap:
      return steps_lib.replicate_pmap(state)
    return steps_lib.replicate_mesh(state, self.mesh)

  def to_host_state(self, state) -> state_lib.TrainState:
    """The state as numpy arrays on the host (one copy), to save or to evaluate.

    Orbax refuses to save a process-local jax.Array in a multi-host run (pmap's per-device
    copies are process-local), and a shard_map state is replicated over every process's
    devices: numpy arrays, written once by the primary process, suit both. pmap keeps a
    copy per local device on a leading axis (dropped here); the shard_map state has none.
    """
    if self.pmap:
      state = steps_lib.unreplicate_pmap(state)
    return jax.device_get(state)

  def device_batch(self, batch):
    batch = {k: batch[k] for k in ("image", "joints", "visible")}
    if self.pmap:
      return steps_lib.shard_batch_pmap(batch, jax.local_device_count())
    return steps_lib.global_batch(batch, self.mesh)

  def scalar_metrics(self, metrics) -> dict:
    metrics = jax.device_get(metrics)
    if self.pmap:
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return jax.tree.map(np.asarray, metrics)

  def save(self, state, step: int, data_iter, metrics: Optional[dict] = None) -> None:
    ckpt.save(self.manager, step, self.to_host_state(state).to_dict(), data_iter,
              metrics=metrics)

  def evaluate(self, state, step: int, final: bool) -> dict:
    """Evaluates `state` on the eval split; writes the eval files (process 0)."""
    host = self.to_host_state(state)
    use_ema = self.config.ema_decay > 0
    shown = progress.EvalProgress(
        f"{self.config.dataset} {self.config.eval_split} at step {step}",
        enabled=self.chief)
    results, predictions, figures = eval_lib.evaluate(
        host.variables(use_ema=use_ema), self.model, self.config,
        dataset=self.config.dataset, split=self.config.eval_split, mesh=self.mesh,
        num_examples=self.config.num_eval_examples, loader=self.eval_loader,
        should_stop=self.preempt, collect_figures=final, progress=shown)
    results.update(step=int(step), ema=use_ema,
                   checkpoint=os.path.join(ckpt.checkpoint_dir(self.workdir), str(step)))
    if self.chief:
      self.outputs["eval_files"] = list(
          eval_lib.write_eval_files(self.workdir, results, predictions))
      if final:
        written = eval_lib.save_figures(self.workdir, results, figures)
        self.outputs["figures"] = list(written.values())
        self.writer.write_images(
            step, {f"figures/{name}": path for name, path in written.items()})
      print(progress.result_line(results, shown.elapsed), flush=True)
    return results


def train_and_evaluate(config: Config, workdir: str, *, train_loader=None,
                       eval_loader=None) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

  Args:
    config: the run's Config.
    workdir: where config.json, metrics.jsonl, checkpoints/, eval/, figures/ and
      tensorboard/ go.
    train_loader, eval_loader: `jhpe.data.pipeline` loaders to use instead of the ones
      the config describes (tests).

  Returns:
    {'step': last step, 'eval': final eval results (None if preempted),
     'preempted': bool, 'skipped_steps': int}.

  Raises:
    ValueError: a bad config (one line naming the flag), before any long work.
    WorkdirLockedError: another run holds the workdir.
    NonFiniteError: NaN/Inf under `nan_policy='stop'`.
  """
  config.validate(num_devices=jax.device_count(), num_processes=jax.process_count())
  config_lib.check_workdir(workdir)
  if ckpt.latest_step(workdir) is not None:
    config_lib.check_resumable(config, workdir)
  if train_loader is None or eval_loader is None:
    # Both splits there (built or buildable) before training, not at the first evaluation.
    from jhpe.data import preflight  # pylint: disable=g-import-not-at-top
    preflight.check_config(config)
  chief = jax.process_index() == 0
  lock = WorkdirLock(workdir) if chief else contextlib.nullcontext()
  with lock, PreemptionFlag() as preempt:
    if chief:
      config_lib.save_config(config, workdir)
      print(f"Training {config.model} on {config.train_dataset or config.dataset} for "
            f"{config.num_train_steps} steps in {workdir} (Ctrl-C saves a checkpoint "
            f"and stops; the same command resumes).", flush=True)
      for path in ckpt.quarantine_incomplete(workdir):
        logging.warning("Set aside an unfinished checkpoint: %s", path)
    # DeepPose's stage-wise cascade: stage s-1's error statistics (measured once).
    stage_training = cascade.prepare(config, workdir, write=chief)
    runner = _Runner(config, workdir, preempt, train_loader, eval_loader, stage_training)
    runner.writer.write_hparams(
        json.loads(config.to_json()),
        metrics=(f"eval/{evaluators.for_dataset(config.dataset).title}", "loss"))
    try:
      return _train(runner)
    finally:
      ckpt.close(runner.manager)
      runner.writer.close()


def _train(r: _Runner) -> dict:
  config, workdir = r.config, r.workdir
  rng = jax.random.PRNGKey(config.seed)
  state = state_lib.create_train_state(rng, r.model, config)
  loader = r.train_loader or make_train_loader(config)
  data_iter = iter(loader)
  restored, start = ckpt.restore_newest_good(r.manager, state.to_dict(), data_iter)
  if start is not None:
    state = state_lib.TrainState.from_dict(restored)
    logging.info("Resumed from step %d.", start)
    if r.chief:
      print(f"Resuming from the checkpoint of step {start} in "
            f"{ckpt.checkpoint_dir(workdir)}.", flush=True)
  else:  # Stage-wise cascade training starts from the previous stage's checkpoint.
    state = cascade.with_earlier_stages(state, config)
  start = int(start or 0)
  r.writer.truncate_after(start)
  state = r.to_devices(state)
  total = config.num_train_steps
  eval_every = config.eval_every
  skipped = 0
  result = {"step": start, "eval": None, "preempted": False}

  def preempted_exit(step):
    r.manager.wait_until_finished()
    if step not in r.manager.all_steps():  # A periodic save may have just written it.
      r.save(state, step, data_iter)
      r.manager.wait_until_finished()
    if r.chief:
      print(f"Preempted at step {step}: checkpoint saved in "
            f"{ckpt.checkpoint_dir(workdir)}; rerun the same command to resume.",
            flush=True)
    result.update(step=step, preempted=True, skipped_steps=skipped)
    return result

  def run_eval(step, final):
    results = r.evaluate(state, step, final)
    r.writer.write(step, eval_record(results))
    return results

  # A run preempted during an evaluation evaluates that step again first.
  if (start and eval_every and start % eval_every == 0 and start < total
      and start not in r.writer.eval_steps()):
    try:
      run_eval(start, final=False)
    except eval_lib.Preempted:
      return preempted_exit(start)

  window = []  # Per-step metrics since the last log line.
  t_window = time.time()
  t_start = time.time()
  eta = progress.EtaEstimator(total)

  def consume(done, metrics):
    """The host side of step `done`: the NaN policy, and the log line at log steps."""
    nonlocal skipped, window, t_window
    m = r.scalar_metrics(metrics)  # Waits for that step on the device.
    if m["nonfinite"] > 0:
      if config.nan_policy == "stop":
        r.manager.wait_until_finished()
        raise NonFiniteError(done, ckpt.latest_complete_step(r.manager),
                             ckpt.checkpoint_dir(workdir))
      skipped += 1
      logging.warning("Step %d: non-finite loss or gradients; update skipped "
                      "(--nan_policy=skip, %d so far).", done, skipped)
    window.append(m)
    now = time.time()
    eta.step_done(done, now)
    if done % config.log_every == 0 or done == total:
      steps_per_s = len(window) / max(now - t_window, 1e-9)
      finite = [w for w in window if w["nonfinite"] == 0] or window
      record = {
          "loss": float(np.mean([w["loss"] for w in finite])),
          "loss_stage": np.mean([w["loss_stage"] for w in finite], axis=0).tolist(),
          "learning_rate": float(m["learning_rate"]),
          "grad_norm": float(np.mean([w["grad_norm"] for w in finite])),
          "steps_per_s": steps_per_s,
          "images_per_s": steps_per_s * config.batch_size,
          "skipped_steps": skipped,
          # Wall seconds of training since this process started its loop (compile in).
          "elapsed_s": now - t_start,
      }
      r.writer.write(done, record)
      if r.chief:
        print(f"step {done}/{total}  loss {record['loss']:.6f}  "
              f"lr {record['learning_rate']:.3g}  {steps_per_s:.2f} steps/s  "
              f"{record['images_per_s']:.1f} img/s  "
              f"{progress.eta_text(eta, done, eval_every)}", flush=True)
      window, t_window = [], now

  # Step N's metrics are read once step N+1 is queued, so the device keeps working while
  # the host reads them and loads the next batch. A non-finite step was never applied (the
  # step's own guard), so seeing it one step later changes nothing that is saved; every
  # log, evaluation, checkpoint and exit first consumes what is pending.
  pending = None
  for step in range(start, total):
    if r.preempt():
      if pending:
        consume(*pending)
      return preempted_exit(step)
    batch = next(data_iter)
    if step == start and r.chief:
      # The first call traces and compiles the step (then dispatches it): its time is
      # said apart, and the ETA measures from after it.
      print("compiling the train step...", end="", flush=True)
      t_compile = time.time()
    state, metrics = r.train_step(state, r.device_batch(batch))
    if step == start and r.chief:
      print(f" {time.time() - t_compile:.0f} s", flush=True)
    done = step + 1
    if pending:
      consume(*pending)
    pending = (done, metrics)
    evaluate_now = bool(eval_every) and done % eval_every == 0 and done < total
    save_now = done < total and (done % config.checkpoint_every == 0 or evaluate_now)
    if done == total or done % config.log_every == 0 or save_now:
      consume(*pending)
      pending = None
    eval_metrics = None
    if evaluate_now:
      t_eval = time.time()
      try:
        results = run_eval(done, final=False)
      except eval_lib.Preempted:
        return preempted_exit(done)
      eval_metrics = {ckpt.BEST_METRIC: results["mean"] or 0.0}
      eta.eval_done(time.time() - t_eval, done, time.time())
    if save_now:
      r.save(state, done, data_iter, metrics=eval_metrics)

  # The final evaluation, then the final checkpoint carrying its metric.
  try:
    results = run_eval(total, final=True)
  except eval_lib.Preempted:
    return preempted_exit(total)
  if r.manager.latest_step() != total:
    r.save(state, total, data_iter, metrics={ckpt.BEST_METRIC: results["mean"] or 0.0})
  r.manager.wait_until_finished()
  if r.chief:
    print(eval_lib.format_table(results), flush=True)
    print(progress.final_block(
        workdir, step=total, seconds=time.time() - t_start,
        checkpoint=os.path.join(ckpt.checkpoint_dir(workdir), str(total)),
        eval_files=r.outputs["eval_files"], figures=r.outputs["figures"]), flush=True)
  result.update(step=total, eval=results, skipped_steps=skipped)
  return result
