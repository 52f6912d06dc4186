"""Tests of launch.sh: sweeps, the GPU queue, local and multi-host commands, bad input.

The runs are a tiny fake experiment module (written to tmp_path) that records its flags,
its CUDA_VISIBLE_DEVICES and when it ran, so the queue is checked on what really happened
rather than on what launch.sh printed.
"""

import itertools
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = str(ROOT / "launch.sh")

# Records one run in WORKDIR/record.json. --hold=SECONDS keeps it alive that long;
# --wait_peer=1 waits (up to 30 s) until another run has started: with two free GPUs
# both runs see each other, while under a one-at-a-time launcher the first run would
# finish (after the timeout) without a peer; --fail=1 exits with status 3. With
# --validate_only it only checks its flags: any flag named bad* is unknown (exit 2);
# --metric=X writes config.json and a metrics.jsonl whose best PCKh@0.5 is X at step 10.
FAKE_EXPERIMENT = textwrap.dedent("""\
    import json, os, pathlib, signal, sys, time

    def main():
      start = time.time()
      flags = dict((arg[2:].split("=", 1) + ["true"])[:2] for arg in sys.argv[1:])
      if "validate_only" in flags:  # As the entry points: flags checked, nothing run.
        bad = [k for k in flags if k.startswith("bad")]
        if bad:
          print(f"error: Unknown command line flag '{bad[0]}' (see --helpfull)",
                file=sys.stderr)
          sys.exit(2)
        sys.exit(0)
      workdir = pathlib.Path(flags["workdir"])
      record = {"flags": flags, "argv": sys.argv[1:], "start": start,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "jax_platforms": os.environ.get("JAX_PLATFORMS"), "peers": 0}
      def on_term(signum, frame):
        (workdir / "terminated").touch()
        sys.exit(143)
      signal.signal(signal.SIGTERM, on_term)
      # Runs that have started, with their SIGTERM handler in place.
      running = workdir.parent / "running"
      running.mkdir(exist_ok=True)
      me = running / f"{workdir.name}.{os.getpid()}"
      me.touch()
      print("fake experiment running", flush=True)
      deadline = time.time() + 30
      while flags.get("wait_peer") == "1" and time.time() < deadline:
        record["peers"] = len(list(running.iterdir())) - 1
        if record["peers"] > 0:
          break
        time.sleep(0.02)
      time.sleep(float(flags.get("hold", "0")))
      record["end"] = time.time()
      (workdir / "record.json").write_text(json.dumps(record))
      if "metric" in flags:  # A run's files as the trainer writes them, any metric name.
        (workdir / "config.json").write_text(json.dumps({"num_train_steps": 10}))
        value = float(flags["metric"])
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in (
            {"step": 5, "loss": 1.0}, {"step": 5, "eval/PCKh@0.5": value / 2},
            {"step": 10, "loss": 0.5}, {"step": 10, "eval/PCKh@0.5": value,
                                        "eval/PCKh@0.5/stage1": 0.99})))
      if flags.get("fail") == "1":
        sys.exit(3)

    if __name__ == "__main__":
      main()
    """)


@pytest.fixture
def env(tmp_path):
  """Environment for launch.sh: the fake module importable, no GPUs visible."""
  package = tmp_path / "fakepkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "fake_experiment.py").write_text(FAKE_EXPERIMENT)
  # A nvidia-smi that finds no GPU, so that the machine's own GPUs do not leak in.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_script(bin_dir / "nvidia-smi", "#!/bin/sh\nexit 9\n")
  environ = dict(os.environ)
  environ.pop("CUDA_VISIBLE_DEVICES", None)
  for name in [n for n in environ if n.startswith("SLURM_")]:
    environ.pop(name)
  environ.update(
      PYTHON=sys.executable,
      PYTHONPATH=str(tmp_path),
      PATH=f"{bin_dir}{os.pathsep}{environ['PATH']}")
  return environ


@pytest.fixture
def flagfile(tmp_path):
  path = tmp_path / "base.flags"
  path.write_text("--model_size=tiny\n")
  return str(path)


def _write_script(path, text):
  path.write_text(text)
  path.chmod(0o755)


def _launch(args, env, timeout=60, check=True):
  result = subprocess.run(
      [LAUNCH, *args], env=env, capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _records(workroot):
  return {
      path.parent.name: json.loads(path.read_text())
      for path in pathlib.Path(workroot).glob("*/record.json")}


def _max_overlap(records):
  """Largest number of runs alive at one instant, from their [start, end] intervals."""
  events = sorted(
      [(r["start"], 1) for r in records] + [(r["end"], -1) for r in records],
      key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
  alive = peak = 0
  for _, delta in events:
    alive += delta
    peak = max(peak, alive)
  return peak


def test_sweep_dry_run_prints_the_cartesian_product(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "learning_rate=1e-3,2.5e-4", "--grid", "num_stacks=1,2,4",
       "--gpus", "0,1", "--dry_run", "--", "--seed=7"], env)
  lines = result.stdout.splitlines()
  assert len(lines) == 6
  grid = list(itertools.product(["1e-3", "2.5e-4"], ["1", "2", "4"]))
  for line, (lr, stacks), gpu in zip(lines, grid, itertools.cycle("01")):
    words = shlex.split(line)
    name = f"learning_rate={lr},num_stacks={stacks}"
    workdir = f"{workroot}/{name}"
    assert words[:2] == ["env", f"CUDA_VISIBLE_DEVICES={gpu}"]
    assert words[2:5] == [sys.executable, "-m", "fakepkg.fake_experiment"]
    # Grid values come last so that they override the flagfile and the extra flags.
    assert words[5:-3] == [
        f"--flagfile={flagfile}", f"--workdir={workdir}", "--seed=7",
        f"--learning_rate={lr}", f"--num_stacks={stacks}"]
    assert words[-3:] == [">", f"{workdir}/log.txt", "2>&1"]
  assert not workroot.exists(), "a dry run must not create anything"


def test_sweep_workdir_names_are_sanitised(env, flagfile, tmp_path):
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w"),
       "--grid", "dataset=lsp/train:90%", "--dry_run"], env)
  words = shlex.split(result.stdout)
  assert f"--workdir={tmp_path}/w/dataset=lsp_train_90_" in words
  assert "--dataset=lsp/train:90%" in words  # the flag value itself is untouched


def test_sweep_queue_runs_at_most_one_run_per_gpu(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "seed=0,1,2,3,4", "--gpus", "3,5", "--", "--hold=0.2"], env)
  records = _records(workroot)
  assert sorted(records) == [f"seed={i}" for i in range(5)]
  for name, record in records.items():
    assert record["flags"]["seed"] == name.split("=")[1]
    assert record["flags"]["workdir"] == str(workroot / name)
    assert record["cuda_visible_devices"] in ("3", "5")
    log = (workroot / name / "log.txt").read_text()
    assert "fake experiment running" in log
    assert log.startswith("# env CUDA_VISIBLE_DEVICES=")  # the command, then the output
  assert _max_overlap(records.values()) <= 2
  # Runs alive at the same time never share a GPU.
  for a, b in itertools.combinations(records.values(), 2):
    if a["start"] < b["end"] and b["start"] < a["end"]:
      assert a["cuda_visible_devices"] != b["cuda_visible_devices"]


def test_sweep_runs_in_parallel_on_free_gpus(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "seed=0,1", "--gpus", "0,1", "--", "--wait_peer=1"], env)
  records = _records(workroot)
  assert len(records) == 2
  assert all(r["peers"] == 1 for r in records.values())
  assert sorted(r["cuda_visible_devices"] for r in records.values()) == ["0", "1"]


def test_sweep_reports_failed_runs(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "fail=0,1"], env, check=False)
  assert result.returncode == 1
  assert f"{workroot}/fail=1" in result.stderr.splitlines()[-1]
  assert sorted(_records(workroot)) == ["fail=0", "fail=1"]  # the other run still ran


def test_bad_grid_flag_stops_the_sweep_before_any_run(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "seed=0,1", "--grid", "bad_learning_rat=1e-3"], env, check=False)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if "error" in l]
  assert len(errors) == 1
  assert "run 'seed=0,bad_learning_rat=1e-3'" in errors[0]
  assert "Unknown command line flag 'bad_learning_rat'" in errors[0]
  assert not workroot.exists()  # Nothing started, no workdir made.
  # --no_validate leaves the check to each run.
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "bad_x=1", "--no_validate"], env)
  assert list(_records(workroot)) == ["bad_x=1"]


def test_sweep_summary_lists_every_run(env, flagfile, tmp_path):
  workroot = tmp_path / "sweep"
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--grid", "metric=0.25,0.5", "--grid", "fail=0,1"], env, check=False)
  assert result.returncode == 1
  lines = result.stderr.split("[launch] sweep summary")[1].splitlines()
  header = lines[1].split()
  assert header[:3] == ["run", "status", "best"]
  rows = {l.split()[0]: l for l in lines[2:6]}
  assert sorted(rows) == sorted(f"metric={m},fail={f}" for m in ("0.25", "0.5")
                                for f in ("0", "1"))
  assert "done" in rows["metric=0.5,fail=0"]
  assert "PCKh@0.5 50.0%" in rows["metric=0.5,fail=0"]  # The best, not the stage's.
  assert "PCKh@0.5 25.0%" in rows["metric=0.25,fail=0"]
  assert "failed (exit 3)" in rows["metric=0.25,fail=1"]


def test_help_prints_the_header_documentation():
  result = subprocess.run([LAUNCH, "--help"], capture_output=True, text=True, timeout=30)
  assert result.returncode == 0
  assert "One run per point of the cartesian product" in result.stdout
  assert "--validate_only" in result.stdout and "#" not in result.stdout.split()[0]


@pytest.mark.parametrize("nvidia_smi, visible, expected", [
    ("GPU 0: H100 (UUID: a)\nGPU 1: H100 (UUID: b)\nGPU 2: H100 (UUID: c)", None,
     ["0", "1", "2"]),
    ("GPU 0: H100 (UUID: a)\nGPU 1: H100 (UUID: b)", "5,7", ["5", "7"]),
    (None, None, [None]),
])
def test_sweep_default_gpus(env, flagfile, tmp_path, nvidia_smi, visible, expected):
  if nvidia_smi is not None:
    _write_script(tmp_path / "bin" / "nvidia-smi", f"#!/bin/sh\necho '{nvidia_smi}'\n")
  if visible is not None:
    env["CUDA_VISIBLE_DEVICES"] = visible
  result = _launch(
      ["sweep", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w"),
       "--grid", "seed=0,1,2,3", "--dry_run"], env)
  gpus = []
  for line in result.stdout.splitlines():
    words = shlex.split(line)
    gpus.append(words[1].split("=")[1] if words[0] == "env" else None)
  assert gpus == [expected[i % len(expected)] for i in range(4)]


def test_sweep_without_grid_is_one_run(env, flagfile, tmp_path):
  _launch(["sweep", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w")], env)
  assert list(_records(tmp_path / "w")) == ["default"]


def test_sigterm_reaches_the_runs(env, flagfile, tmp_path):
  """A preempted launcher passes SIGTERM on, so that the trainer can checkpoint."""
  workroot = tmp_path / "w"
  process = subprocess.Popen(
      [LAUNCH, "sweep", "fakepkg.fake_experiment", flagfile, str(workroot),
       "--", "--hold=60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.time() + 30
    while not list((workroot / "running").glob("default.*")):
      assert time.time() < deadline and process.poll() is None, "the run never started"
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
  finally:
    if process.poll() is None:
      process.kill()
  assert (workroot / "default" / "terminated").exists()


def test_local_runs_once_and_logs(env, flagfile, tmp_path):
  workdir = tmp_path / "run"
  result = _launch(
      ["local", "fakepkg.fake_experiment", flagfile, str(workdir), "--", "--seed=3"], env)
  assert "fake experiment running" in result.stdout
  assert "fake experiment running" in (workdir / "log.txt").read_text()
  record = json.loads((workdir / "record.json").read_text())
  assert record["argv"] == [f"--flagfile={flagfile}", f"--workdir={workdir}", "--seed=3"]
  assert record["cuda_visible_devices"] is None  # every local GPU


def test_multihost_explicit_flags(env, flagfile, tmp_path):
  result = _launch(
      ["multihost", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w"),
       "--num_processes", "4", "--process_id", "3", "--coordinator", "host0:1234",
       "--dry_run"], env)
  assert shlex.split(result.stdout) == [
      sys.executable, "-m", "fakepkg.fake_experiment", f"--flagfile={flagfile}",
      f"--workdir={tmp_path}/w", "--coordinator_address=host0:1234",
      "--num_processes=4", "--process_id=3", "2>&1", "|", "tee", "-a",
      f"{tmp_path}/w/log.process3.txt"]


def test_multihost_runs_one_process(env, flagfile, tmp_path):
  workdir = tmp_path / "w"
  _launch(
      ["multihost", "fakepkg.fake_experiment", flagfile, str(workdir),
       "--num_processes", "2", "--process_id", "1", "--coordinator", "host0:1234"], env)
  record = json.loads((workdir / "record.json").read_text())
  assert record["argv"][-3:] == [
      "--coordinator_address=host0:1234", "--num_processes=2", "--process_id=1"]
  assert "fake experiment running" in (workdir / "log.process1.txt").read_text()


@pytest.mark.parametrize("nodelist, host", [
    ("gpu[017-020,031],login1", "gpu017"), ("node7,node9", "node7"), ("single", "single")])
def test_multihost_under_slurm(env, flagfile, tmp_path, nodelist, host):
  env.update(SLURM_JOB_ID="4100", SLURM_NTASKS="8", SLURM_PROCID="5",
             SLURM_JOB_NODELIST=nodelist)
  result = _launch(
      ["multihost", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w"),
       "--dry_run"], env)
  words = shlex.split(result.stdout)
  assert words[-5:] == ["2>&1", "|", "tee", "-a", f"{tmp_path}/w/log.process5.txt"]
  words = words[:-5]
  # The port jax.distributed's own SLURM detection would pick: 61440 + 4100 % 4096.
  assert words[-3:] == [
      f"--coordinator_address={host}:61444", "--num_processes=8", "--process_id=5"]


def test_multihost_local_test_starts_every_process(env, flagfile, tmp_path):
  # Inside a SLURM allocation too: --local_test ignores SLURM's process id and count.
  env.update(SLURM_JOB_ID="4100", SLURM_NTASKS="8", SLURM_PROCID="5",
             SLURM_JOB_NODELIST="gpu[017-020]")
  workdir = tmp_path / "w"
  _launch(
      ["multihost", "fakepkg.fake_experiment", flagfile, str(workdir),
       "--num_processes", "3", "--local_test", "--", "--hold=0"], env)
  # Every process writes the same record.json; the logs say each one ran.
  for i in range(3):
    assert "fake experiment running" in (workdir / f"log.process{i}.txt").read_text()
  record = json.loads((workdir / "record.json").read_text())
  assert record["flags"]["coordinator_address"].startswith("127.0.0.1:")
  assert record["flags"]["num_processes"] == "3"
  assert record["jax_platforms"] == "cpu"


def test_multihost_local_test_stops_the_others_when_one_fails(env, flagfile, tmp_path):
  # Process 0 fails at once (--fail=1 with no hold): the others would wait for it forever
  # in a real run; here they hold for 60 s unless the launcher stops them.
  fake = tmp_path / "fakepkg" / "fake_experiment.py"
  fake.write_text(FAKE_EXPERIMENT.replace(
      'time.sleep(float(flags.get("hold", "0")))',
      'time.sleep(0 if flags["process_id"] == "0" else 60)').replace(
          'flags.get("fail") == "1"', 'flags["process_id"] == "0"'))
  start = time.time()
  result = _launch(
      ["multihost", "fakepkg.fake_experiment", flagfile, str(tmp_path / "w"),
       "--num_processes", "2", "--local_test", "--", "--wait_peer=1"],
      env, check=False)
  assert result.returncode == 3
  assert "stopping the others" in result.stderr
  assert time.time() - start < 50
  assert (tmp_path / "w" / "terminated").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "x.y", "{flags}", "w"], "unknown subcommand 'train'"),
    ([], "missing subcommand"),
    (["sweep", "x.y", "{flags}"], "needs EXPERIMENT FLAGFILE WORKROOT"),
    (["sweep", "nosuchmodel", "{flags}", "w"], "unknown EXPERIMENT 'nosuchmodel'"),
    (["sweep", "x.y", "missing.flags", "w"], "FLAGFILE 'missing.flags' does not exist"),
    (["sweep", "x.y", "{flags}", "w", "--grid", "lr"], "bad --grid 'lr'"),
    (["sweep", "x.y", "{flags}", "w", "--grid", "lr=1,,2"], "bad --grid 'lr=1,,2'"),
    (["sweep", "x.y", "{flags}", "w", "--grid", "lr=1", "--grid", "lr=2"],
     "flag 'lr' is in two grids"),
    (["sweep", "x.y", "{flags}", "w", "--gpus", "0;1"], "bad --gpus '0;1'"),
    (["sweep", "x.y", "{flags}", "w", "--learning_rate=1"],
     "unknown option '--learning_rate'"),
    (["local", "x.y", "{flags}", "w", "--grid", "a=1"], "--grid is for sweep only"),
    (["multihost", "x.y", "{flags}", "w"], "--num_processes must be a positive integer"),
    (["multihost", "x.y", "{flags}", "w", "--num_processes", "2", "--process_id", "0"],
     "--coordinator must be HOST:PORT"),
    (["multihost", "x.y", "{flags}", "w", "--num_processes", "2", "--coordinator", "h:1",
      "--process_id", "2"], "--process_id must be an integer in [0, 2)"),
])
def test_bad_input(env, flagfile, tmp_path, args, message):
  args = [a.replace("{flags}", flagfile) for a in args]
  args = [str(tmp_path / "w") if a == "w" else a for a in args]
  result = _launch(args, env, check=False)
  assert result.returncode == 2
  first, *rest = result.stderr.splitlines()
  assert first.startswith("launch.sh: error: ") and message in first, first
  assert rest[0].startswith("usage: ./launch.sh sweep")
  assert not (tmp_path / "w").exists()
  assert not result.stdout
