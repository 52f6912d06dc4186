"""The experiment configuration: one frozen dataclass holding every flag.

A `Config` is built by `experiments/common.py` from absl flags, written to
`<workdir>/config.json` by the training loop and read back by `load_config(workdir)` (the
predictor, the evaluation entry point and a resumed run all rebuild the model from it).

`Config.validate()` checks every value that would otherwise fail deep inside JAX, minutes
into a run, and raises a ValueError of one line naming the flag and what is allowed.
"""

import dataclasses
import json
import os
from typing import Any, Optional

CONFIG_FILENAME = "config.json"

MODELS = ("hourglass", "cpm", "deeppose")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")
DECODE_METHODS = ("quarter", "taylor", "argmax")
DTYPES = ("float32", "bfloat16")
NAN_POLICIES = ("stop", "skip")
PARALLEL = ("pmap", "shard_map")
REGRESSION_LOSSES = ("l2", "l1", "smooth_l1")
# Model kwargs that count repeated blocks: zero or negative makes no model.
_COUNT_KWARGS = ("num_stacks", "num_stages", "depth", "num_modules", "num_features",
                 "num_blocks")


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a training or evaluation run (the absl flags, one to one).

  Attributes are grouped as the flags are; `model_kwargs` holds the family's own
  hyper-parameters (e.g. `num_stacks` for the hourglass), passed to
  `jhpe.models.get_model(model, **model_kwargs)`.
  """
  # Model.
  model: str = "hourglass"
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  # BatchNorm statistics over the whole global batch (cross-device) instead of per device.
  sync_batch_norm: bool = False
  dtype: str = "float32"
  # Data.
  dataset: str = "synthetic"  # The evaluation dataset.
  train_dataset: str = ""  # '' = `dataset`; several joined by '+', e.g. 'lsp+lspet'.
  train_split: str = "train"
  eval_split: str = "test"
  data_dir: str = ""  # TFDS data dir; '' = TFDS default.
  manual_dir: str = ""  # Where the official archives are.
  input_size: int = 256
  batch_size: int = 16  # Global, over all devices and hosts.
  eval_batch_size: int = 0  # 0 = batch_size.
  num_eval_examples: int = 0  # 0 = the whole split.
  num_workers: int = 0  # grain worker processes; 0 = in the main process.
  skip_bad_examples: bool = False
  # Augmentation (device side; see jhpe.data.augment).
  aug_rotation: float = 30.0  # Degrees, uniform in +-.
  aug_scale: float = 0.25  # Scale in 1 +- this.
  aug_translate: float = 0.0  # Fraction of the canvas.
  aug_flip: bool = True
  aug_color: float = 0.2  # Multiplicative colour jitter per channel, 1 +- this.
  # Targets, decoding and evaluation.
  sigma: float = 1.0  # Gaussian std in heatmap pixels.
  regression_loss: str = "l2"
  # Loss on every stage's output (the papers' intermediate supervision); False trains on the
  # last stage's loss alone (the ablation both the hourglass and the CPM papers discuss).
  intermediate_supervision: bool = True
  decode: str = "quarter"
  flip_test: bool = True
  # Multi-scale testing (the CPM benchmark's scale search): each stage's heatmaps averaged
  # over the canvas resized by every factor; (1.0,) = the canvas as is. Heatmap models only.
  test_scales: tuple = (1.0,)
  # Optimisation.
  optimizer: str = "rmsprop"
  learning_rate: float = 2.5e-4
  momentum: float = 0.9  # SGD.
  schedule: str = "constant"
  warmup_steps: int = 0
  decay_steps: tuple = ()  # 'step': the steps at which the rate is multiplied by decay_factor.
  decay_factor: float = 0.1
  grad_clip: float = 0.0  # Global-norm clipping; 0 = off.
  weight_decay: float = 0.0
  ema_decay: float = 0.0  # 0 = no EMA of the parameters.
  num_train_steps: int = 1000
  # Bookkeeping.
  log_every: int = 50
  eval_every: int = 0  # 0 = only at the end.
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  seed: int = 0
  nan_policy: str = "stop"
  parallel: str = "pmap"

  # -- Derived values. --

  @property
  def train_datasets(self) -> tuple:
    return tuple((self.train_dataset or self.dataset).split("+"))

  @property
  def global_eval_batch_size(self) -> int:
    return self.eval_batch_size or self.batch_size

  # -- Serialisation. --

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, source: str = "config") -> "Config":
    """Parses `to_json` output; unknown keys are an error naming them and `source`."""
    data = json.loads(text)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
      raise ValueError(f"{source}: unknown config keys {unknown}; known: {sorted(names)}.")
    if "decay_steps" in data:
      data["decay_steps"] = tuple(int(s) for s in data["decay_steps"])
    if "test_scales" in data:
      data["test_scales"] = tuple(float(s) for s in data["test_scales"])
    return cls(**data)

  def replace(self, **kwargs) -> "Config":
    return dataclasses.replace(self, **kwargs)

  # -- Validation. --

  def validate(self, num_devices: Optional[int] = None,
               num_processes: int = 1) -> "Config":
    """Raises ValueError (one line, naming the flag) on any value that cannot work.

    Args:
      num_devices: the global device count the batch is split over (None: not checked).
      num_processes: hosts; each loads `batch_size / num_processes` examples.

    Returns:
      self, for chaining.
    """
    def allowed(flag, value, choices):
      if value not in choices:
        raise ValueError(f"--{flag}={value!r} is not allowed; choose one of "
                         f"{', '.join(map(str, choices))}.")

    def positive(flag, value, zero_ok=False):
      if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
        raise ValueError(f"--{flag}={value!r}: expected an integer >= "
                         f"{0 if zero_ok else 1}.")

    allowed("model", self.model, MODELS)
    allowed("dtype", self.dtype, DTYPES)
    _check_dataset("dataset", self.dataset)
    for name in self.train_datasets:
      _check_dataset("train_dataset", name)
    allowed("optimizer", self.optimizer, OPTIMIZERS)
    allowed("schedule", self.schedule, SCHEDULES)
    allowed("decode", self.decode, DECODE_METHODS)
    allowed("nan_policy", self.nan_policy, NAN_POLICIES)
    allowed("parallel", self.parallel, PARALLEL)
    allowed("regression_loss", self.regression_loss, REGRESSION_LOSSES)
    for flag in ("input_size", "batch_size", "num_train_steps", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
      positive(flag, getattr(self, flag))
    for flag in ("eval_batch_size", "num_eval_examples", "eval_every", "warmup_steps",
                 "num_workers"):
      positive(flag, getattr(self, flag), zero_ok=True)
    for key in _COUNT_KWARGS:
      if key in self.model_kwargs:
        positive(key, self.model_kwargs[key])
    if not self.learning_rate > 0:
      raise ValueError(f"--learning_rate={self.learning_rate!r}: expected > 0.")
    if not self.sigma > 0:
      raise ValueError(f"--sigma={self.sigma!r}: expected > 0 (heatmap pixels).")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"--ema_decay={self.ema_decay!r}: expected 0 (off) or in (0, 1).")
    if self.grad_clip < 0 or self.weight_decay < 0:
      raise ValueError("--grad_clip and --weight_decay must be >= 0 (0 = off).")
    if self.schedule == "step" and not self.decay_steps:
      raise ValueError("--schedule=step needs --decay_steps (a comma-separated list of steps).")
    if self.warmup_steps >= self.num_train_steps and self.warmup_steps:
      raise ValueError(f"--warmup_steps={self.warmup_steps} must be < --num_train_steps="
                       f"{self.num_train_steps}.")
    if num_devices is not None:
      for flag, value in (("batch_size", self.batch_size),
                          ("eval_batch_size", self.global_eval_batch_size)):
        if value % num_devices:
          raise ValueError(f"--{flag}={value} is not divisible by the {num_devices} "
                           f"devices; use a multiple of {num_devices}.")
    if num_processes > 1 and self.batch_size % num_processes:
      raise ValueError(f"--batch_size={self.batch_size} is not divisible by the "
                       f"{num_processes} processes.")
    scales_flag = f"--test_scales={','.join(map(str, self.test_scales))}"
    if not self.test_scales or not all(s > 0 for s in self.test_scales):
      raise ValueError(f"{scales_flag}: expected factors > 0 (1.0 = the canvas as is).")
    # The model's own checks (unknown size, zero stacks, stride vs input size).
    model = build_model(self)
    if tuple(self.test_scales) != (1.0,) and model.output_kind != "heatmap":
      raise ValueError(f"{scales_flag}: multi-scale testing averages heatmaps; "
                       f"--model={self.model} regresses coordinates (use --test_scales=1.0).")
    return self


def _check_dataset(flag, name):
  from jhpe.data import registry  # pylint: disable=g-import-not-at-top
  try:
    registry.split_name(name)
  except ValueError as e:
    raise ValueError(f"--{flag}={name!r}: {e}") from None


def skeleton_of(config: Config):
  """The `jhpe.skeletons.Skeleton` of the evaluation dataset."""
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  from jhpe.data import registry  # pylint: disable=g-import-not-at-top
  return skeletons.get_skeleton(registry.get_spec(config.dataset).skeleton)


def build_model(config: Config, **overrides):
  """Returns the flax module of `config` (`jhpe.models.get_model`).

  Raises ValueError naming `--model`/its kwargs if the family rejects them.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jhpe import models  # pylint: disable=g-import-not-at-top
  kwargs = dict(config.model_kwargs)
  # The joint count comes from the dataset's skeleton unless the flags say otherwise.
  kwargs.setdefault("num_joints", skeleton_of(config).num_joints)
  kwargs.setdefault("dtype", jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)
  kwargs.update(overrides)
  try:
    return models.get_model(config.model, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"--model={config.model} with {config.model_kwargs}: {e}") from None


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
  path = os.path.join(workdir, CONFIG_FILENAME)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json() + "\n")
  os.replace(tmp, path)  # Atomic: a reader never sees half a file.
  return path


# Settings a resumed run may change: how long, how often to log / save / evaluate, where
# the data lives, how it is loaded. Any other change would splice two experiments into
# one set of checkpoints and metrics.
RESUMABLE_CHANGES = frozenset((
    "num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "async_checkpoints", "num_workers", "data_dir", "manual_dir", "eval_batch_size",
    "num_eval_examples", "nan_policy", "skip_bad_examples", "parallel"))


def check_resumable(config: Config, workdir: str) -> None:
  """Raises ValueError when `workdir` holds a run whose settings differ from `config`.

  Called before a run resumes from `workdir`'s checkpoint: the error names every changed
  flag (old -> new) and leaves the workdir untouched. Changes in RESUMABLE_CHANGES pass.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    return
  # Both through the same JSON (lists, not tuples); a foreign config.json is named.
  saved = json.loads(load_config(workdir).to_json())
  new = json.loads(config.to_json())
  changed = [f"--{k}: {saved[k]!r} -> {new[k]!r}" for k in sorted(new)
             if k not in RESUMABLE_CHANGES and saved.get(k) != new[k]]
  if changed:
    raise ValueError(
        f"--workdir={workdir} holds a checkpoint of a run with other settings "
        f"({'; '.join(changed)}); resume with the settings of its config.json, or "
        "train in a new --workdir.")


def load_config(workdir: str) -> Config:
  """Reads `<workdir>/config.json` (written by the training loop)."""
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: {workdir} is not a jhpe training workdir.")
  with open(path) as f:
    return Config.from_json(f.read(), source=path)


def config_from_dict(data: dict[str, Any]) -> Config:
  return Config.from_json(json.dumps(data))
