"""The absl flags and the main shared by every experiment entry point.

`experiments/hourglass.py`, `cpm.py` and `deeppose.py` only declare their model flags and
defaults and call `run(...)`; everything else (data, optimisation, schedule, evaluation,
workdir, seed, precision, multi-host) is defined here once: one flag per `Config` field,
generated from the field (name, type, default, help text and choices in
`jhpe/train/config.py`), so a new hyper-parameter is one line there. `run` applies jhpe's
CPU defaults (`jhpe.cpu_defaults`) before anything starts JAX.

  python -m experiments.hourglass --flagfile=experiments/configs/quickstart.flags \
      --workdir=/tmp/quickstart
  python -m experiments.hourglass --flagfile=... --summary   # one JSON line, then exit

Flag errors (an unknown flag, a typo in a flagfile, a wrong type, a value that is not
allowed) are reported as one line on stderr, with exit status 2, before any long work.
"""

import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from jhpe import cpu_defaults
from jhpe.train import config as config_lib

FLAGS = flags.FLAGS

# The absl definer of a `Config` field's flag, by the field's type (enum when the field
# has choices, a list for tuples: `_define_field_flag`).
_DEFINERS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
             float: flags.DEFINE_float, str: flags.DEFINE_string}
_ITEM_NAMES = {int: "integers", float: "numbers"}


def _define_common_flags() -> None:
  """The run's own flags, then one flag per `Config` field but the model's own."""
  flags.DEFINE_string("workdir", None, "Where the run writes everything (required).")
  flags.DEFINE_bool("summary", False, "Print one JSON line {model, params, "
                    "flops_per_image, input_size} and exit.")
  flags.DEFINE_bool("eval_only", False, "Evaluate the workdir's latest checkpoint only.")
  define_distributed_flags()
  for field in config_lib.flag_fields():
    _define_field_flag(field, field.default, field.metadata["help"])


def define_override_flags(names: Sequence[str],
                          notes: Optional[dict[str, str]] = None) -> None:
  """Flags for the named `Config` fields that default to None (= the workdir's value).

  Their help and choices are the fields'; `notes` adds a clause to a flag's help.
  `override_values(names)` reads back the ones given.
  """
  fields = _fields_by_name()
  for name in names:
    note = (notes or {}).get(name)
    help_text = (f"{fields[name].metadata['help']} Default: the workdir's"
                 f"{'; ' + note if note else ''}.")
    _define_field_flag(fields[name], None, help_text)


def _fields_by_name() -> dict:
  return {field.name: field for field in config_lib.flag_fields()}


def _define_field_flag(field, default, help_text: str) -> None:
  """One absl flag named as `field`, its kind from the field's type and choices."""
  choices = field.metadata.get("choices")
  item_type = config_lib.tuple_item_type(field)
  if choices is not None:
    flags.DEFINE_enum(field.name, default, choices, help_text)
  elif item_type is not None:
    # `--decay_steps=1000,2000`: absl keeps the strings; `flag_value` converts them.
    items = None if default is None else [_format_item(v) for v in default]
    flags.DEFINE_list(field.name, items, help_text)
  elif field.type in _DEFINERS:
    _DEFINERS[field.type](field.name, default, help_text)
  else:
    raise TypeError(f"Config.{field.name}: no absl flag for type {field.type!r}; "
                    "add one in experiments/common.py _define_field_flag.")


def _format_item(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def flag_value(field) -> Any:
  """The parsed value of `field`'s flag; a list flag as a tuple of the field's item type.

  Raises ValueError (one line, naming the flag) on an item that does not convert.
  """
  value = FLAGS[field.name].value
  item_type = config_lib.tuple_item_type(field)
  if item_type is None or value is None:
    return value
  try:
    return tuple(item_type(v) for v in value)
  except ValueError:
    what = _ITEM_NAMES.get(item_type, item_type.__name__)
    raise ValueError(f"--{field.name}={','.join(value)}: expected comma-separated "
                     f"{what}.") from None


def override_values(names: Sequence[str]) -> dict[str, Any]:
  """The `define_override_flags` flags that were given: {field name: parsed value}."""
  fields = _fields_by_name()
  values = {name: flag_value(fields[name]) for name in names}
  return {name: value for name, value in values.items() if value is not None}


_COMMON_DEFINED = False


def define_flags(model: str, model_flags: Callable[[], None],
                 defaults: Optional[dict] = None) -> None:
  """Defines the common flags, the model's (`model_flags()`), and overrides defaults.

  `defaults` holds the family's values where they differ from `Config`'s.
  """
  global _COMMON_DEFINED
  if not _COMMON_DEFINED:
    _define_common_flags()
    _COMMON_DEFINED = True
  model_flags()
  for name, value in (defaults or {}).items():
    FLAGS.set_default(name, value)
  del model


def config_from_flags(model: str, model_kwarg_flags: Sequence[str]) -> config_lib.Config:
  """The Config of the parsed flags; `model_kwarg_flags` go to `model_kwargs`."""
  values = {field.name: flag_value(field) for field in config_lib.flag_fields()}
  kwargs = {}
  for name in model_kwarg_flags:
    value = FLAGS[name].value
    if isinstance(value, list):
      value = tuple(int(v) for v in value)
    kwargs[name] = value
  return config_lib.Config(model=model, model_kwargs=kwargs, **values)


def define_distributed_flags() -> None:
  """The process flags `init_distributed` reads (training and evaluation entry points):
  multi-host (SLURM's environment is detected when they are unset) and the compilation
  cache."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.DEFINE_string(
      "compilation_cache", None,
      "Folder of JAX's persistent compilation cache, so a second start of the same config "
      "does not compile again; '' turns it off. Default: $JHPE_COMPILATION_CACHE, else "
      "~/.cache/jhpe/jax (jhpe.compilation_cache).")


def init_distributed() -> None:
  """Starts jax.distributed from the flags, or from SLURM's environment when present, and
  the persistent compilation cache."""
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable(FLAGS.compilation_cache)
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
  from jhpe.train import runtime  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.eval_only:
      eval_lib.evaluate_workdir(FLAGS.workdir)
      return
    result = loop.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, ckpt.CheckpointError, runtime.WorkdirLockedError) as e:
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


def apply_cpu_defaults() -> None:
  """Applies jhpe's CPU settings (`jhpe.cpu_defaults.apply`) to this process.

  The entry points call it first thing: importing jhpe sets nothing, and XLA reads its
  flags once, when JAX creates its backends. A bad JHPE_CPU_DEFAULTS is one line, exit 2.
  """
  try:
    cpu_defaults.apply()
  except ValueError as e:
    fail(str(e))


def run(model: str, model_kwarg_flags: Sequence[str]) -> None:
  """absl.app.run with one-line flag errors; the entry points' `__main__`."""
  apply_cpu_defaults()  # Before anything can start JAX.
  app.run(lambda argv: main(argv, model, model_kwarg_flags),
          flags_parser=parse_flags)
