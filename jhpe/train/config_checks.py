"""Value checks of `Config.validate` and `check_resumable` that need more than a line.

  float_values, check_float  every float flag finite, and within FLOAT_RANGES
  check_schedule_resume  the rule for resuming with another --num_train_steps
"""

import dataclasses
import logging
import math

# Every float flag must be finite; these also have a range: (low, high, low_open,
# high_open). NaN fails every comparison, so without this it passed `> 0`-style checks
# (--aug_rotation=nan trained on NaN images with loss 0.0; --weight_decay=nan turned into
# no decay).
FLOAT_RANGES = {
    "aug_rotation": (0.0, 180.0, False, False),
    "aug_scale": (0.0, 1.0, False, True),       # 1 - scale must stay > 0.
    "aug_translate": (0.0, 1.0, False, False),
    "aug_color": (0.0, 1.0, False, True),
    "sigma": (0.0, 64.0, True, False),          # Heatmap pixels.
    "learning_rate": (0.0, float("inf"), True, True),
    "momentum": (0.0, 1.0, False, True),
    "decay_factor": (0.0, float("inf"), True, True),  # Tests use 1e30 to force NaN.
    "grad_clip": (0.0, float("inf"), False, True),    # 0 = off.
    "weight_decay": (0.0, 1.0, False, True),          # 0 = off.
    "ema_decay": (0.0, 1.0, False, True),             # 0 = off.
}
MAX_TEST_SCALE = 4.0  # The canvas resized by more costs (scale^2) memory for nothing.


def float_values(config):
  """(flag, value) of every float field of a Config (all must be finite)."""
  for field in dataclasses.fields(config):
    if field.type is float:
      yield field.name, getattr(config, field.name)


def check_float(flag: str, value) -> None:
  """Raises ValueError (one line) unless `value` is a finite number in FLOAT_RANGES[flag]."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
      value):
    raise ValueError(f"--{flag}={value!r}: expected a finite number.")
  if flag not in FLOAT_RANGES:
    return
  low, high, low_open, high_open = FLOAT_RANGES[flag]
  below = value <= low if low_open else value < low
  above = value >= high if high_open else value > high
  if below or above:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"--{flag}={value!r}: expected a number in {interval}.")


def check_schedule_resume(saved, config, workdir: str) -> None:
  """The rule for a resume with another --num_train_steps: only a schedule that does not
  depend on it (constant, step) continues (one line says so); cosine, which decays over
  --num_train_steps, is refused with the jump it would make, never applied silently."""
  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from jhpe.train import state  # pylint: disable=g-import-not-at-top
  change = f"--num_train_steps: {saved.num_train_steps} -> {config.num_train_steps}"
  if config.schedule != "cosine":
    logging.warning("%s: the --schedule=%s learning rate does not depend on it; training "
                    "continues to step %d.", change, config.schedule, config.num_train_steps)
    return
  step = ckpt.latest_step(workdir) or 0
  old, new = (float(state.make_schedule(c)(step)) for c in (saved, config))
  raise ValueError(
      f"{change} with --schedule=cosine (it decays over --num_train_steps) would move the "
      f"learning rate at the resumed step {step} from {old:.3g} to {new:.3g}; resume with "
      f"--num_train_steps={saved.num_train_steps}, or train in a new --workdir.")
