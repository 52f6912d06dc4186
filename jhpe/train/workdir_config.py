"""A workdir's config.json: saving it, reading it back, and whether a run may resume there.

A resumed run must be the same experiment: `check_resumable` names every changed setting
(old -> new) before anything is touched, except `RESUMABLE_CHANGES` (how long, how often,
where the data lives, evaluation-only settings) and model options added since the workdir
was written, at their defaults.
"""

import json
import os

from jhpe.train import config_checks
from jhpe.train.config import CONFIG_FILENAME
from jhpe.train.config import Config


def check_workdir(workdir: str) -> None:
  """Raises ValueError naming `workdir` unless it can be created and written."""
  if not workdir:
    raise ValueError("--workdir is required.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--workdir={workdir}: cannot create it ({e.strerror}).") from None
  if not os.access(workdir, os.W_OK | os.X_OK) or not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir}: not a writable directory.")


def save_config(config: Config, workdir: str) -> str:
  from jhpe import files  # pylint: disable=g-import-not-at-top
  return files.write_atomic(os.path.join(workdir, CONFIG_FILENAME), config.to_json() + "\n")


# Settings a resumed run may change: how long, how often to log / save / evaluate, where
# the data lives, how it is loaded. Any other change would splice two experiments into
# one set of checkpoints and metrics.
RESUMABLE_CHANGES = frozenset((
    "num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "async_checkpoints", "num_workers", "data_dir", "manual_dir", "eval_batch_size",
    "num_eval_examples", "nan_policy", "skip_bad_examples", "parallel",
    # Evaluation only: nothing trained depends on them (a typo here must be fixable).
    "eval_split", "test_scales", "flip_test", "decode"))


def check_resumable(config: Config, workdir: str) -> None:
  """Raises ValueError when `workdir` holds a run whose settings differ from `config`.

  Called before a run resumes from `workdir`'s checkpoint: the error names every changed
  flag (old -> new) and leaves the workdir untouched. Changes in RESUMABLE_CHANGES pass.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    return
  # Both through the same JSON (lists, not tuples); a foreign config.json is named.
  saved_config = load_config(workdir)
  saved = json.loads(saved_config.to_json())
  new = json.loads(config.to_json())
  if saved.get("model") == new["model"]:
    # A model option added since the workdir was written equals its absence at its default.
    from jhpe import models  # pylint: disable=g-import-not-at-top
    defaults = json.loads(json.dumps(models.model_defaults(new["model"]), default=str))
    saved["model_kwargs"] = {**defaults, **saved["model_kwargs"]}
    new["model_kwargs"] = {**defaults, **new["model_kwargs"]}
  changed = [f"--{k}: {saved[k]!r} -> {new[k]!r}" for k in sorted(new)
             if k not in RESUMABLE_CHANGES and saved.get(k) != new[k]]
  if changed:
    raise ValueError(
        f"--workdir={workdir} holds a checkpoint of a run with other settings "
        f"({'; '.join(changed)}); resume with the settings of its config.json, or "
        "train in a new --workdir.")
  if saved_config.num_train_steps != config.num_train_steps:
    config_checks.check_schedule_resume(saved_config, config, workdir)


def load_config(workdir: str) -> Config:
  """Reads `<workdir>/config.json` (written by the training loop)."""
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: {workdir} is not a jhpe training workdir.")
  try:
    with open(path, "rb") as f:
      return Config.from_json(f.read().decode("utf-8"), source=path)
  except (OSError, ValueError, TypeError, AttributeError) as e:
    if str(e).startswith(path):
      raise
    # A truncated, binary or hand-edited file: name it, not a JSON parser's position.
    raise ValueError(f"{path} is not a readable jhpe config ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:120] if str(e) else e!r}).") from None
