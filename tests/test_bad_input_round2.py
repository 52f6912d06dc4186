"""Faults and bad input, round two (#24): refused up front in one line, or handled.

Each test names the case of the issue it covers; each failed on the code before it.
Subprocess runs only where the entry point's own handling is the subject.
"""

import errno
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jhpe import files
from jhpe.data import preflight
from jhpe.data import registry
from jhpe.data.builders import common as builders_common
from jhpe.train import checkpoint as ckpt
from jhpe.train import config as config_lib
from jhpe.train import evaluate as eval_lib
from jhpe.train import loop
from jhpe.train import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = config_lib.Config(
    model="hourglass", model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
    dataset="synthetic/tiny", input_size=32, batch_size=4, learning_rate=1e-3)


def _one_line(error):
  text = str(error)
  assert text and "\n" not in text, text
  return text


# -- 1. Evaluation settings and datasets, checked before training. --


def test_eval_split_typo_refused_before_training(tmp_path):
  config = TINY.replace(eval_split="tset", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  text = _one_line(e.value)
  assert "--eval_split='tset'" in text and "test" in text
  assert not os.path.exists(ckpt.checkpoint_dir(str(tmp_path / "run")))


def test_missing_eval_archive_refused_before_training(tmp_path):
  """lsp evaluation with an empty --manual_dir: one line naming the archive, the folder
  searched and where to get it, before a step is trained (the training set is fine)."""
  empty = tmp_path / "archives"
  empty.mkdir()
  config = TINY.replace(dataset="lsp", train_dataset="synthetic/tiny",
                        data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  text = _one_line(e.value)
  assert "'lsp_dataset.zip'" in text and str(empty) in text
  assert "sam.johnson.io" in text and "--manual_dir" in text
  assert not os.path.exists(ckpt.checkpoint_dir(str(tmp_path / "run")))


def test_no_data_folder_is_one_line_without_download(tmp_path, monkeypatch):
  """No --manual_dir and no ../shared/data: registry.prepare answers at once (it used to
  retry downloads for minutes, then chain five tracebacks)."""
  monkeypatch.setattr(registry, "default_manual_dir", lambda: None)
  start = time.monotonic()
  with pytest.raises(ValueError) as e:
    registry.prepare("lsp", str(tmp_path / "tfds"))
  assert time.monotonic() - start < 10
  text = _one_line(e.value)
  assert "'lsp_dataset.zip'" in text and "--manual_dir is unset" in text


def test_missing_mpii_annotations_named(tmp_path):
  (tmp_path / "images").mkdir()
  with pytest.raises(ValueError, match=r"'annot/train.json'.*" + str(tmp_path)):
    preflight.check_split("mpii", "train", data_dir=str(tmp_path / "tfds"),
                          manual_dir=str(tmp_path))


@pytest.mark.parametrize("scales", [(float("inf"),), (1.0, float("nan")), (0.0,), (1e6,)])
def test_test_scales_finite_and_positive(scales):
  with pytest.raises(ValueError) as e:
    TINY.replace(test_scales=scales).validate()
  assert _one_line(e.value).startswith("--test_scales=")


def _fake_run(workdir, config, step=10):
  """A workdir holding `config` and a (folder-only) finished checkpoint at `step`."""
  os.makedirs(os.path.join(ckpt.checkpoint_dir(workdir), str(step)))
  open(os.path.join(ckpt.checkpoint_dir(workdir), str(step), ckpt.COMMIT_MARKER),
       "w").close()
  config_lib.save_config(config, workdir)


def test_eval_only_settings_may_change_on_resume(tmp_path):
  _fake_run(str(tmp_path), TINY)
  config_lib.check_resumable(TINY.replace(eval_split="train", test_scales=(0.8, 1.0),
                                          flip_test=False, decode="taylor"), str(tmp_path))
  with pytest.raises(ValueError, match="--sigma"):
    config_lib.check_resumable(TINY.replace(sigma=2.0), str(tmp_path))


# -- 4. Float flags: finite and in range. --


@pytest.mark.parametrize("flag, value", [
    ("aug_rotation", float("nan")), ("aug_scale", 2.0), ("aug_scale", 1.0),
    ("sigma", float("inf")), ("weight_decay", float("nan")), ("grad_clip", float("nan")),
    ("learning_rate", float("inf")), ("momentum", 1.0), ("ema_decay", float("nan")),
    ("aug_color", -0.1), ("decay_factor", float("nan")), ("aug_translate", float("inf")),
])
def test_float_flags_finite_and_in_range(flag, value):
  with pytest.raises(ValueError) as e:
    TINY.replace(**{flag: value}).validate()
  assert _one_line(e.value).startswith(f"--{flag}=")


def test_nan_rotation_refused_by_the_entry_point_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.hourglass", "--dataset=synthetic/tiny",
       f"--workdir={tmp_path / 'run'}", "--aug_rotation=nan", "--num_train_steps=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith("error: --aug_rotation=nan")
  assert not (tmp_path / "run" / "checkpoints").exists()


# -- 4. Schedules: a new --num_train_steps on resume. --


def test_cosine_resume_with_new_step_count_refused_with_the_jump(tmp_path):
  old = TINY.replace(schedule="cosine", num_train_steps=100)
  _fake_run(str(tmp_path), old, step=50)
  with pytest.raises(ValueError) as e:
    config_lib.check_resumable(old.replace(num_train_steps=1000), str(tmp_path))
  text = _one_line(e.value)
  # cos schedule at 50/100 is 0.5e-3; at 50/1000 it is ~0.99e-3: the jump is named.
  assert "100 -> 1000" in text and "0.0005" in text and "--num_train_steps=100" in text


def test_step_schedule_resume_with_new_step_count_says_it_continues(tmp_path, caplog):
  old = TINY.replace(schedule="step", decay_steps=(30,), num_train_steps=100)
  _fake_run(str(tmp_path), old, step=50)
  with caplog.at_level(logging.WARNING):
    config_lib.check_resumable(old.replace(num_train_steps=200), str(tmp_path))
  assert any("does not depend on it" in r.getMessage() and "200" in r.getMessage()
             for r in caplog.records)


# -- 5. Files named in one line. --


@pytest.mark.parametrize("text", ["garbage{", "[1, 2]", "\udcff", '{"decay_steps": ["x"]}'])
def test_garbage_config_json_is_named(tmp_path, text):
  with open(tmp_path / "config.json", "w", errors="surrogateescape") as f:
    f.write(text)
  with pytest.raises(ValueError) as e:
    config_lib.load_config(str(tmp_path))
  assert _one_line(e.value).startswith(str(tmp_path / "config.json"))


def test_unwritable_eval_folder_refused_before_evaluating(tmp_path, monkeypatch):
  """A read-only workdir: one line suggesting --eval_dir, before the evaluation runs."""
  real_access = os.access
  ro = str(tmp_path / "ro")
  os.makedirs(ro)
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(ro)
                      else real_access(p, m))
  with pytest.raises(ValueError) as e:
    eval_lib.check_writable(ro)
  assert "--eval_dir" in _one_line(e.value)
  assert not os.path.exists(os.path.join(ro, "eval"))
  eval_lib.check_writable(str(tmp_path / "elsewhere"))  # Creatable: fine.


def test_overlay_of_a_1x5000_image_is_bounded(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jhpe import skeletons, viz  # pylint: disable=g-import-not-at-top
  joints = np.stack([np.linspace(0, 4999, 14), np.zeros(14)], -1)
  path = str(tmp_path / "wide.png")
  viz.plot_skeleton(np.zeros((1, 5000, 3), np.uint8), joints, skeletons.LSP,
                    title="wide", path=path).clear()
  with Image.open(path) as img:
    assert max(img.size) <= 4100  # 40 inches at 100 dpi (was 2,000,000 x 400 px).


def test_output_that_is_a_file_is_one_line_before_loading(tmp_path):
  target = tmp_path / "out.txt"
  target.write_text("mine")
  image = tmp_path / "x.png"
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  proc = subprocess.run(
      [sys.executable, "-m", "jhpe.predict", f"--workdir={tmp_path / 'nowhere'}",
       f"--output={target}", str(image)], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  last = proc.stderr.strip().splitlines()[-1]
  # The output is checked first: not the missing workdir's error.
  assert proc.returncode != 0 and "is a file, not a folder" in last, proc.stderr
  assert target.read_text() == "mine"


# -- 6. No write through a link planted in the workdir; annotation names confined. --


def test_lock_symlink_is_refused_and_the_victim_kept(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(victim, workdir / runtime.LOCK_FILENAME)
  with pytest.raises(ValueError, match="is a symbolic link"):
    runtime.WorkdirLock(str(workdir)).acquire()
  assert victim.read_text() == "precious"


def test_metrics_symlink_is_refused_and_the_victim_kept(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  os.symlink(victim, tmp_path / runtime.METRICS_FILENAME)
  writer = runtime.MetricWriter(str(tmp_path))
  with pytest.raises(ValueError, match="is a symbolic link"):
    writer.write(1, {"loss": 1.0})
  writer.close()
  assert victim.read_text() == "precious"


def test_atomic_writes_replace_a_link_not_its_target(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  os.symlink(victim, tmp_path / "config.json")
  files.write_atomic(str(tmp_path / "config.json"), "{}")
  assert victim.read_text() == "precious"
  assert not os.path.islink(tmp_path / "config.json")


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg",
                                  "..\\x.jpg", "C:\\x.jpg", ""])
def test_annotation_image_names_confined_to_their_folder(name):
  with pytest.raises(builders_common.BadExampleError) as e:
    builders_common.confined_name(name, "train.json index 3")
  assert _one_line(e.value).startswith("train.json index 3: image name")
  assert builders_common.confined_name("sub/000001.jpg", "w") == "sub/000001.jpg"


def test_mpii_build_refuses_an_escaping_image_name(tmp_path):
  import scipy.io  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  (manual / "images").mkdir(parents=True)
  (manual / "annot").mkdir()
  (tmp_path / "secret.jpg").write_bytes(b"not yours")
  entry = dict(image="../../secret.jpg", center=[60., 50.], scale=0.4,
               joints=(np.ones((16, 2)) * 20).tolist(), joints_vis=[1] * 16)
  (manual / "annot" / "train.json").write_text(json.dumps([entry]))
  (manual / "annot" / "valid.json").write_text(json.dumps([entry]))
  scipy.io.savemat(manual / "annot" / "gt_valid.mat",
                   {"headboxes_src": np.zeros((2, 2, 1)), "jnt_missing": np.zeros((16, 1))})
  with pytest.raises(builders_common.BadExampleError, match=r"'\.\./\.\./secret\.jpg'"):
    registry.prepare("mpii", str(tmp_path / "tfds"), str(manual))
