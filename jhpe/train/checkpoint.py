"""Checkpoints through orbax's CheckpointManager.

On-disk layout (orbax-checkpoint 0.12):

    <workdir>/checkpoints/
      <step>/                 one finished checkpoint per saved step, e.g. 1000/
        state/                orbax StandardSave (a PyTree of arrays) of the dict
                                {'step': int32 (),
                                 'params': the model's params,
                                 'batch_stats': BatchNorm statistics ({} if none),
                                 'opt_state': the optax state,
                                 'ema_params': EMA of params (only when --ema_decay > 0),
                                 'rng': uint32 (2,) base key}
        data_iter/            the grain iterator state, JSON, one file per process
                              (process_<i>-of-<n>.json)
        metrics/              the validation metrics of that step when evaluated
                              ({'pck': ...}; used to keep the best checkpoint)
        _CHECKPOINT_METADATA  written last, by orbax's commit
        CHECKSUMS.json        CRC-32 of every array, written once committed (integrity.py)
      <step>.orbax-checkpoint-tmp-<n>/   a save in progress (ignored on restore)
      <step>.incomplete/, <step>.damaged/  set aside: never restored

Restoring the parameters in research code with orbax alone:

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager('<workdir>/checkpoints')
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = restored.state['params']        # numpy arrays, the flax param tree
    variables = {'params': params, 'batch_stats': restored.state['batch_stats']}

Saves are asynchronous: orbax writes into a temporary folder and renames it to `<step>`
when every item is written (the commit), so a run killed during a save leaves only a
`*.orbax-checkpoint-tmp-*` folder that `latest_step` never returns; the previous
checkpoint stays intact. The manager keeps the `keep_checkpoints` latest checkpoints plus
the best one by validation PCK.
"""

import logging
import os
import re
import shutil
from typing import Any, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jhpe.train import integrity

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "pck"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used here (missing, or of another model/shape)."""



def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _best_metric(metrics: dict) -> float:
  return float(metrics[BEST_METRIC])


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `<workdir>/checkpoints` (items `state`, `data_iter`) keeping
  the `keep` latest checkpoints and the best one by `metrics['pck']`."""
  policy = ocm.AnyPreservationPolicy([
      ocm.LatestN(n=keep),
      ocm.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode="max", keep_checkpoints_without_metrics=False,
      preservation_policy=policy, enable_async_checkpointing=async_save,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
  handlers = {"state": ocp.StandardCheckpointHandler()}
  if not read_only:
    # Only training saves and resumes the data iterator; readers (the predictor, the
    # evaluation) restore `state` alone and need not import grain.
    import grain  # pylint: disable=g-import-not-at-top
    handlers["data_iter"] = grain.checkpoint.CheckpointHandler()
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=handlers,
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state_dict: dict,
         data_iter: Any = None, metrics: Optional[dict] = None, force: bool = True) -> bool:
  """Starts an (async) save of `state_dict` (and the data iterator state) at `step`."""
  write_manifests(manager)  # Waits for the previous save, as orbax's save does anyway.
  if jax.process_index() == 0:
    integrity.remember(str(manager.directory), int(step), state_dict)
  items = {"state": ocp.args.StandardSave(state_dict)}
  if data_iter is not None and hasattr(data_iter, "get_state"):
    import grain  # pylint: disable=g-import-not-at-top
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def write_manifests(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight, then writes the checksums of the committed steps."""
  manager.wait_until_finished()
  integrity.write_committed(str(manager.directory), COMMIT_MARKER)


def close(manager: ocp.CheckpointManager) -> None:
  """Waits for the last save, writes its checksums, and closes the manager."""
  write_manifests(manager)
  manager.close()


def _flatten(tree: Any) -> dict:
  # Orbax's metadata turns namedtuples (optax states) into dicts: compare by names only.
  return {"/".join(integrity.key_name(e) for e in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_shapes(path: str, saved: Any, target: Any) -> None:
  """Raises CheckpointError naming the first leaf whose shape differs."""
  saved_flat = _flatten(saved)
  target_flat = _flatten(target)
  missing = [k for k in target_flat if k not in saved_flat]
  extra = [k for k in saved_flat if k not in target_flat]
  if missing or extra:
    raise CheckpointError(
        f"checkpoint {path} does not fit this model/config: missing "
        f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
        f"{extra[:3]}{'...' if len(extra) > 3 else ''}.")
  for k, t in target_flat.items():
    s = saved_flat[k]
    if tuple(s.shape) != tuple(t.shape):
      raise CheckpointError(
          f"checkpoint {path} does not fit this model/config: "
          f"{k} has shape {tuple(s.shape)} in the checkpoint, "
          f"{tuple(t.shape)} in the model.")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state_dict: dict,
            data_iter: Any = None) -> dict:
  """Restores the state dict at `step` into the shapes of `abstract_state_dict`.

  Raises CheckpointError naming the path and the first mismatching array when the
  checkpoint is of another model or shape, or names the missing data-iterator file;
  integrity.DamagedCheckpointError (saying what) when its files are missing, truncated or
  do not match their checksums. Restores `data_iter` in place when given.
  """
  path = os.path.join(str(manager.directory), str(step))
  why = integrity.structure_damage(path)
  if why:
    raise integrity.DamagedCheckpointError(why)
  try:
    saved = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except
    raise integrity.DamagedCheckpointError(
        f"its metadata is unreadable: {str(e).splitlines()[0][:200]}") from None
  if saved is None:
    raise integrity.DamagedCheckpointError("its state/ metadata is missing")
  _check_shapes(path, saved, abstract_state_dict)
  items = {"state": ocp.args.StandardRestore(abstract_state_dict)}
  if data_iter is not None and hasattr(data_iter, "set_state"):
    import grain  # pylint: disable=g-import-not-at-top
    iter_dir = os.path.join(path, "data_iter")
    if os.path.isdir(iter_dir):
      own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      if not os.path.exists(os.path.join(iter_dir, own)):
        raise CheckpointError(
            f"checkpoint {path} has no data-iterator state for this process "
            f"(data_iter/{own}; it holds {sorted(os.listdir(iter_dir))}): it was saved "
            "by a run with another number of processes, or the file was removed. Resume "
            "with the process count that saved it, or train in a new --workdir.")
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))["state"]
  except Exception as e:  # pylint: disable=broad-except
    # The shapes fit (checked above): a failing read is a damaged file (TensorStore's
    # OUT_OF_RANGE for a truncated one, a decode error for a corrupt one...).
    raise integrity.DamagedCheckpointError(
        f"reading it failed: {str(e).splitlines()[0][:200]}") from None
  why = integrity.mismatch(path, restored)
  if why:
    raise integrity.DamagedCheckpointError(why)
  return restored


def restore_newest_good(manager: ocp.CheckpointManager, abstract_state_dict: dict,
                        data_iter: Any = None) -> tuple[Optional[dict], Optional[int]]:
  """Restores the newest finished checkpoint that is sound: (state dict, step).

  A damaged one is set aside as `<step>.damaged` (one warning line naming what is
  damaged and the step used instead) and the previous one tried; (None, None) when no
  sound checkpoint is left (the run starts over)."""
  steps = sorted(complete_steps(manager), reverse=True)
  for k, step in enumerate(steps):
    try:
      return restore(manager, step, abstract_state_dict, data_iter), step
    except integrity.DamagedCheckpointError as e:
      fallback = steps[k + 1] if k + 1 < len(steps) else None
      if jax.process_index() == 0:
        integrity.set_aside(os.path.join(str(manager.directory), str(step)), str(e),
                            fallback)
      manager.reload()
  return None, None


COMMIT_MARKER = "_CHECKPOINT_METADATA"  # Written by orbax when a step is finalised.


def complete_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The steps whose folder orbax finalised (a step folder missing its commit metadata,
  e.g. copied half-way or left by a filesystem without atomic renames, is not one)."""
  root = str(manager.directory)
  return sorted(s for s in manager.all_steps()
                if os.path.exists(os.path.join(root, str(s), COMMIT_MARKER)))


def latest_complete_step(manager: ocp.CheckpointManager) -> Optional[int]:
  steps = complete_steps(manager)
  return steps[-1] if steps else None


def quarantine_incomplete(workdir: str) -> list[str]:
  """Renames unfinished step folders to `<step>.incomplete` so that no run reads them and
  a new save of that step does not collide; returns the new paths."""
  root = checkpoint_dir(workdir)
  moved = []
  if not os.path.isdir(root):
    return moved
  for name in os.listdir(root):
    path = os.path.join(root, name)
    if name.isdigit() and os.path.isdir(path) and not os.path.exists(
        os.path.join(path, COMMIT_MARKER)):
      target = f"{path}.incomplete"
      shutil.rmtree(target, ignore_errors=True)
      os.rename(path, target)
      moved.append(target)
  return moved


def latest_step(workdir: str) -> Optional[int]:
  """The step of the latest finished checkpoint in `workdir`, or None.

  Reads the folder listing only: no CheckpointManager, whose constructor synchronises
  all processes of a multi-host run (a process-local question must not, or processes
  that look before and after the chief creates the folder disagree and deadlock).
  """
  root = checkpoint_dir(workdir)
  if not os.path.isdir(root):
    return None
  steps = [int(name) for name in os.listdir(root) if name.isdigit()
           and os.path.exists(os.path.join(root, name, COMMIT_MARKER))]
  return max(steps) if steps else None


def _resolve_step(mngr: ocp.CheckpointManager, workdir: str,
                  which: Union[str, int]) -> int:
  steps = complete_steps(mngr)
  if not steps:
    raise CheckpointError(f"no finished checkpoint in {checkpoint_dir(workdir)}.")
  if which == "latest":
    return steps[-1]
  if which == "best":
    best = mngr.best_step()  # The latest when no checkpoint has metrics.
    return best if best in steps else steps[-1]
  if isinstance(which, str) and re.fullmatch(r"\d+", which):
    which = int(which)
  if isinstance(which, (int, np.integer)):
    if int(which) not in steps:
      raise CheckpointError(f"no checkpoint of step {which} in {checkpoint_dir(workdir)}; "
                            f"available: {sorted(steps)}.")
    return int(which)
  raise CheckpointError(f"which={which!r}: expected 'latest', 'best' or a step number.")


def restore_variables(workdir: str, which: Union[str, int] = "latest",
                      use_ema: bool = True) -> tuple[dict, int]:
  """The model variables of a workdir's checkpoint, without building the optimiser.

  Args:
    workdir: a training workdir.
    which: 'latest', 'best' (highest validation PCK; the latest if none evaluated) or a
      step number.
    use_ema: return the EMA parameters when the checkpoint has them.

  Returns:
    ({'params': ..., 'batch_stats': ...} as numpy arrays, step).
  """
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise CheckpointError(f"{checkpoint_dir(workdir)} does not exist: no checkpoint in "
                          f"{workdir}.")
  mngr = make_manager(workdir, read_only=True, async_save=False)
  try:
    step = _resolve_step(mngr, workdir, which)
    older = [s for s in complete_steps(mngr) if s < step]
  finally:
    mngr.close()
  while True:
    try:
      variables = integrity.read_variables(
          os.path.join(checkpoint_dir(workdir), str(step)), use_ema)
      return variables, int(step)
    except integrity.DamagedCheckpointError as e:
      fallback = older.pop() if older else None
      if which not in ("latest", "best") or fallback is None:
        hint = f"; pass which={fallback} (--which={fallback})" if fallback else ""
        raise CheckpointError(f"checkpoint {step} in {checkpoint_dir(workdir)} is damaged "
                              f"({e}){hint}.") from None
      logging.warning("checkpoint %s is damaged (%s); using %s.", step, e, fallback)
      step = fallback


def check_variables(path: str, variables: dict, abstract_variables: dict) -> None:
  """Raises CheckpointError if `variables` do not fit `abstract_variables` (shapes)."""
  target = {"params": abstract_variables["params"],
            "batch_stats": abstract_variables.get("batch_stats", {})}
  _check_shapes(path, {"params": variables["params"],
                       "batch_stats": variables.get("batch_stats", {})}, target)


def load_model(workdir: str, which: Union[str, int] = "latest", overrides=None):
  """THE restore: a workdir's config, model and checkpointed variables, checked.

  `jhpe.load` (the predictor) and `experiments.evaluate` both restore through here.

  Args:
    workdir: a training workdir (config.json, checkpoints/) or a shipped model's folder.
    which: 'latest', 'best' or a step number.
    overrides: Config fields to replace (test-time settings: decode, flip_test, ...).

  Returns:
    (config, model, variables {'params', 'batch_stats'} as numpy, step).

  Raises:
    ValueError naming the path: no or a bad config.json. CheckpointError (a ValueError):
    no checkpoint, or one of another model or size (the message names the array).
  """
  from jhpe.models import summary  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(workdir)
  if overrides:
    config = config.replace(**overrides)
  model = config_lib.build_model(config)
  variables, step = restore_variables(workdir, which)
  check_variables(os.path.join(checkpoint_dir(workdir), str(step)), variables,
                  summary.abstract_variables(model, config.input_size))
  return config, model, variables, step
