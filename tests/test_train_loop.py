"""The training loop end to end, through the CLI: resume, preemption, NaN, the lock.

Every run is the same tiny configuration on the synthetic set, in a subprocess (SIGTERM
and SIGKILL need one). A shared persistent compilation cache keeps the repeated runs from
compiling the same program again, and the uninterrupted reference run is trained once
(the module-scoped `tiny` fixture) and shared. What a run costs is mostly its start-up
and, per step, a checkpoint every 4 steps: the runs stay short (NUM_STEPS) while leaving
the preemption test room to signal mid-run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jhpe.train import checkpoint as ckpt
from jhpe.train import loop
from jhpe.train import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 32
# The NaN runs explode after step 6 (--decay_steps=6); the skip run only has to show a few
# skipped steps and reach the end. The step schedule does not depend on
# --num_train_steps, so this run reuses the compiled step of the stop run.
NAN_SKIP_STEPS = 12

TINY_FLAGS = """\
--dataset=synthetic/tiny
--data_dir={data_dir}
--input_size=32
--batch_size=8
--eval_batch_size=16
--num_stacks=1
--num_features=8
--depth=1
--num_train_steps={steps}
--log_every=1
--checkpoint_every=4
--keep_checkpoints=2
--learning_rate=1e-3
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("loop")
  flagfile = root / "tiny.flags"
  flagfile.write_text(TINY_FLAGS.format(data_dir=root / "tfds", steps=NUM_STEPS))
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")
  ctx = dict(root=root, flagfile=str(flagfile), env=env)
  proc = _run(ctx, root / "reference")
  assert proc.returncode == 0, proc.stderr[-3000:]
  ctx["reference"] = _results(root / "reference")
  return ctx


def _cmd(ctx, workdir, *extra):
  return [sys.executable, "-m", "experiments.hourglass", f"--flagfile={ctx['flagfile']}",
          f"--workdir={workdir}", *extra]


def _run(ctx, workdir, *extra):
  return subprocess.run(_cmd(ctx, workdir, *extra), env=ctx["env"], cwd=REPO,
                        capture_output=True, text=True, timeout=900)


def _start(ctx, workdir, *extra):
  return subprocess.Popen(_cmd(ctx, workdir, *extra), env=ctx["env"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(workdir):
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        assert record["step"] not in losses, "a step logged twice"
        losses[record["step"]] = record["loss"]
  return losses


def _results(workdir):
  with open(os.path.join(workdir, "eval", "synthetic_tiny_test.json")) as f:
    return dict(losses=_losses(workdir), eval=json.load(f))


def _wait(predicate, proc, timeout=600):
  start = time.time()
  while not predicate():
    assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
    assert time.time() - start < timeout, "timed out"
    time.sleep(0.01)


def _logged_step(workdir):
  try:
    return max(_losses_partial(workdir) or [0])
  except FileNotFoundError:
    return 0


def _losses_partial(workdir):
  steps = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        steps.append(json.loads(line)["step"])
      except ValueError:
        pass
  return steps


def _complete_checkpoints(workdir):
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit() and os.path.exists(
      os.path.join(root, n, ckpt.COMMIT_MARKER)))


def test_reference_run_trains_and_writes_the_workdir(tiny):
  ref = tiny["reference"]
  workdir = tiny["root"] / "reference"
  assert sorted(ref["losses"]) == list(range(1, NUM_STEPS + 1))
  assert ref["losses"][NUM_STEPS] < ref["losses"][1]
  assert ref["eval"]["step"] == NUM_STEPS and ref["eval"]["num_examples"] == 32
  assert set(ref["eval"]["per_joint"]) >= {"head_top", "mean"}
  with open(workdir / "eval" / "synthetic_tiny_test_predictions.json") as f:
    predictions = json.load(f)
  assert len(predictions) == 32 and np.shape(predictions[0]["joints"]) == (14, 2)
  assert (workdir / "config.json").exists() and (workdir / "tensorboard").is_dir()
  assert ckpt.latest_step(str(workdir)) == NUM_STEPS
  with open(workdir / "metrics.jsonl") as f:
    evals = [r for r in map(json.loads, f) if "eval/PCK@0.2" in r]
  assert [r["step"] for r in evals] == [NUM_STEPS]
  assert evals[0]["eval/PCK@0.2"] == ref["eval"]["mean"]
  assert evals[0]["eval/PCP"] == ref["eval"]["pcp"]["mean"]
  types = ref["eval"]["error_types"]
  assert types["good"]["mean"] == ref["eval"]["mean"]  # 'good' is a PCK hit.
  assert sum(types[k]["mean"] for k in ("good", "inversion", "jitter", "miss")) == (
      pytest.approx(1.0))


def _tensorboard_tags(logdir):
  """{tag: kind} of the summaries in a folder's event files (TFRecord framing read here:
  TensorBoard itself is not a dependency)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        tags[value.tag] = value.WhichOneof("value") or value.metadata.plugin_data.plugin_name
  return tags


def test_tensorboard_has_the_config_as_hparams_and_the_figures_as_images(tiny):
  tags = _tensorboard_tags(tiny["root"] / "reference" / "tensorboard")
  assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(tags)
  assert tags["figures/best_worst"] == "image" and tags["figures/pck_curve"] == "image"
  assert tags["loss"] == "simple_value" and "eval/PCK_0.2" in tags


def test_eval_record_logs_pcp_and_each_stage_of_a_multistage_model():
  results = {"metric": "PCK@0.2", "mean": 0.5, "num_examples": 10,
             "pcp": {"torso": 0.9, "mean": 0.4},
             "per_stage": [{"stage": 1, "mean": 0.3, "pcp": 0.2},
                           {"stage": 2, "mean": 0.5, "pcp": 0.4}]}
  assert loop.eval_record(results) == {
      "eval/PCK@0.2": 0.5, "eval/num_examples": 10, "eval/PCP": 0.4,
      "eval/PCK@0.2/stage1": 0.3, "eval/PCK@0.2/stage2": 0.5}
  one_stage = dict(results, per_stage=results["per_stage"][1:])
  assert "eval/PCK@0.2/stage2" not in loop.eval_record(one_stage)


def test_sigterm_then_sigkill_then_restart_ends_as_uninterrupted(tiny):
  workdir = tiny["root"] / "interrupted"
  # 1. SIGTERM mid-training: a checkpoint of the current step, a clean exit.
  proc = _start(tiny, workdir)
  _wait(lambda: _logged_step(workdir) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert "Preempted at step" in out
  preempted_at = ckpt.latest_step(str(workdir))
  assert 3 <= preempted_at < NUM_STEPS
  # 2. SIGKILL after a later periodic checkpoint, wherever the run is then.
  proc = _start(tiny, workdir)
  _wait(lambda: any(s > preempted_at + 4 for s in _complete_checkpoints(workdir)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "eval").exists()
  # 3. The same command again: resumes and ends bitwise as the uninterrupted run.
  proc = _run(tiny, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resuming from the checkpoint of step" in proc.stdout
  got = _results(workdir)
  assert got["losses"] == tiny["reference"]["losses"]
  assert got["eval"]["per_joint"] == tiny["reference"]["eval"]["per_joint"]


def test_ctrl_c_saves_exits_0_and_the_same_command_resumes(tiny):
  workdir = tiny["root"] / "ctrl_c"
  proc = _start(tiny, workdir)
  _wait(lambda: _logged_step(workdir) >= 3, proc)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=600)
  # A clean stop, as SIGTERM: exit status 0, one line on each stream, no traceback.
  assert proc.returncode == 0, err[-2000:]
  assert "Ctrl-C: saving a checkpoint" in err and "Ctrl-C again to abort" in err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert "Preempted at step" in out
  stopped_at = ckpt.latest_step(str(workdir))
  assert 3 <= stopped_at < NUM_STEPS and stopped_at in _complete_checkpoints(workdir)
  # The same command continues from that checkpoint to the uninterrupted run's end.
  proc = _run(tiny, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resuming from the checkpoint of step {stopped_at}" in proc.stdout
  got = _results(workdir)
  assert got["losses"] == tiny["reference"]["losses"]
  # The console says where the outputs went.
  assert "Done: step 32" in proc.stdout and str(workdir / "eval") in proc.stdout
  assert f"tensorboard --logdir {workdir / 'tensorboard'}" in proc.stdout
  assert "compiling the train step..." in proc.stdout


_DOUBLE_CTRL_C = """
import os, signal, sys, time
from jhpe.train import runtime
with runtime.PreemptionFlag(sync=False) as flag:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.2)  # The handler runs between bytecodes: the first is seen first.
  assert flag(), "the first Ctrl-C did not set the flag"
  print("first handled", flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(5)
print("not aborted", flush=True)
"""


def test_a_second_ctrl_c_aborts_at_once_with_status_130():
  proc = subprocess.run([sys.executable, "-c", _DOUBLE_CTRL_C], cwd=REPO, timeout=120,
                        capture_output=True, text=True, env=dict(os.environ,
                                                                 JAX_PLATFORMS="cpu"))
  assert proc.returncode == runtime.ABORT_EXIT_STATUS == 130, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[0] == "first handled"
  assert "not aborted" not in proc.stdout
  assert "Ctrl-C again: aborting now" in proc.stderr


def test_resuming_with_other_settings_is_refused_and_changes_nothing(tiny, tmp_path):
  workdir = tmp_path / "other_settings"
  shutil.copytree(tiny["root"] / "reference", workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  proc = _run(tiny, workdir, "--sigma=3", "--num_train_steps=40")
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][-1]
  assert "--sigma: 1.0 -> 3.0" in line and str(workdir) in line
  assert "num_train_steps" not in line  # Training longer is a legitimate resume.
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before


def test_nan_stops_with_the_step_and_keeps_good_checkpoints(tiny):
  workdir = tiny["root"] / "nan_stop"
  explode = ("--schedule=step", "--decay_steps=6", "--decay_factor=1e30")
  proc = _run(tiny, workdir, *explode)
  assert proc.returncode == 3, proc.stderr[-3000:]
  line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][-1]
  assert "non-finite loss or gradients at step" in line and "--nan_policy=skip" in line
  bad_step = int(line.split("at step ")[1].split()[0])
  good = ckpt.latest_step(str(workdir))
  assert 6 < bad_step and good is not None and good < bad_step
  variables, _ = ckpt.restore_variables(str(workdir))
  assert all(np.isfinite(np.asarray(x)).all()
             for x in __import__("jax").tree.leaves(variables))
  assert not (workdir / "eval").exists()
  # The skip policy goes on to the end, counting the skipped steps.
  workdir = tiny["root"] / "nan_skip"
  proc = _run(tiny, workdir, *explode, "--nan_policy=skip",
              f"--num_train_steps={NAN_SKIP_STEPS}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(l) for l in f]
  skipped = [r["skipped_steps"] for r in records if "skipped_steps" in r]
  assert skipped[-1] > 0 and skipped[0] == 0
  assert max(r["step"] for r in records) == NAN_SKIP_STEPS
  assert (workdir / "eval" / "synthetic_tiny_test.json").exists()


def test_second_run_in_the_same_workdir_refuses(tiny, tmp_path):
  workdir = tmp_path / "locked"
  workdir.mkdir()
  with runtime.WorkdirLock(str(workdir)):
    proc = _run(tiny, workdir)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "is in use by another run" in errors[0]
  assert f"pid {os.getpid()}" in errors[0]
  assert not (workdir / "checkpoints").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  (tmp_path / runtime.LOCK_FILENAME).write_text("pid 999999 on elsewhere\n")
  with runtime.WorkdirLock(str(tmp_path)) as lock:
    assert f"pid {os.getpid()}" in open(lock.path).read()
    with pytest.raises(runtime.WorkdirLockedError):
      runtime.WorkdirLock(str(tmp_path)).acquire()


class _SigtermDuringEval:
  """An eval loader that sends this process a SIGTERM as it hands out its first batch.

  `evaluate` polls `should_stop` before each batch, so the signal, landing while the first
  batch is evaluated, is seen at the poll before the second: the evaluation stops half-way,
  deterministically. Everything else is the wrapped loader's.
  """

  def __init__(self, loader):
    self._loader = loader
    self.signalled = False

  def __getattr__(self, name):
    return getattr(self._loader, name)

  def __iter__(self):
    for i, batch in enumerate(self._loader):
      if i == 0 and not self.signalled:
        # Without the loop's handler a SIGTERM would end pytest itself: refuse instead.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN), (
            "train_and_evaluate installed no SIGTERM handler")
        self.signalled = True
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch


def test_sigterm_during_final_eval_saves_and_restart_reevaluates(tiny, tmp_path, capsys):
  # In this process (the loader hook needs it), with the reference run's own config.
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  reference = tiny["root"] / "reference"
  config = config_lib.load_config(str(reference))
  assert config.eval_every == 0  # The only evaluation is the final one.
  workdir = tmp_path / "eval_preempted"
  eval_loader = _SigtermDuringEval(
      eval_lib.make_eval_loader(config, config.dataset, config.eval_split))
  assert eval_loader.num_batches >= 2  # Room to stop between two batches.
  result = loop.train_and_evaluate(config, str(workdir), eval_loader=eval_loader)
  assert eval_loader.signalled
  assert result["preempted"] and result["step"] == NUM_STEPS and result["eval"] is None
  assert f"Preempted at step {NUM_STEPS}" in capsys.readouterr().out
  assert NUM_STEPS in _complete_checkpoints(workdir)
  # Nothing of the stopped evaluation was written.
  assert not (workdir / "eval").exists()
  assert not (workdir / "figures").exists() or not os.listdir(workdir / "figures")
  with open(workdir / "metrics.jsonl") as f:
    assert not any(k.startswith("eval/") for l in f for k in json.loads(l))
  # The same config and workdir again: no training, the final step evaluated in full.
  result = loop.train_and_evaluate(config, str(workdir))
  assert "Resuming from the checkpoint of step" in capsys.readouterr().out
  assert not result["preempted"] and result["step"] == NUM_STEPS
  got = _results(workdir)
  assert got["losses"] == tiny["reference"]["losses"]
  strip = lambda e: {k: v for k, v in e.items() if k != "checkpoint"}
  assert strip(got["eval"]) == strip(tiny["reference"]["eval"])
  # One hourglass: its single stage-wise entry is the headline.
  assert [s["stage"] for s in got["eval"]["per_stage"]] == [1]
  assert got["eval"]["per_stage"][0]["mean"] == got["eval"]["mean"]
  assert strip(result["eval"]) == strip(tiny["reference"]["eval"])
  for name in ("synthetic_tiny_test_predictions.json",):
    with open(workdir / "eval" / name) as f, open(reference / "eval" / name) as g:
      assert json.load(f) == json.load(g)


def test_a_stopped_evaluation_writes_nothing(tiny, tmp_path):
  # experiments.evaluate polls its PreemptionFlag between batches (Ctrl-C, SIGTERM): a
  # stop raises Preempted before any file is written, and the entry point exits 130.
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "evaluated"
  shutil.copytree(tiny["root"] / "reference", workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  polls = []
  with pytest.raises(eval_lib.Preempted):
    eval_lib.evaluate_workdir(str(workdir), overrides={"decode": "taylor"},
                              should_stop=lambda: polls.append(1) or len(polls) > 1)
  assert len(polls) == 2  # One batch evaluated, stopped before the second.
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before
  assert not (workdir / "eval" / "synthetic_tiny_test_taylor.json").exists()
