"""The training loop's runtime pieces: the workdir lock, the preemption flag, metrics.

  WorkdirLock      one run per workdir (flock: a dead process's lock is free again)
  PreemptionFlag   SIGTERM -> a flag the loop polls; in a multi-host run every process
                   stops at the same step
  MetricWriter     metrics.jsonl and TensorBoard events, written by process 0
"""

import fcntl
import json
import logging
import os
import signal
import socket
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


# -- SIGTERM. --


class PreemptionFlag:
  """Set by SIGTERM (installed only in the main thread); the loop polls it.

  In a multi-host run the processes catch SIGTERM at different times, yet they must stop
  at the same step: one process saving (a collective barrier) while another runs a train
  step (another collective) would hang both. So each poll, which every process makes at
  the same point of the loop (each step, each eval batch), all-gathers the processes'
  flags and answers True on every process as soon as any of them was signalled.

  Args:
    sync: agree over processes at each poll (default: when there are several).
  """

  def __init__(self, sync: Optional[bool] = None):
    self.requested = False
    self._previous = None
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
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and stopping.")
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# -- Logging. --


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
