"""Training state, optimisers and learning-rate schedules.

The optimiser is not part of the state (it is rebuilt from the config wherever it is
needed), so the state is a plain pytree of arrays that orbax saves and pmap replicates.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from jhpe.train.config import Config


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  Attributes:
    step: int32 () number of updates applied.
    params: the model's parameters.
    batch_stats: BatchNorm running statistics ({} for models without BN).
    opt_state: the optax state.
    ema_params: exponential moving average of `params` (None when `ema_decay` = 0).
    rng: (2,) uint32 base key; step t uses `fold_in(rng, t)`, so no random state is carried
      on the host and a resumed run draws the same numbers.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Optional[Any]
  rng: jax.Array

  def variables(self, use_ema: bool = False) -> dict:
    """The model variables for `model.apply` (the EMA parameters if asked and present)."""
    params = self.ema_params if (use_ema and self.ema_params is not None) else self.params
    return {"params": params, "batch_stats": self.batch_stats}

  def to_dict(self) -> dict:
    """The checkpointed dict (orbax item `state`); `ema_params` only when present."""
    d = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
         "opt_state": self.opt_state, "rng": self.rng}
    if self.ema_params is not None:
      d["ema_params"] = self.ema_params
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(step=d["step"], params=d["params"], batch_stats=d["batch_stats"],
               opt_state=d["opt_state"], ema_params=d.get("ema_params"), rng=d["rng"])


def make_schedule(config: Config) -> optax.Schedule:
  """The learning rate as a function of the step: warm-up, then constant/step/cosine."""
  lr = config.learning_rate
  remaining = config.num_train_steps - config.warmup_steps
  if config.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.schedule == "step":
    # Boundaries count from the start of the run, as the papers state them.
    main = optax.piecewise_constant_schedule(
        lr, {int(s) - config.warmup_steps: config.decay_factor
             for s in config.decay_steps if int(s) > config.warmup_steps})
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps=max(remaining, 1))
  else:
    raise ValueError(f"--schedule={config.schedule!r}: expected constant, step or cosine.")
  if not config.warmup_steps:
    return main
  warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
  return optax.join_schedules([warmup, main], [config.warmup_steps])


def _decay_mask(params):
  # Decay kernels only: biases and BatchNorm scales/offsets are left alone, as is usual.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """The optax optimiser of `config`.

  - 'rmsprop': Newell et al. (Torch's optim.rmsprop: alpha 0.99, eps 1e-8 added outside the
    square root), the hourglass paper's optimiser at 2.5e-4.
  - 'adam': Adam (AdamW-style decoupled decay when weight_decay > 0).
  - 'sgd': SGD with momentum (DeepPose, CPM), L2 weight decay added to the gradient.
  Global-norm gradient clipping comes first when `grad_clip` > 0. With `train_stage`
  >= 2 every parameter outside stage s is frozen.
  """
  schedule = make_schedule(config)
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  if config.optimizer == "adam":
    if config.weight_decay > 0:
      chain.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask))
    else:
      chain.append(optax.adam(schedule))
  else:
    if config.weight_decay > 0:
      chain.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
    if config.optimizer == "rmsprop":
      chain.append(optax.rmsprop(schedule, decay=0.99, eps=1e-8, eps_in_sqrt=False))
    elif config.optimizer == "sgd":
      chain.append(optax.sgd(schedule, momentum=config.momentum))
    else:
      raise ValueError(f"--optimizer={config.optimizer!r}: expected rmsprop, adam or sgd.")
  tx = optax.chain(*chain)
  if config.train_stage >= 2:
    # DeepPose's stage-wise cascade (jhpe.train.cascade): only stage s moves; the earlier
    # stages get zero updates (no momentum, no weight decay).
    trained = f"stage{config.train_stage}"
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: {k: "train" if k == trained else "frozen" for k in params})
  return tx


def init_variables(rng: jax.Array, model, config: Config) -> dict:
  """Initialises the model on a dummy batch of the configured input size."""
  images = jnp.zeros((1, config.input_size, config.input_size, 3), jnp.float32)
  params_rng, perturb_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "perturb": perturb_rng, "dropout": perturb_rng},
                    images, train=False)


def create_train_state(rng: jax.Array, model, config: Config) -> TrainState:
  """A fresh TrainState on the default device (unreplicated).

  Args:
    rng: the run's base key (`jax.random.PRNGKey(config.seed)`).
    model: the flax module (`config.build_model(config)`).
    config: the run's Config.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(lambda r: init_variables(r, model, config))(init_rng)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  tx = make_optimizer(config)
  ema = jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params),
                    ema_params=ema, rng=state_rng)


def abstract_train_state(model, config: Config) -> TrainState:
  """The shapes/dtypes of `create_train_state` without computing anything (for restore)."""
  return jax.eval_shape(lambda r: create_train_state(r, model, config),
                        jax.random.PRNGKey(0))
