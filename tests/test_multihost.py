"""Two local processes through `jax.distributed` match one process on the same global batch.

The processes of a multi-host run start on 127.0.0.1 (CPU, collectives through gloo);
beside them runs a single-process reference, and the per-step losses are compared:

- the mechanism: gradients `lax.pmean`-ed over 2 processes x 2 CPU devices
  (tests/multihost_worker.py --mode=toy);
- the real thing: `./launch.sh multihost hourglass FLAGFILE WORKDIR --num_processes 2
  --local_test` (the absl entry point, the data shards, the train loop, the orbax
  checkpoints and the gathered evaluation) against `loop.train_and_evaluate` in one
  process fed the same global batches.

Tolerance: relative 1e-5. Only the order of the float32 reductions differs between the
runs (the global mean is a mean of per-device means instead of one mean over the batch),
which moves the losses by a few ulps; nothing else is allowed to differ.

Every process runs under a timeout, so a hang in a collective fails the test instead of
blocking the suite.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "multihost_worker.py")
# Per process. A healthy run takes seconds on an idle machine, but the suite shares two
# cores with other work; the limit only has to catch a hang.
TIMEOUT_S = 300
RTOL = 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _environ(**extra):
  environ = dict(os.environ)
  environ["JAX_PLATFORMS"] = "cpu"
  environ.pop("XLA_FLAGS", None)  # The processes choose their own CPU device counts.
  environ.update(extra)
  return environ


def _tail(path, chars=3000):
  path = pathlib.Path(path)
  return f"--- {path.name}\n" + (path.read_text()[-chars:] if path.exists() else "(none)")


class _Processes:
  """Processes started together; any failure or hang kills them all (a context)."""

  def __init__(self):
    self.running = []  # (Popen, log path)

  def start(self, command, log, env=None):
    with open(log, "w") as f:
      # A session of its own, so that a hung run is killed with all its children.
      self.running.append((subprocess.Popen(
          command, stdout=f, stderr=subprocess.STDOUT, env=env or _environ(), cwd=ROOT,
          start_new_session=True), log))

  def wait_all(self, timeout=TIMEOUT_S, extra_logs=()):
    for process, log in self.running:
      try:
        code = process.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{log}: no result after {timeout} s (a hung collective?)\n"
            + "\n".join(_tail(p) for p in (log, *extra_logs))) from None
      assert code == 0, f"{log}: exit status {code}\n" + "\n".join(
          _tail(p) for p in (log, *extra_logs))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for process, _ in self.running:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _read_jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_two_processes_pmean_gradients_like_one(tmp_path):
  """The mechanism: gradients pmean-ed over 2 processes x 2 CPU devices each."""
  address = f"127.0.0.1:{_free_port()}"
  out, reference = tmp_path / "multi.json", tmp_path / "single.json"
  with _Processes() as processes:
    for i in range(2):
      processes.start(
          [sys.executable, WORKER, "--mode=toy", f"--out={out}",
           f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
           "--local_devices=2"], tmp_path / f"process{i}.log")
    processes.start([sys.executable, WORKER, "--mode=toy", f"--out={reference}"],
                    tmp_path / "single.log")
    processes.wait_all()
  multi, single = json.loads(out.read_text()), json.loads(reference.read_text())
  assert (multi["process_count"], multi["device_count"]) == (2, 4)
  assert (single["process_count"], single["device_count"]) == (1, 1)
  # pmap's device index counts over all processes, in process order.
  assert multi["axis_index"] == [0, 1, 2, 3]
  assert len(single["losses"]) == 3 and single["losses"][-1] < single["losses"][0]
  np.testing.assert_allclose(multi["losses"], single["losses"], rtol=RTOL)


# One process of the preemption test: SIGTERM reaches process 1 only, before its poll 3
# (as when the scheduler signals the hosts at different times); every process must still
# stop at that same poll, or one would wait in the checkpoint barrier while the other
# runs a train step.
_PREEMPT_WORKER = """
import json, os, signal, sys
from jhpe import cpu_defaults
cpu_defaults.apply()
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=60)
from jhpe.train import runtime
stopped_at = None
with runtime.PreemptionFlag() as flag:
  for poll in range(8):
    if poll == 3 and jax.process_index() == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    if flag():
      stopped_at = poll
      break
with open(sys.argv[3], "w") as f:
  json.dump({"stopped_at": stopped_at, "sync": flag.sync}, f)
jax.distributed.shutdown()
"""


def test_sigterm_on_one_process_stops_every_process_at_the_same_poll(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  outs = [tmp_path / f"process{i}.json" for i in range(2)]
  with _Processes() as processes:
    for i in range(2):
      processes.start([sys.executable, "-c", _PREEMPT_WORKER, address, str(i),
                       str(outs[i])], tmp_path / f"process{i}.log")
    processes.wait_all()
  results = [json.loads(out.read_text()) for out in outs]
  assert [r["sync"] for r in results] == [True, True]
  # Process 0 never got the signal: it stops because process 1 did, at the same poll.
  assert [r["stopped_at"] for r in results] == [3, 3]


def test_single_process_flag_does_not_sync():
  """One process: the flag is the plain signal flag (no collective per poll)."""
  from jhpe.train import runtime  # pylint: disable=g-import-not-at-top
  flag = runtime.PreemptionFlag()
  assert not flag.sync and not flag()
  flag.requested = True
  assert flag()


# --sync_batch_norm: BatchNorm statistics over the global batch. Without it each device
# normalises over its own share, so the loss depends on the device count by design.
# --aug_rotation=0 --aug_scale=0: every joint stays on the heatmap, so every device's
# share has the same total joint weight. The heatmap loss is a weighted mean per device
# (sum w err / sum w) and the step averages those means, which equals the global weighted
# mean only when the shares' weight sums agree (flips and colour jitter still draw from
# each example's global index).
# --optimizer=sgd: an update proportional to the gradient keeps reduction-order rounding
# at the rounding level. RMSProp's (and Adam's) first step moves every parameter by about
# lr / sqrt(1 - decay) whatever its gradient's size, so a gradient element that is zero
# up to rounding (sign decided by the summation order) moves its parameter by +-lr
# either way: losses then agree only to ~1e-4 after 2 steps, which says nothing about
# the distribution.
TINY_FLAGS = """\
--dataset=synthetic/tiny
--data_dir={data_dir}
--input_size=32
--batch_size=8
--num_stacks=1
--num_features=8
--depth=1
--sync_batch_norm=true
--aug_rotation=0
--aug_scale=0
--optimizer=sgd
--learning_rate=0.05
--num_train_steps=3
--log_every=1
--checkpoint_every=2
--flip_test=false
--eval_batch_size=8
--num_eval_examples=8
"""


@pytest.mark.slow
def test_two_processes_through_launch_sh_like_one(tmp_path):
  """The real entry point, started as 2 processes by `launch.sh multihost --local_test`.

  The reference is `loop.train_and_evaluate` in one process on the config of the same
  flagfile, fed the global batches the 2 processes assemble from their data shards.
  """
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text(TINY_FLAGS.format(data_dir=tmp_path / "data"))
  multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
  worker = [sys.executable, WORKER, f"--flagfile={flagfile}"]
  with _Processes() as processes:
    # The dataset first: processes started together would race to build it.
    processes.start(worker + ["--mode=prepare"], tmp_path / "prepare.log")
    processes.wait_all()
  with _Processes() as processes:
    processes.start(
        [str(ROOT / "launch.sh"), "multihost", "hourglass", str(flagfile), str(multi_dir),
         "--num_processes", "2", "--local_test"], tmp_path / "launch.log",
        env=_environ(PYTHON=sys.executable))
    processes.start(worker + ["--mode=loop", f"--out={single_dir}", "--num_shards=2"],
                    tmp_path / "single.log")
    processes.wait_all(extra_logs=[multi_dir / "log.process0.txt",
                                   multi_dir / "log.process1.txt"])

  multi, single = (_read_jsonl(d / "metrics.jsonl") for d in (multi_dir, single_dir))
  losses = lambda records: {r["step"]: r["loss"] for r in records if "loss" in r}
  multi, single = losses(multi), losses(single)
  assert sorted(multi) == sorted(single) == [1, 2, 3]
  np.testing.assert_allclose([multi[s] for s in (1, 2, 3)],
                             [single[s] for s in (1, 2, 3)], rtol=RTOL)
  assert json.loads((multi_dir / "config.json").read_text()) == json.loads(
      (single_dir / "config.json").read_text())
  assert (multi_dir / "checkpoints" / "3").is_dir()
  # The evaluation gathered from both processes scores the same examples alike.
  predictions = [
      json.loads((d / "eval" / "synthetic_tiny_test_predictions.json").read_text())
      for d in (multi_dir, single_dir)]
  multi_pred, single_pred = (
      {p["index"]: p["joints"] for p in pred} for pred in predictions)
  assert sorted(multi_pred) == sorted(single_pred) and len(multi_pred) == 8
  for index, joints in multi_pred.items():
    # Stored rounded to 0.01 px: two equal predictions can round 0.01 apart.
    np.testing.assert_allclose(joints, single_pred[index], atol=0.011)
