"""Orbax checkpoints: round trip, best/latest, mismatches, interrupted writes."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jhpe.train import checkpoint as ckpt


def _state(value=1.0, joints=14):
  """A small state dict of the TrainState.to_dict() layout."""
  return {
      "step": np.int32(0),
      "params": {"conv": {"kernel": np.full((3, 3, 3, 8), value, np.float32)},
                 "out": {"bias": np.full((joints,), value, np.float32)}},
      "batch_stats": {"bn": {"mean": np.zeros((8,), np.float32)}},
      "opt_state": {"nu": {"conv": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}},
      "rng": np.array([0, 42], np.uint32),
  }


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                      state)


def test_round_trip_latest_and_best(tmp_path):
  workdir = str(tmp_path)
  mngr = ckpt.make_manager(workdir, keep=1)
  ckpt.save(mngr, 10, _state(1.0), metrics={"pck": 0.9})
  ckpt.save(mngr, 20, _state(2.0), metrics={"pck": 0.5})
  ckpt.save(mngr, 30, _state(3.0))
  mngr.wait_until_finished()
  # keep=1 latest, plus the best by PCK (step 10); step 20 is gone.
  assert sorted(mngr.all_steps()) == [10, 30]
  restored = ckpt.restore(mngr, 30, _abstract(_state()))
  np.testing.assert_array_equal(restored["params"]["out"]["bias"], np.full((14,), 3.0))
  mngr.close()
  assert ckpt.latest_step(workdir) == 30
  variables, step = ckpt.restore_variables(workdir, "best")
  assert step == 10
  np.testing.assert_array_equal(variables["params"]["conv"]["kernel"], 1.0)
  assert set(variables) == {"params", "batch_stats"}
  assert ckpt.restore_variables(workdir, 30)[1] == 30
  with pytest.raises(ckpt.CheckpointError, match="available: \\[10, 30\\]"):
    ckpt.restore_variables(workdir, 20)


def test_research_code_restores_with_orbax_alone(tmp_path):
  """The module docstring's recipe works as written."""
  mngr = ckpt.make_manager(str(tmp_path), keep=2)
  ckpt.save(mngr, 5, _state(7.0))
  mngr.close()
  mngr = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  np.testing.assert_array_equal(restored.state["params"]["out"]["bias"], 7.0)


def test_checkpoint_of_another_model_is_one_clear_error(tmp_path):
  mngr = ckpt.make_manager(str(tmp_path))
  ckpt.save(mngr, 1, _state(joints=16))
  mngr.wait_until_finished()
  with pytest.raises(ckpt.CheckpointError) as e:
    ckpt.restore(mngr, 1, _abstract(_state(joints=14)))
  message = str(e.value)
  assert str(tmp_path / "checkpoints" / "1") in message
  assert "params/out/bias" in message and "(16,)" in message and "(14,)" in message
  mngr.close()


def test_missing_checkpoint_names_the_path(tmp_path):
  with pytest.raises(ckpt.CheckpointError, match=str(tmp_path)):
    ckpt.restore_variables(str(tmp_path))


def test_interrupted_write_is_never_picked_up(tmp_path):
  """A save killed half-way leaves orbax's tmp folder; the previous one stays in use."""
  workdir = str(tmp_path)
  mngr = ckpt.make_manager(workdir)
  ckpt.save(mngr, 4, _state(4.0))
  ckpt.save(mngr, 8, _state(8.0))
  mngr.wait_until_finished()
  mngr.close()
  root = tmp_path / "checkpoints"
  # What a kill during the save of step 12 leaves behind: a temporary folder with a part
  # of the arrays and no commit, and (a harsher case) a step folder with its commit
  # metadata missing.
  shutil.copytree(root / "8", root / "12.orbax-checkpoint-tmp-1234567")
  os.remove(root / "12.orbax-checkpoint-tmp-1234567" / "_CHECKPOINT_METADATA")
  shutil.copytree(root / "8", root / "16")
  os.remove(root / "16" / "_CHECKPOINT_METADATA")
  shutil.rmtree(root / "16" / "state" / "d")
  assert ckpt.latest_step(workdir) == 8
  variables, step = ckpt.restore_variables(workdir)
  assert step == 8
  np.testing.assert_array_equal(variables["params"]["out"]["bias"], 8.0)
  # The training loop sets the unfinished step aside; its manager cleans the temporary
  # folder up and saves past both.
  assert ckpt.quarantine_incomplete(workdir) == [str(root / "16") + ".incomplete"]
  mngr = ckpt.make_manager(workdir)
  assert mngr.latest_step() == 8
  ckpt.save(mngr, 12, _state(12.0))
  mngr.wait_until_finished()
  assert ckpt.restore(mngr, 12, _abstract(_state()))["params"]["out"]["bias"][0] == 12.0
  ckpt.save(mngr, 16, _state(16.0))
  mngr.wait_until_finished()
  assert ckpt.latest_complete_step(mngr) == 16
  assert not os.path.exists(root / "12.orbax-checkpoint-tmp-1234567")
  mngr.close()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  """A write that fails (disk full) raises; the last complete checkpoint stays usable."""
  workdir = str(tmp_path)
  mngr = ckpt.make_manager(workdir, async_save=False)
  ckpt.save(mngr, 1, _state(1.0))

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", disk_full)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "save", disk_full)
  with pytest.raises(OSError, match="No space left"):
    ckpt.save(mngr, 2, _state(2.0))
  monkeypatch.undo()
  mngr.close()
  assert ckpt.latest_step(workdir) == 1
  variables, _ = ckpt.restore_variables(workdir)
  np.testing.assert_array_equal(variables["params"]["out"]["bias"], 1.0)
