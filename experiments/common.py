"""The absl flags and the main shared by every experiment entry point.

`experiments/hourglass.py`, `cpm.py` and `deeppose.py` only declare their model flags and
defaults and call `run(...)`; everything else (data, optimisation, schedule, evaluation,
workdir, seed, precision, multi-host) is defined here once.

  python -m experiments.hourglass --flagfile=experiments/configs/quickstart.flags \
      --workdir=/tmp/quickstart
  python -m experiments.hourglass --flagfile=... --summary   # one JSON line, then exit

Flag errors (an unknown flag, a typo in a flagfile, a wrong type, a value that is not
allowed) are reported as one line on stderr, with exit status 2, before any long work.
"""

import dataclasses
import json
import os
import sys
from typing import Callable, Optional, Sequence

import jhpe  # pylint: disable=unused-import  # Sets the CPU XLA flags before JAX starts.
from absl import app
from absl import flags
from absl import logging

from jhpe.train import config as config_lib

FLAGS = flags.FLAGS
_DEFAULTS = config_lib.Config()


def _define_common_flags() -> None:
  """Flags of every `Config` field except the model's own (`model_kwargs`)."""
  d = _DEFAULTS
  flags.DEFINE_string("workdir", None, "Where the run writes everything (required).")
  flags.DEFINE_bool("summary", False, "Print one JSON line {model, params, "
                    "flops_per_image, input_size} and exit.")
  flags.DEFINE_bool("eval_only", False, "Evaluate the workdir's latest checkpoint only.")
  define_distributed_flags()
  # Data.
  flags.DEFINE_string("dataset", d.dataset, "Evaluation dataset, e.g. lsp, mpii, "
                      "synthetic, synthetic/tiny.")
  flags.DEFINE_string("train_dataset", d.train_dataset, "Training dataset(s) joined by "
                      "'+', e.g. lsp+lspet ('' = --dataset).")
  flags.DEFINE_string("train_split", d.train_split, "Training split.")
  flags.DEFINE_string("eval_split", d.eval_split, "Evaluation split.")
  flags.DEFINE_string("data_dir", d.data_dir, "TFDS data dir ('' = $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets).")
  flags.DEFINE_string("manual_dir", d.manual_dir, "Folder of the official archives.")
  flags.DEFINE_integer("input_size", d.input_size, "Canvas side S in pixels.")
  flags.DEFINE_integer("batch_size", d.batch_size, "Global batch size (all devices).")
  flags.DEFINE_integer("eval_batch_size", d.eval_batch_size, "0 = --batch_size.")
  flags.DEFINE_integer("num_eval_examples", d.num_eval_examples, "0 = the whole split.")
  flags.DEFINE_integer("num_workers", d.num_workers, "grain worker processes.")
  flags.DEFINE_bool("skip_bad_examples", d.skip_bad_examples,
                    "Skip and count corrupt or badly annotated examples.")
  # Augmentation.
  flags.DEFINE_float("aug_rotation", d.aug_rotation, "Rotation range, +- degrees.")
  flags.DEFINE_float("aug_scale", d.aug_scale, "Scale range, 1 +- this.")
  flags.DEFINE_float("aug_translate", d.aug_translate, "Shift range, fraction of S.")
  flags.DEFINE_bool("aug_flip", d.aug_flip, "Random horizontal flips.")
  flags.DEFINE_float("aug_color", d.aug_color, "Colour jitter, 1 +- this per channel.")
  # Targets and evaluation.
  flags.DEFINE_float("sigma", d.sigma, "Target Gaussian std, heatmap pixels.")
  flags.DEFINE_enum("regression_loss", d.regression_loss, config_lib.REGRESSION_LOSSES,
                    "DeepPose loss.")
  flags.DEFINE_bool("intermediate_supervision", d.intermediate_supervision,
                    "Loss on every stage (True, as the papers) or on the last stage only.")
  flags.DEFINE_enum("decode", d.decode, config_lib.DECODE_METHODS, "Heatmap decoding.")
  flags.DEFINE_bool("flip_test", d.flip_test, "Average with the mirrored image.")
  flags.DEFINE_list("test_scales", [f"{x:g}" for x in d.test_scales],
                    "Multi-scale testing: heatmaps averaged over the canvas resized by "
                    "each factor, e.g. 0.8,1,1.2 (1 = off; heatmap models only).")
  # Optimisation.
  flags.DEFINE_enum("optimizer", d.optimizer, config_lib.OPTIMIZERS, "Optimiser.")
  flags.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate.")
  flags.DEFINE_float("momentum", d.momentum, "SGD momentum.")
  flags.DEFINE_enum("schedule", d.schedule, config_lib.SCHEDULES, "Decay schedule.")
  flags.DEFINE_integer("warmup_steps", d.warmup_steps, "Linear warm-up steps.")
  flags.DEFINE_list("decay_steps", [], "Steps where --schedule=step multiplies the rate "
                    "by --decay_factor.")
  flags.DEFINE_float("decay_factor", d.decay_factor, "Step decay factor.")
  flags.DEFINE_float("grad_clip", d.grad_clip, "Global-norm clipping (0 = off).")
  flags.DEFINE_float("weight_decay", d.weight_decay, "Weight decay (0 = off).")
  flags.DEFINE_float("ema_decay", d.ema_decay, "EMA of the params (0 = off).")
  flags.DEFINE_integer("num_train_steps", d.num_train_steps, "Training steps.")
  # Bookkeeping.
  flags.DEFINE_integer("log_every", d.log_every, "Steps between metric records.")
  flags.DEFINE_integer("eval_every", d.eval_every, "Steps between evaluations (0 = end).")
  flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Steps between saves.")
  flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "Latest checkpoints kept "
                       "(plus the best by validation PCK).")
  flags.DEFINE_bool("async_checkpoints", d.async_checkpoints, "Save in the background.")
  flags.DEFINE_integer("seed", d.seed, "Seed of the init, shuffling and augmentation.")
  flags.DEFINE_enum("dtype", d.dtype, config_lib.DTYPES, "Compute dtype.")
  flags.DEFINE_enum("nan_policy", d.nan_policy, config_lib.NAN_POLICIES,
                    "On NaN/Inf: stop, or skip the update.")
  flags.DEFINE_enum("parallel", d.parallel, config_lib.PARALLEL, "pmap or shard_map.")
  flags.DEFINE_bool("sync_batch_norm", d.sync_batch_norm,
                    "BatchNorm statistics over the global batch.")


_COMMON_DEFINED = False


def parse_test_scales(values: Sequence[str]) -> tuple:
  """--test_scales's strings -> a tuple of floats (ValueError naming the flag)."""
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--test_scales={','.join(values)}: expected comma-separated "
                     "numbers, e.g. 0.8,1,1.2.") from None


def define_flags(model: str, model_flags: Callable[[], None], defaults: dict) -> None:
  """Defines the common flags, the model's (`model_flags()`), and overrides defaults."""
  global _COMMON_DEFINED
  if not _COMMON_DEFINED:
    _define_common_flags()
    _COMMON_DEFINED = True
  model_flags()
  for name, value in defaults.items():
    FLAGS.set_default(name, value)
  del model


def config_from_flags(model: str, model_kwarg_flags: Sequence[str]) -> config_lib.Config:
  """The Config of the parsed flags; `model_kwarg_flags` go to `model_kwargs`."""
  values = {}
  for field in dataclasses.fields(config_lib.Config):
    if field.name in ("model", "model_kwargs"):
      continue
    values[field.name] = FLAGS[field.name].value
  try:
    values["decay_steps"] = tuple(int(s) for s in values["decay_steps"])
  except ValueError:
    raise ValueError(f"--decay_steps={','.join(FLAGS.decay_steps)}: expected "
                     "comma-separated integers.") from None
  values["test_scales"] = parse_test_scales(FLAGS.test_scales)
  kwargs = {}
  for name in model_kwarg_flags:
    value = FLAGS[name].value
    if isinstance(value, list):
      value = tuple(int(v) for v in value)
    kwargs[name] = value
  return config_lib.Config(model=model, model_kwargs=kwargs, **values)


def define_distributed_flags() -> None:
  """The multi-host flags `init_distributed` reads (training and evaluation entry points).

  SLURM's environment is detected when they are unset.
  """
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
  flags.DEFINE_integer("process_id", None, "This process's index.")


def init_distributed() -> None:
  """Starts jax.distributed from the flags, or from SLURM's environment when present."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # JAX's SLURM cluster detection fills in the rest.


def fail(message: str) -> None:
  """Bad input: one line `error: message` on stderr, exit status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv: Sequence[str], model: str, model_kwarg_flags: Sequence[str]) -> None:
  """The shared main: validate, then --summary, --eval_only, or train and evaluate."""
  if len(argv) > 1:
    fail(f"unexpected positional arguments {argv[1:]} (flags start with --).")
  if not FLAGS["verbosity"].present:
    # Orbax, TFDS and JAX log every save, read and backend probe at INFO: keep the console
    # to the progress line, the evaluation table and warnings unless --verbosity asks.
    logging.set_verbosity(logging.WARNING)
  try:
    config = config_from_flags(model, model_kwarg_flags)
    if FLAGS.summary:
      config.validate()
      from jhpe.models import summary  # pylint: disable=g-import-not-at-top
      info = summary.summarize(config_lib.build_model(config), config.input_size)
      print(json.dumps({"model": model, **{k: v for k, v in info.items()
                                           if k != "model"},
                        "input_size": config.input_size}), flush=True)
      return
    if not FLAGS.workdir:
      raise ValueError("--workdir is required (where checkpoints, metrics and eval "
                       "files go).")
    config_lib.check_workdir(FLAGS.workdir)
    init_distributed()
    import jax  # pylint: disable=g-import-not-at-top
    config.validate(num_devices=jax.device_count(), num_processes=jax.process_count())
  except ValueError as e:
    fail(str(e))

  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import loop  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.eval_only:
      eval_lib.evaluate_workdir(FLAGS.workdir)
      return
    result = loop.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, ckpt.CheckpointError, loop.WorkdirLockedError) as e:
    fail(str(e))
  except loop.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(3)
  if result.get("preempted"):
    logging.info("Preempted at step %d; exiting cleanly.", result["step"])


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl.app.run's flags_parser: absl prints a flag error plus the whole usage text; we
  print one line instead."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{str(e).splitlines()[0]} (see --helpfull)")


def run(model: str, model_kwarg_flags: Sequence[str]) -> None:
  """absl.app.run with one-line flag errors; the entry points' `__main__`."""
  app.run(lambda argv: main(argv, model, model_kwarg_flags),
          flags_parser=parse_flags)
