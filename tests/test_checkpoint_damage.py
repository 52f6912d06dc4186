"""Damaged finished checkpoints (#24): detected on restore, set aside, the previous used.

Each case damages the newest of two checkpoints the way a disk or a careless user would
(a truncated or bit-flipped array file, a deleted state/ or state/_METADATA) and checks
that training resumes from the previous one, that the damaged folder is renamed
`<step>.damaged` with one line naming what is damaged, and that the predictor's restore
(`restore_variables`, behind `jhpe.load`) falls back or names the step to use.
"""

import glob
import json
import logging
import os
import shutil

import numpy as np
import pytest

from jhpe.train import checkpoint as ckpt
from jhpe.train import integrity


def _state(value):
  return {
      "step": np.asarray(int(value), np.int32),
      "params": {"w": np.arange(4096, dtype=np.float32) * value},
      "batch_stats": {"bn": {"mean": np.full((8,), value, np.float32)}},
      "opt_state": {"nu": {"w": np.linspace(0, 1, 4096, dtype=np.float32) * value}},
      "rng": np.array([0, 42], np.uint32),
  }


def _two_checkpoints(workdir):
  mngr = ckpt.make_manager(workdir, keep=3)
  for step in (10, 20):
    ckpt.save(mngr, step, _state(step))
  ckpt.write_manifests(mngr)
  mngr.close()
  return os.path.join(ckpt.checkpoint_dir(workdir), "20")


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)


def _flip_a_bit(step_dir):
  path = _largest_array_file(step_dir)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


DAMAGES = {
    "truncated": (_truncate, "reading it failed|does not match"),
    "bit_flip": (_flip_a_bit, "does not match its checksum"),
    "no_state": (lambda d: shutil.rmtree(os.path.join(d, "state")), "state/ folder is missing"),
    "no_metadata": (lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
                    "state/_METADATA is missing"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_used(tmp_path, kind,
                                                                       caplog):
  workdir = str(tmp_path)
  damage, why = DAMAGES[kind]
  damage(_two_checkpoints(workdir))
  mngr = ckpt.make_manager(workdir)
  with caplog.at_level(logging.WARNING):
    restored, step = ckpt.restore_newest_good(mngr, _state(0))
  mngr.close()
  assert step == 10
  np.testing.assert_array_equal(restored["params"]["w"], _state(10)["params"]["w"])
  root = ckpt.checkpoint_dir(workdir)
  assert sorted(os.listdir(root)) == ["10", "20.damaged"]
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(lines) == 1
  assert lines[0].startswith("checkpoint 20 is damaged (")
  assert "using step 10" in lines[0]
  import re
  assert re.search(why, lines[0]), lines[0]


def _rot_params(step_dir):
  """As if the bytes of params/w had rotted: its recorded checksum no longer matches."""
  manifest = os.path.join(step_dir, integrity.MANIFEST)
  table = json.load(open(manifest))
  table["params/w"] ^= 1
  json.dump(table, open(manifest, "w"))


@pytest.mark.parametrize("kind", ["params_rot", "no_state", "no_metadata"])
def test_load_falls_back_from_a_damaged_latest_and_names_a_step_otherwise(tmp_path, kind):
  workdir = str(tmp_path)
  (_rot_params if kind == "params_rot" else DAMAGES[kind][0])(_two_checkpoints(workdir))
  variables, step = ckpt.restore_variables(workdir, "latest")
  assert step == 10
  np.testing.assert_array_equal(variables["params"]["w"], _state(10)["params"]["w"])
  with pytest.raises(ckpt.CheckpointError,
                     match=r"checkpoint 20 .* is damaged .*--which=10"):
    ckpt.restore_variables(workdir, 20)
  # A reader never renames (the workdir may be read-only or in use).
  assert os.path.isdir(os.path.join(ckpt.checkpoint_dir(workdir), "20"))


def test_load_restores_params_and_batch_stats_only(tmp_path):
  """An optimiser state that fails its checksum stops a resume but not `jhpe.load`."""
  workdir = str(tmp_path)
  step_dir = _two_checkpoints(workdir)
  manifest = os.path.join(step_dir, integrity.MANIFEST)
  table = json.load(open(manifest))
  table["opt_state/nu/w"] ^= 1  # As if that array's bytes had rotted.
  json.dump(table, open(manifest, "w"))
  variables, step = ckpt.restore_variables(workdir, "latest")
  assert step == 20 and set(variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], 20.0)
  mngr = ckpt.make_manager(workdir)
  with pytest.raises(integrity.DamagedCheckpointError, match="opt_state/nu/w"):
    ckpt.restore(mngr, 20, _state(0))
  mngr.close()


class _Iterator:
  def set_state(self, state):
    raise AssertionError("must not be reached")


def test_missing_iterator_state_says_so(tmp_path):
  workdir = str(tmp_path)
  step_dir = _two_checkpoints(workdir)
  os.makedirs(os.path.join(step_dir, "data_iter"))
  open(os.path.join(step_dir, "data_iter", "process_0-of-2.json"), "w").write("{}")
  mngr = ckpt.make_manager(workdir)
  with pytest.raises(ckpt.CheckpointError) as e:
    ckpt.restore(mngr, 20, _state(0), _Iterator())
  mngr.close()
  message = str(e.value)
  assert "no data-iterator state for this process" in message
  assert "data_iter/process_0-of-1.json" in message and "another model" not in message


def test_manifest_keeps_the_orbax_only_recipe_working(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _two_checkpoints(str(tmp_path))
  mngr = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
  restored = mngr.restore(20, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  np.testing.assert_array_equal(restored.state["params"]["w"], _state(20)["params"]["w"])
  mngr.close()
