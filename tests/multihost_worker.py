"""One process of the multi-host test (tests/test_multihost.py): a few pmapped train steps.

Run as `python tests/multihost_worker.py --mode=... --out=FILE [--coordinator_address=H:P
--num_processes=N --process_id=I] [--local_devices=D]`. With a coordinator, the process
joins a `jax.distributed` run of N processes (CPU collectives through gloo, jax's default on
the CPU) and feeds its share of a fixed global batch; without one it is the single-process
reference that sees the whole global batch. Process 0 (or the lone process) writes the
per-step losses to FILE as JSON.

Modes:
  toy:     a linear least-squares model, gradients averaged with `lax.pmean`: the
           mechanism.
  prepare: builds the dataset of --flagfile (so that processes started together do not
           race to build it).
  loop:    the single-process reference of a multi-host run of the real entry point:
           `loop.train_and_evaluate` on the config of --flagfile, in workdir --out, fed
           the global batches the --num_shards processes would assemble.
"""

import argparse
import json
import os
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jhpe import cpu_defaults

GLOBAL_BATCH = 8
NUM_STEPS = 3


def parse_args(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("toy", "prepare", "loop"),
                      required=True)
  parser.add_argument("--out", help="The losses file (toy); the workdir (loop).")
  parser.add_argument("--flagfile", help="prepare, loop: the run's flagfile.")
  parser.add_argument("--num_shards", type=int, default=2,
                      help="loop: the process count of the run to reproduce.")
  parser.add_argument("--coordinator_address", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--local_devices", type=int, default=1)
  return parser.parse_args(argv)


def local_slice(global_batch, num_devices):
  """This process's contiguous share of a global batch (process p holds chunk p).

  `jax.pmap`'s device index (`lax.axis_index`) runs over the global devices in process
  order, so chunk p of the global batch sits where a single process would put it.
  """
  per_process = GLOBAL_BATCH // jax.process_count()
  start = jax.process_index() * per_process
  local = jax.tree.map(lambda x: x[start:start + per_process], global_batch)
  return jax.tree.map(
      lambda x: x.reshape((num_devices, -1) + x.shape[1:]), local)


def replicate(tree, num_devices):
  """One copy per local device along a new leading axis, as `jax.pmap` takes it."""
  return jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)), tree)


def toy_losses(num_local_devices):
  """Losses of `NUM_STEPS` SGD steps on y = x w, gradients pmean-ed over all devices."""
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(GLOBAL_BATCH, 4)).astype(np.float32),
           "y": rng.normal(size=(GLOBAL_BATCH, 1)).astype(np.float32)}

  def step(w, batch):
    def loss_fn(w):
      return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
    loss, grad = jax.value_and_grad(loss_fn)(w)
    grad, loss = lax.pmean((grad, loss), "batch")
    return w - 0.1 * grad, loss

  p_step = jax.pmap(step, axis_name="batch")
  w = replicate(jnp.ones((4, 1), jnp.float32), num_local_devices)
  local = local_slice(batch, num_local_devices)
  losses = []
  for _ in range(NUM_STEPS):
    w, loss = p_step(w, local)
    losses.append(float(loss[0]))
  return losses


def global_axis_index(num_local_devices):
  """`lax.axis_index` of every device under pmap, gathered from all processes in order.

  The train step draws each example's augmentation from its global position,
  `axis_index * local_batch + i`, so the index must count over all processes.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  index = jax.pmap(lambda x: lax.axis_index("batch") + 0 * x, axis_name="batch")(
      np.zeros(num_local_devices, np.int32))
  return np.asarray(multihost_utils.process_allgather(np.asarray(index))).ravel().tolist()


def prepare(flagfile):
  """Builds the flagfile's dataset once, before several processes would race to."""
  config = config_from_flagfile(flagfile)
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  for split in (config.train_split, config.eval_split):
    pipeline.data_source(config.dataset, split, data_dir=config.data_dir or None)


def config_from_flagfile(flagfile):
  """The Config `python -m experiments.hourglass --flagfile=F` builds (same parser)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top
  from experiments import hourglass  # pylint: disable=g-import-not-at-top
  flags.FLAGS([sys.argv[0], f"--flagfile={flagfile}"])
  return common.config_from_flags("hourglass", hourglass.MODEL_FLAGS)


class ShardsAsOneLoader:
  """The global batches of a `num_shards`-process run, as one process sees them.

  Process p of a multi-host run loads shard p of the data (`loop.make_train_loader`) and
  holds chunk p of the global batch (pmap and the mesh order devices by process), so
  concatenating the shards' batches in process order gives the very global batch.
  """

  def __init__(self, config, num_shards):
    from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
    self.loaders = [
        pipeline.make_loader(
            config.train_dataset or config.dataset, config.train_split,
            data_dir=config.data_dir or None, batch_size=config.batch_size // num_shards,
            canvas_size=config.input_size, train=True, seed=config.seed,
            shard_index=p, shard_count=num_shards)
        for p in range(num_shards)]

  def __iter__(self):
    for batches in zip(*self.loaders):
      yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def loop_reference(flagfile, workdir, num_shards):
  """`loop.train_and_evaluate` in one process on the global batches of `num_shards`."""
  from jhpe.train import loop  # pylint: disable=g-import-not-at-top
  config = config_from_flagfile(flagfile)
  loop.train_and_evaluate(config, workdir,
                          train_loader=ShardsAsOneLoader(config, num_shards))


def main(argv):
  args = parse_args(argv)
  if args.mode == "prepare":
    prepare(args.flagfile)
    return
  if args.mode == "loop":
    loop_reference(args.flagfile, args.out, args.num_shards)
    return
  jax.config.update("jax_num_cpu_devices", args.local_devices)
  if args.coordinator_address:
    # Gloo is jax's default CPU collectives implementation (jax 0.10); named here so that
    # the test does not depend on that default.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout=60)
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.device_count() == args.num_processes * args.local_devices, jax.devices()
  losses = toy_losses(jax.local_device_count())
  axis_index = global_axis_index(jax.local_device_count())
  if jax.process_index() == 0:
    with open(args.out, "w") as f:
      json.dump({"losses": losses, "process_count": jax.process_count(),
                 "device_count": jax.device_count(), "axis_index": axis_index}, f)
  if args.coordinator_address:
    jax.distributed.shutdown()


if __name__ == "__main__":
  cpu_defaults.apply()  # Before JAX starts, as the entry points do.
  main(sys.argv[1:])
