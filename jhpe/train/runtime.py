"""The training loop's runtime pieces: the workdir lock, the preemption flag, metrics.

  WorkdirLock      one run per workdir (flock: a dead process's lock is free again)
  PreemptionFlag   SIGTERM or Ctrl-C (SIGINT) -> a flag the loop polls; a second Ctrl-C
                   aborts at once (exit status 130); in a multi-host run every process
                   stops at the same step
  MetricWriter     metrics.jsonl and TensorBoard events (scalars, the config as
                   hyperparameters, the evaluation figures as images), by process 0

Units: every file stores metrics as fractions in [0, 1] (PCK 0.699, as the eval JSON);
the console and the tables print them as percent (69.9).
"""

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Optional

import jax
import numpy as np

from jhpe import files

LOCK_FILENAME = ".lock"
METRICS_FILENAME = "metrics.jsonl"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


# -- The workdir lock. --


class WorkdirLock:
  """An exclusive flock on `<workdir>/.lock` holding the owner's pid and host.

  The kernel drops an flock when its process dies (even by SIGKILL), so a stale lock file
  left by a dead run never blocks the next one: it is simply taken over.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILENAME)
    self._file = None

  def acquire(self) -> "WorkdirLock":
    f = files.open_no_follow(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      owner = f.read().strip() or "unknown"
      f.close()
      raise WorkdirLockedError(
          f"workdir {os.path.dirname(self.path)} is in use by another run ({owner}; lock "
          f"{self.path}); wait for it to end or choose another --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# -- SIGTERM and Ctrl-C. --

# The exit status of a run aborted by a second Ctrl-C (128 + SIGINT, as a shell reports it).
ABORT_EXIT_STATUS = 130


class PreemptionFlag:
  """Set by SIGTERM or SIGINT (Ctrl-C), installed only in the main thread; the loop polls it.

  The first signal asks the run to stop where it can save (the loop saves a checkpoint
  at the current step and returns; an evaluation stops before writing anything). A second
  SIGINT while that happens aborts at once (`os._exit(130)`): orbax commits a checkpoint
  by renaming its folder, so an abort never leaves a half-written one to restore.

  In a multi-host run the processes catch SIGTERM at different times, yet they must stop
  at the same step: one process saving (a collective barrier) while another runs a train
  step (another collective) would hang both. So each poll, which every process makes at
  the same point of the loop (each step, each eval batch), all-gathers the processes'
  flags and answers True on every process as soon as any of them was signalled.

  Args:
    sync: agree over processes at each poll (default: when there are several).
    what: what the first signal stops, for its console line ('saving a checkpoint').
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, sync: Optional[bool] = None,
               what: str = "saving a checkpoint at the end of this step and stopping"):
    self.requested = False
    self.what = what
    self._previous = {}
    self.sync = jax.process_count() > 1 if sync is None else sync

  def __call__(self) -> bool:
    if not self.sync:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # One int32 per process per poll: small beside a train step's gradient all-reduce.
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    # `or`: a SIGTERM landing during the gather is kept for the next poll, not lost.
    self.requested = self.requested or bool(np.any(flags))
    return bool(np.any(flags))

  def _handler(self, signum, frame):
    del frame
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      # print, not logging: the entry points log warnings and up only, and this must show.
      print(f"\n{name} again: aborting now (the last complete checkpoint is kept).",
            file=sys.stderr, flush=True)
      os._exit(ABORT_EXIT_STATUS)  # pylint: disable=protected-access
    self.requested = True
    again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
    print(f"\n{name}: {self.what}{again}.", file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handler)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous = {}


# -- Logging. --


def eval_record(results: dict) -> dict:
  """The metrics.jsonl record of an evaluation: the mean, PCP and each stage's mean.

  Every evaluation logs them, so the learning curve of each stage (do later stages
  refine earlier ones, and from when?) is in metrics.jsonl, not only in the final eval.
  """
  metric = results["metric"]
  record = {f"eval/{metric}": results["mean"], "eval/num_examples": results["num_examples"]}
  if results.get("pcp"):
    record["eval/PCP"] = results["pcp"]["mean"]
  per_stage = results.get("per_stage") or ()
  if len(per_stage) > 1:
    for s in per_stage:
      record[f"eval/{metric}/stage{s['stage']}"] = s["mean"]
  return record



class MetricWriter:
  """metrics.jsonl (one JSON object per record) and TensorBoard, on process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILENAME)
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover - tensorboardX is a dependency.
        self._tb = None

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (written after the checkpoint a resumed run starts from)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue  # A line cut by a kill.
    files.write_atomic(self.path, "".join(kept))

  def write(self, step: int, record: dict) -> None:
    if not self.enabled:
      return
    with files.open_no_follow(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **record}) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and v is not None:
          self._tb.add_scalar(k, v, step)
        elif isinstance(v, list) and k.startswith("loss_stage"):
          for s, x in enumerate(v):
            self._tb.add_scalar(f"{k}/{s}", x, step)
      self._tb.flush()

  def write_hparams(self, config: dict, metrics: tuple = ()) -> None:
    """The run's config as TensorBoard hyperparameters (the HPARAMS tab) and as text.

    Args:
      config: `Config.to_dict()`-like; nested dicts are flattened ('model_kwargs.depth'),
        lists and tuples become strings.
      metrics: scalar tags the HPARAMS tab shows beside them ('eval/PCK@0.2').
    """
    if self._tb is None:
      return
    from tensorboardX import summary as tb_summary  # pylint: disable=g-import-not-at-top
    # add_scalar stores 'eval/PCK@0.2' as 'eval/PCK_0.2': name the metrics as stored.
    clean = getattr(tb_summary, "_clean_tag", lambda tag: tag)
    flat = flatten_hparams(config)
    writer = self._tb._get_file_writer()  # pylint: disable=protected-access
    # In this run's own folder (SummaryWriter.add_hparams would open a sub-run), so the
    # HPARAMS tab pairs the values with this run's scalars.
    for summary in tb_summary.hparams(flat, {clean(tag): 0.0 for tag in metrics}):
      writer.add_summary(summary)
    self._tb.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
    self._tb.flush()

  def write_images(self, step: int, paths: dict) -> None:
    """PNG files as TensorBoard images ({tag: path}); unreadable ones are skipped."""
    if self._tb is None:
      return
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for tag, path in sorted(paths.items()):
      try:
        with Image.open(path) as image:
          pixels = np.asarray(image.convert("RGB"))
      except OSError as e:
        logging.warning("TensorBoard: could not read the figure %s: %s", path, e)
        continue
      self._tb.add_image(tag, pixels, step, dataformats="HWC")
    self._tb.flush()

  def eval_steps(self) -> set:
    """The steps with an evaluation record."""
    if not os.path.exists(self.path):
      return set()
    steps = set()
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if any(k.startswith("eval/") for k in record):
          steps.add(record["step"])
    return steps

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def flatten_hparams(config: dict, prefix: str = "") -> dict:
  """{'model_kwargs': {'depth': 4}, 'test_scales': [1.0]} ->
  {'model_kwargs.depth': 4, 'test_scales': '1.0'}: the value types TensorBoard's
  hyperparameters take (str, bool, int, float)."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten_hparams(value, f"{name}."))
    elif isinstance(value, (list, tuple)):
      flat[name] = ",".join(str(v) for v in value)
    elif value is None or isinstance(value, (str, bool, int, float)):
      flat[name] = "" if value is None else value
    else:
      flat[name] = str(value)
  return flat


class NonFiniteError(RuntimeError):
  """The loss or gradients became NaN/Inf under `--nan_policy=stop`."""

  def __init__(self, step: int, last_checkpoint: Optional[int], checkpoint_dir: str):
    self.step = step
    self.last_checkpoint = last_checkpoint
    super().__init__(
        f"non-finite loss or gradients at step {step} (the update was not applied); "
        f"stopping (--nan_policy=stop). The last good checkpoint is "
        f"{'step ' + str(last_checkpoint) if last_checkpoint is not None else 'none'} in "
        f"{checkpoint_dir}. Lower --learning_rate, set --grad_clip, or pass "
        f"--nan_policy=skip to skip such steps.")
