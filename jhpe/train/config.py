"""The experiment configuration: one frozen dataclass holding every flag.

Each field carries its flag's help text and allowed values (`_field`);
`experiments/common.py` generates one absl flag per field from them (its kind from the
field's type) and builds the `Config` from the parsed flags. A `Config` is written to
`<workdir>/config.json` by the training loop and read back by `load_config(workdir)` (the
predictor, the evaluation entry point and a resumed run all rebuild the model from it).

`Config.validate()` checks every value that would otherwise fail deep inside JAX, minutes
into a run, and raises a ValueError of one line naming the flag and what is allowed.
"""

import dataclasses
import json
import typing
from typing import Any, Optional

from jhpe.train import config_checks

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


def _field(default, help_text: str, choices: Optional[tuple] = None):
  """A Config field with its flag's help text and allowed values (`choices`).

  The one place a hyper-parameter is written: experiments/common.py makes the absl flag
  from it (name, type, default, help, choices) and `Config.validate` checks the choices.
  """
  metadata = {"help": help_text}
  if choices is not None:
    metadata["choices"] = choices
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a training or evaluation run (the absl flags, one to one).

  Each field but `model` and `model_kwargs` is the flag of its name (`flag_fields()`), its
  help text and allowed values in the field's metadata: adding a hyper-parameter is one
  `_field(...)` line here. `model` is the entry point's family; `model_kwargs` holds the
  family's own hyper-parameters (e.g. `num_stacks` for the hourglass, flags of
  experiments/<family>.py), passed to `jhpe.models.get_model(model, **model_kwargs)`.
  """
  # Model.
  model: str = dataclasses.field(default="hourglass", metadata={"choices": MODELS})
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  sync_batch_norm: bool = _field(
      False, "BatchNorm statistics over the global batch (cross-device) instead of per "
      "device.")
  dtype: str = _field("float32", "Compute dtype (parameters stay float32).", DTYPES)
  # Data.
  dataset: str = _field("synthetic", "Evaluation dataset, e.g. lsp, mpii, synthetic, "
                        "synthetic/tiny.")
  train_dataset: str = _field("", "Training dataset(s) joined by '+', e.g. lsp+lspet "
                              "('' = --dataset).")
  train_split: str = _field("train", "Training split.")
  eval_split: str = _field("test", "Evaluation split.")
  data_dir: str = _field("", "TFDS data dir ('' = $TFDS_DATA_DIR or "
                         "~/tensorflow_datasets).")
  manual_dir: str = _field("", "Folder of the official archives.")
  input_size: int = _field(256, "Canvas side S in pixels.")
  batch_size: int = _field(16, "Global batch size (all devices and hosts).")
  eval_batch_size: int = _field(0, "Global eval batch size (0 = --batch_size).")
  num_eval_examples: int = _field(0, "Evaluate the first N examples (0 = the whole split).")
  num_workers: int = _field(0, "grain worker processes (0 = in the main process).")
  skip_bad_examples: bool = _field(False, "Skip and count corrupt or badly annotated "
                                   "examples.")
  # Augmentation (device side; see jhpe.train.augment).
  aug_rotation: float = _field(30.0, "Rotation range, +- degrees (uniform).")
  aug_scale: float = _field(0.25, "Scale range, 1 +- this.")
  aug_translate: float = _field(0.0, "Shift range, fraction of S.")
  aug_flip: bool = _field(True, "Random horizontal flips.")
  aug_color: float = _field(0.2, "Multiplicative colour jitter, 1 +- this per channel.")
  # Targets, decoding and evaluation.
  sigma: float = _field(1.0, "Target Gaussian std, heatmap pixels.")
  regression_loss: str = _field("l2", "DeepPose loss.", REGRESSION_LOSSES)
  # False is the ablation both the hourglass and the CPM papers discuss.
  intermediate_supervision: bool = _field(
      True, "Loss on every stage (True, as the papers) or on the last stage only.")
  decode: str = _field("quarter", "Heatmap decoding.", DECODE_METHODS)
  flip_test: bool = _field(True, "Average with the mirrored image.")
  # The CPM benchmark's scale search.
  test_scales: tuple[float, ...] = _field(
      (1.0,), "Multi-scale testing: heatmaps averaged over the canvas resized by each "
      "factor, e.g. 0.8,1,1.2 (1 = off; heatmap models only).")
  # Optimisation.
  optimizer: str = _field("rmsprop", "Optimiser.", OPTIMIZERS)
  learning_rate: float = _field(2.5e-4, "Peak learning rate.")
  momentum: float = _field(0.9, "SGD momentum.")
  schedule: str = _field("constant", "Decay schedule.", SCHEDULES)
  warmup_steps: int = _field(0, "Linear warm-up steps.")
  decay_steps: tuple[int, ...] = _field(
      (), "Steps where --schedule=step multiplies the rate by --decay_factor.")
  decay_factor: float = _field(0.1, "Step decay factor.")
  grad_clip: float = _field(0.0, "Global-norm clipping (0 = off).")
  weight_decay: float = _field(0.0, "Weight decay (0 = off).")
  ema_decay: float = _field(0.0, "EMA of the params (0 = off).")
  num_train_steps: int = _field(1000, "Training steps.")
  # DeepPose's cascade trained as the paper, one stage after another (jhpe.train.cascade).
  train_stage: int = _field(
      0, "Cascade stage trained alone (0 = every stage jointly). s >= 2: stage s on "
      "ground-truth-centred boxes displaced by stage s-1's training-set errors, stages "
      "< s restored from --init_from and frozen.")
  init_from: str = _field("", "Workdir of the previous stage (--train_stage >= 2): its "
                          "latest checkpoint gives the earlier stages.")
  perturb_examples: int = _field(0, "Training examples on which stage s-1's errors are "
                                 "measured for --train_stage=s (0 = all).")
  # Bookkeeping.
  log_every: int = _field(50, "Steps between metric records.")
  eval_every: int = _field(0, "Steps between evaluations (0 = end).")
  checkpoint_every: int = _field(500, "Steps between saves.")
  keep_checkpoints: int = _field(3, "Latest checkpoints kept (plus the best by validation "
                                 "PCK).")
  async_checkpoints: bool = _field(True, "Save in the background.")
  seed: int = _field(0, "Seed of the init, shuffling and augmentation.")
  nan_policy: str = _field("stop", "On NaN/Inf: stop, or skip the update.", NAN_POLICIES)
  parallel: str = _field("pmap", "pmap or shard_map.", PARALLEL)

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
    if not isinstance(data, dict):
      raise ValueError(f"{source}: expected a JSON object of settings, got "
                       f"{type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
      raise ValueError(f"{source}: unknown config keys {unknown}; known: {sorted(names)}.")
    # JSON has lists: back to the tuples of the fields' item type.
    for field in dataclasses.fields(cls):
      kind = tuple_item_type(field)
      if kind is not None and field.name in data:
        data[field.name] = tuple(kind(v) for v in data[field.name])
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

    for field in dataclasses.fields(self):
      if "choices" in field.metadata:
        allowed(field.name, getattr(self, field.name), field.metadata["choices"])
    _check_dataset("dataset", self.dataset)
    for name in self.train_datasets:
      _check_dataset("train_dataset", name)
    for flag in ("input_size", "batch_size", "num_train_steps", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
      positive(flag, getattr(self, flag))
    for flag in ("eval_batch_size", "num_eval_examples", "eval_every", "warmup_steps",
                 "num_workers", "train_stage", "perturb_examples"):
      positive(flag, getattr(self, flag), zero_ok=True)
    for key in _COUNT_KWARGS:
      if key in self.model_kwargs:
        positive(key, self.model_kwargs[key])
    for flag, value in config_checks.float_values(self):
      config_checks.check_float(flag, value)
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
    top = config_checks.MAX_TEST_SCALE
    if not self.test_scales or not all(0 < s <= top for s in self.test_scales):
      raise ValueError(f"{scales_flag}: expected factors in (0, {top:g}] (1.0 = as is).")
    # The model's own checks (unknown size, zero stacks, stride vs input size).
    model = build_model(self)
    if self.train_stage:
      stages = getattr(model, "num_stages", 1) if model.output_kind == "regression" else 0
      if not 1 <= self.train_stage <= stages:
        raise ValueError(f"--train_stage={self.train_stage}: stage-wise training is for "
                         f"DeepPose's cascade, stages 1..--num_stages ({stages}).")
      if self.train_stage >= 2 and not self.init_from:
        raise ValueError(f"--train_stage={self.train_stage} needs --init_from (the "
                         "workdir of stage s-1).")
    if tuple(self.test_scales) != (1.0,) and model.output_kind != "heatmap":
      raise ValueError(f"{scales_flag}: multi-scale testing averages heatmaps; "
                       f"--model={self.model} regresses coordinates (use --test_scales=1.0).")
    return self


# Not flags: the entry point is the model family, and each family defines its own flags.
_NOT_FLAGS = ("model", "model_kwargs")


def flag_fields() -> tuple:
  """The `Config` fields that are absl flags of the same name (all but `_NOT_FLAGS`)."""
  return tuple(f for f in dataclasses.fields(Config) if f.name not in _NOT_FLAGS)


def tuple_item_type(field: dataclasses.Field) -> Optional[type]:
  """`int` for a `tuple[int, ...]` field (`float` for floats...); None if not a tuple."""
  if typing.get_origin(field.type) is not tuple:
    return None
  return typing.get_args(field.type)[0]


def _check_dataset(flag, name):
  from jhpe import datasets as registry  # pylint: disable=g-import-not-at-top  # No TFDS.
  try:
    registry.split_name(name)
  except ValueError as e:
    raise ValueError(f"--{flag}={name!r}: {e}") from None


def skeleton_of(config: Config):
  """The `jhpe.skeletons.Skeleton` of the evaluation dataset."""
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  from jhpe import datasets as registry  # pylint: disable=g-import-not-at-top  # No TFDS.
  return skeletons.get_skeleton(registry.get_spec(config.dataset).skeleton)


def build_model(config: Config, **overrides):
  """Returns the flax module of `config` (`jhpe.models.get_model`).

  Raises ValueError naming `--model`/its kwargs if the family rejects them.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jhpe import models  # pylint: disable=g-import-not-at-top
  kwargs = dict(config.model_kwargs)
  # The joint count comes from the dataset's skeleton unless the flags say otherwise.
  skeleton = skeleton_of(config)
  kwargs.setdefault("num_joints", skeleton.num_joints)
  if "diameter_joints" in models.model_fields(config.model):
    # DeepPose's diam(y): the skeleton's opposing torso joints (left shoulder, right hip).
    kwargs.setdefault("diameter_joints", tuple(skeleton.torso_joints))
  kwargs.setdefault("dtype", jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)
  kwargs.update(overrides)
  try:
    return models.get_model(config.model, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"--model={config.model} with {config.model_kwargs}: {e}") from None


def config_from_dict(data: dict[str, Any]) -> Config:
  return Config.from_json(json.dumps(data))


# The workdir's config.json (save, load, may a run resume here?) lives in workdir_config;
# its names stay importable from here. Imported last: it imports `Config` from this module.
from jhpe.train.workdir_config import RESUMABLE_CHANGES  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from jhpe.train.workdir_config import check_resumable  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from jhpe.train.workdir_config import check_workdir  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from jhpe.train.workdir_config import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jhpe.train.workdir_config import save_config  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
