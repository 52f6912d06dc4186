"""Checkpoint integrity: a checksum per saved array, verified after every restore.

Orbax notices a truncated array file only when it reads past its end, and a flipped bit
inside one not at all (the restored values are silently wrong); a step folder whose
`state/` or `state/_METADATA` was deleted fails deep inside it with a KeyError. So `save`
records the CRC-32 of every array it hands to orbax, and once orbax has committed the
step, process 0 writes them to `<step>/CHECKSUMS.json` ({'params/conv/kernel': crc, ...});
a restore compares what it read with them (`mismatch`), and `structure_damage` checks the
folder before anything is read. A step committed by a run that died before writing its
manifest has none: its structure is still checked, and orbax's own read errors still
count as damage.

A damaged step is renamed `<step>.damaged` (`set_aside`), as unfinished ones become
`<step>.incomplete`: no run reads it again, and a new save of that step does not collide.
"""

import logging
import os
import shutil
import zlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jhpe import files

MANIFEST = "CHECKSUMS.json"


class DamagedCheckpointError(ValueError):
  """A finished checkpoint whose files are missing, truncated or corrupt."""


def key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def array_checksums(tree: Any) -> dict:
  """{'params/conv/kernel': CRC-32 of the array's bytes} for every leaf of `tree`."""
  return {"/".join(key_name(e) for e in path):
          zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes())
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def write_manifest(step_dir: str, checksums: dict) -> str:
  return files.write_json(os.path.join(step_dir, MANIFEST), checksums, indent=None)


# Checksums of saves orbax has not committed yet: {checkpoint folder: {step: checksums}}.
_PENDING: dict = {}


def remember(root: str, step: int, state_dict: Any) -> None:
  """Records the checksums of a save starting now (written once orbax commits it)."""
  _PENDING.setdefault(root, {})[step] = array_checksums(state_dict)


def write_committed(root: str, commit_marker: str) -> None:
  """Writes the manifest of every remembered step of `root` that orbax has committed."""
  pending = _PENDING.get(root, {})
  for step in list(pending):
    step_dir = os.path.join(root, str(step))
    if os.path.exists(os.path.join(step_dir, commit_marker)):
      write_manifest(step_dir, pending.pop(step))
    elif not os.path.isdir(step_dir):
      pending.pop(step)  # Never committed, or already deleted by the keep policy.


def read_manifest(step_dir: str) -> Optional[dict]:
  """The step's recorded checksums; None when it has none (an unreadable one is damage)."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    table = files.read_json(path)
  except ValueError as e:
    raise DamagedCheckpointError(f"{MANIFEST} is unreadable ({e.__cause__})") from None
  if not isinstance(table, dict):
    raise DamagedCheckpointError(f"{MANIFEST} is not a table of checksums")
  return table


def structure_damage(step_dir: str) -> Optional[str]:
  """What is missing from a finished step folder (a short phrase), or None."""
  if not os.path.isdir(os.path.join(step_dir, "state")):
    return "its state/ folder is missing"
  if not os.path.exists(os.path.join(step_dir, "state", "_METADATA")):
    return "state/_METADATA is missing"
  return None


def mismatch(step_dir: str, restored: Any, prefix: str = "") -> Optional[str]:
  """The first restored array (under `prefix`) whose checksum differs from the manifest."""
  table = read_manifest(step_dir)
  if table is None:
    return None
  for name, crc in array_checksums(restored).items():
    key = f"{prefix}{name}"
    if key in table and table[key] != crc:
      return f"the array {key} does not match its checksum (bit rot?)"
  return None


def read_variables(step_dir: str, use_ema: bool) -> dict:
  """params (the EMA ones if asked and saved) and batch_stats of one step folder, read
  alone (a partial restore: a damaged optimiser state does not matter here)."""
  why = structure_damage(step_dir)
  if why:
    raise DamagedCheckpointError(why)
  state_dir = os.path.join(step_dir, "state")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    saved = checkpointer.metadata(state_dir).item_metadata.tree
    keys = ["params", "batch_stats"]
    if use_ema and saved.get("ema_params") is not None:
      keys[0] = "ema_params"
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                          {k: saved[k] for k in keys if k in saved})
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(
        f"reading it failed: {str(e).splitlines()[0][:200]}") from None
  why = mismatch(step_dir, restored)
  if why:
    raise DamagedCheckpointError(why)
  return {"params": restored[keys[0]], "batch_stats": restored.get("batch_stats", {})}


def set_aside(step_dir: str, why: str, fallback: Optional[int]) -> str:
  """Renames a damaged step folder to `<step>.damaged`; one warning line says so."""
  target = f"{step_dir}.damaged"
  shutil.rmtree(target, ignore_errors=True)
  os.rename(step_dir, target)
  using = f"using step {fallback}" if fallback is not None else "no earlier checkpoint"
  message = (f"checkpoint {os.path.basename(step_dir)} is damaged ({why}); set aside as "
             f"{target}; {using}.")
  logging.warning(message)
  return target
