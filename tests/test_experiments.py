"""The absl entry points: one clear line for bad flags, --summary, flagfiles parse."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("flags, expected", [
    (["--not_a_flag=1"], "not_a_flag"),
    (["--batch_size=abc"], "batch_size"),
    (["--optimizer=lamb"], "optimizer"),
    (["--num_stacks=0"], "--num_stacks=0"),
    (["--dataset=nope"], "--dataset='nope'"),
    (["--schedule=step"], "--decay_steps"),
])
def test_bad_flags_are_one_line(tmp_path, flags, expected):
  flagfile = tmp_path / "f.flags"
  # A flagfile with the flags (typos in flagfiles are the usual way to get them wrong).
  flagfile.write_text("\n".join(flags) + "\n")
  proc = _run("experiments.hourglass", f"--flagfile={flagfile}",
              f"--workdir={tmp_path / 'w'}")
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and errors[0].startswith("error:"), proc.stderr[-2000:]
  assert expected in errors[0]
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  proc = _run("experiments.cpm", "--dataset=synthetic/tiny", "--num_stages=1",
              f"--workdir={blocker / 'sub'}")
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(errors) == 1 and "--workdir=" in errors[0]


@pytest.mark.parametrize("module, flags", [
    ("experiments.hourglass", ["--num_stacks=1", "--num_features=16", "--depth=2",
                               "--input_size=64"]),
    ("experiments.deeppose", ["--backbone=resnet", "--width=0.25", "--input_size=64"]),
])
def test_summary_prints_one_json_line(module, flags):
  proc = _run(module, "--summary", "--dataset=lsp", *flags)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  info = json.loads(lines[0])
  assert info["model"] == module.split(".")[1] and info["input_size"] == 64
  assert info["params"] > 0 and info["flops_per_image"] > 0


def test_every_flagfile_parses_and_validates():
  """Each shipped flagfile names only known flags with allowed values (no training)."""
  from experiments import common  # pylint: disable=g-import-not-at-top
  del common
  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags"))):
    name = os.path.basename(path)
    module = ("experiments.cpm" if "cpm" in name else
              "experiments.deeppose" if "deeppose" in name else "experiments.hourglass")
    text = open(path).read()
    assert text.startswith("#"), f"{name}: say what it is at the top"
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from absl import flags; import %s as m; from experiments import "
         "common; flags.FLAGS(sys.argv); c = common.config_from_flags(%r, m.MODEL_FLAGS); "
         "c.validate(); print(c.to_json())"
         % (module, module.split(".")[1]), f"--flagfile={path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, f"{name}: {proc.stderr[-1500:]}"
