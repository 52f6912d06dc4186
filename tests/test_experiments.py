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


# Every Config field's flag, generated from the field: its default parses back to the
# field's default, its help and choices are the field's. Then the evaluation's overrides.
_GENERATED_FLAGS = """
from absl import flags
from experiments import common, hourglass
from jhpe.train import config as config_lib
F = flags.FLAGS
F(["x"])
assert common.config_from_flags("hourglass", ()) == config_lib.Config(), "defaults"
for field in config_lib.flag_fields():
  # absl puts an enum's values before its help: "<a|b>: help".
  assert F[field.name].help.endswith(field.metadata["help"]), field.name
  choices = field.metadata.get("choices")
  assert getattr(F[field.name].parser, "enum_values", None) == (
      list(choices) if choices else None), field.name
F(["x", "--decay_steps=10,20", "--test_scales=0.5,1"])
config = common.config_from_flags("hourglass", ())
assert (config.decay_steps, config.test_scales) == ((10, 20), (0.5, 1.0)), config
"""

_OVERRIDE_FLAGS = """
from absl import flags
from experiments import common, evaluate
flags.FLAGS(["x"])
assert common.override_values(evaluate._OVERRIDES) == {}
flags.FLAGS(["x", "--decode=taylor", "--noflip_test", "--test_scales=0.5,1"])
assert common.override_values(evaluate._OVERRIDES) == dict(
    decode="taylor", flip_test=False, test_scales=(0.5, 1.0))
"""


@pytest.mark.parametrize("script", [_GENERATED_FLAGS, _OVERRIDE_FLAGS])
def test_flags_are_generated_from_the_config_fields(script):
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]


# -- experiments.evaluate: a workdir's checkpoint on any split. --


@pytest.fixture(scope="module")
def eval_workdir(tmp_path_factory):
  """A workdir with config.json and one checkpoint (step 2) of a tiny hourglass.

  The weights are the initial ones: the entry point is under test here, not training
  (tests/test_train_loop.py trains), so no training run is paid for.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe.train import checkpoint  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import state as state_lib  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("evaluate")
  workdir = str(root / "run")
  config = config_lib.Config(
      model="hourglass", model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
      dataset="synthetic/tiny", data_dir=str(root / "tfds"), input_size=32, batch_size=8,
      eval_batch_size=8, flip_test=False).validate()
  os.makedirs(workdir)
  config_lib.save_config(config, workdir)
  state = state_lib.create_train_state(jax.random.PRNGKey(0),
                                       config_lib.build_model(config), config)
  manager = checkpoint.make_manager(workdir, async_save=False)
  checkpoint.save(manager, 2, state.to_dict())
  checkpoint.close(manager)
  return workdir


def test_evaluate_writes_the_eval_files_and_prints_the_table(eval_workdir):
  proc = _run("experiments.evaluate", f"--workdir={eval_workdir}", "--which=latest",
              "--split=test", "--num_examples=8", "--nofigures")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(eval_workdir, "eval", "synthetic_tiny_test.json")) as f:
    results = json.load(f)
  assert results["dataset"] == "synthetic/tiny" and results["split"] == "test"
  assert results["step"] == 2 and results["checkpoint"].endswith(os.path.join(
      "checkpoints", "2"))
  assert results["num_examples"] == 8 and "head_top" in results["per_joint"]
  with open(os.path.join(eval_workdir, "eval",
                         "synthetic_tiny_test_predictions.json")) as f:
    predictions = json.load(f)
  assert len(predictions) == 8
  assert all(len(p["joints"]) == 14 and len(p["confidence"]) == 14 for p in predictions)
  assert "PCK@0.2 on synthetic/tiny test (8 people, step 2)" in proc.stdout
  assert "head_top" in proc.stdout


def test_evaluate_variant_goes_to_its_own_files(eval_workdir):
  # The run's own evaluation (quarter decoding, no flip test) must survive a variant.
  own = os.path.join(eval_workdir, "eval", "synthetic_tiny_test.json")
  proc = _run("experiments.evaluate", f"--workdir={eval_workdir}", "--split=test",
              "--num_examples=8", "--nofigures")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(own, "rb") as f:
    before = f.read()
  proc = _run("experiments.evaluate", f"--workdir={eval_workdir}", "--split=test",
              "--num_examples=8", "--nofigures", "--decode=taylor", "--flip_test",
              "--test_scales=0.75,1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(own, "rb") as f:
    assert f.read() == before
  variant = os.path.join(eval_workdir, "eval",
                         "synthetic_tiny_test_taylor_flip_scales0.75-1.json")
  with open(variant) as f:
    results = json.load(f)
  assert results["decode"] == "taylor" and results["flip_test"] is True
  assert results["test_scales"] == [0.75, 1.0]
  assert results["variant"] == "_taylor_flip_scales0.75-1"
  assert os.path.exists(variant.replace(".json", "_predictions.json"))


@pytest.mark.parametrize("flags, expected", [
    (["--dataset=mpii"], "skeleton 'mpii'"),
    (["--dataset=nope"], "'nope'"),
    (["--split=nope"], "'nope'"),
    (["--which=7"], "no checkpoint of step 7"),
    (["--which=newest"], "--which='newest'"),
])
def test_evaluate_bad_input_is_one_line_and_keeps_the_files(eval_workdir, flags,
                                                             expected):
  # The eval files of an earlier evaluation must survive a failed one.
  eval_dir = os.path.join(eval_workdir, "eval")
  os.makedirs(eval_dir, exist_ok=True)
  marker = os.path.join(eval_dir, "synthetic_tiny_test.json")
  if not os.path.exists(marker):
    with open(marker, "w") as f:
      f.write("{}")
  before = {n: open(os.path.join(eval_dir, n), "rb").read() for n in os.listdir(eval_dir)}
  proc = _run("experiments.evaluate", f"--workdir={eval_workdir}", *flags)
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and errors[0].startswith("error:"), proc.stderr[-2000:]
  assert expected in errors[0]
  after = {n: open(os.path.join(eval_dir, n), "rb").read() for n in os.listdir(eval_dir)}
  assert after == before


def test_evaluate_without_a_checkpoint_is_one_line(tmp_path, eval_workdir):
  workdir = tmp_path / "no_checkpoint"
  workdir.mkdir()
  with open(os.path.join(eval_workdir, "config.json")) as f:
    (workdir / "config.json").write_text(f.read())
  proc = _run("experiments.evaluate", f"--workdir={workdir}")
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert "no checkpoint" in errors[0] and str(workdir) in errors[0]
  assert not (workdir / "eval").exists()


def test_evaluate_writes_to_eval_dir(tmp_path, eval_workdir):
  """An unwritable workdir (here its eval/ is a file; as root, chmod would not stop a
  write) is one line suggesting --eval_dir, before evaluating; with it the files go there."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(eval_workdir, workdir, ignore=shutil.ignore_patterns("eval", "figures"))
  (workdir / "eval").write_text("not a folder")
  proc = _run("experiments.evaluate", f"--workdir={workdir}", "--split=test",
              "--num_examples=8", "--nofigures")
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert "--eval_dir" in errors[0] and str(workdir / "eval") in errors[0]
  out = tmp_path / "out"
  proc = _run("experiments.evaluate", f"--workdir={workdir}", "--split=test",
              "--num_examples=8", "--nofigures", f"--eval_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "eval" / "synthetic_tiny_test.json") as f:
    assert json.load(f)["num_examples"] == 8
  assert (workdir / "eval").read_text() == "not a folder"
