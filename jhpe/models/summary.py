"""Model size and cost: parameter counts and FLOPs per image (the `--summary` JSON line)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def count_params(variables: Any) -> int:
  """Number of trainable parameters: the 'params' collection if present, else all leaves.

  Works on real arrays and on `jax.ShapeDtypeStruct`s (e.g. from `abstract_variables`).
  """
  if isinstance(variables, dict) or hasattr(variables, "keys"):
    if "params" in variables:
      variables = variables["params"]
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables)))


def _image_shape(input_size, batch: int = 1):
  if isinstance(input_size, int):
    input_size = (input_size, input_size)
  height, width = input_size
  return (batch, int(height), int(width), 3)


def abstract_variables(model: nn.Module, input_size) -> Any:
  """The model's variables as `jax.ShapeDtypeStruct`s (no memory, no real init)."""
  images = jnp.zeros(_image_shape(input_size), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), images, train=False))


def flops_per_image(model: nn.Module, input_size, variables: Any = None) -> float:
  """FLOPs of one eval-mode forward pass on one image, from XLA's compiled cost analysis.

  XLA counts a multiply-add as 2 FLOPs. Compiles for the default backend (batch 1). XLA
  counts a loop's body once, so a model scanned over its stacks is counted as its
  unrolled twin (the same function; `variables`, if given, must then be left out).
  """
  if getattr(model, "scan_stacks", False):
    model, variables = model.clone(scan_stacks=False, remat=False), None
  if variables is None:
    variables = abstract_variables(model, input_size)
  images = jax.ShapeDtypeStruct(_image_shape(input_size), jnp.float32)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  lowered = fn.lower(variables, images)
  try:
    cost = lowered.compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    cost = None  # Some backends give no compiled analysis: fall back to the HLO's.
  if not cost:
    cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per device.
    cost = cost[0]
  return float(cost["flops"])


def summarize(model: nn.Module, input_size) -> dict:
  """The dict printed as the `--summary` JSON line.

  Keys: model (class name), input_size, params, batch_stats (non-trainable counts),
  flops_per_image, gflops_per_image, num_stages, output_kind, output_shape (per stage, of
  one image), dtype, param_dtype.
  """
  variables = abstract_variables(model, input_size)
  images = jax.ShapeDtypeStruct(_image_shape(input_size), jnp.float32)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  flops = flops_per_image(model, input_size, variables)
  stats = variables.get("batch_stats", {}) if hasattr(variables, "get") else {}
  size = input_size if isinstance(input_size, int) else list(input_size)
  return {
      "model": type(model).__name__,
      "input_size": size,
      "params": count_params(variables),
      "batch_stats": count_params(stats),
      "flops_per_image": flops,
      "gflops_per_image": round(flops / 1e9, 3),
      "num_stages": len(outputs),
      "output_kind": model.output_kind,
      "output_shape": list(outputs[-1].shape[1:]),
      "dtype": jnp.dtype(model.dtype).name,
      "param_dtype": jnp.dtype(model.param_dtype).name,
  }
