r"""Stacked Hourglass (Newell et al. 2016): train and evaluate from flags.

  python -m experiments.hourglass --flagfile=experiments/configs/quickstart.flags \
      --workdir=/tmp/quickstart
"""

from absl import flags

from experiments import common

MODEL_FLAGS = ("num_stacks", "num_features", "depth", "num_modules", "scan_stacks", "remat")


def _model_flags():
  flags.DEFINE_integer("num_stacks", 8, "Hourglasses stacked (8 in the paper).")
  flags.DEFINE_integer("num_features", 256, "Channels inside the hourglasses.")
  flags.DEFINE_integer("depth", 4, "Recursion depth of each hourglass (4: 64 -> 4 px).")
  flags.DEFINE_integer("num_modules", 1, "Residual modules at each point.")
  flags.DEFINE_bool("scan_stacks", False, "nn.scan over the stacks: one stack compiled "
                    "instead of num_stacks (the same function; parameters stacked under "
                    "stacks/ and back_projections/, see "
                    "jhpe.models.hourglass.stack_variables).")
  flags.DEFINE_bool("remat", False, "Recompute each stack's activations in the backward "
                    "pass (memory for compute; needs --scan_stacks).")


# The paper's setting is `Config`'s defaults: RMSProp 2.5e-4, 256 x 256 input, sigma 1 on
# the 64 x 64 heatmaps.
common.define_flags("hourglass", _model_flags)

if __name__ == "__main__":
  common.run("hourglass", MODEL_FLAGS)
