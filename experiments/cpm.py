r"""Convolutional Pose Machines (Wei et al. 2016): train and evaluate from flags.

  python -m experiments.cpm --flagfile=experiments/configs/lsp_cpm.flags --workdir=DIR
"""

from absl import flags

from experiments import common

MODEL_FLAGS = ("num_stages", "width", "scan_stages")


def _model_flags():
  flags.DEFINE_integer("num_stages", 6, "Stages T (6 released).")
  flags.DEFINE_float("width", 1.0, "Channel multiplier (1.0 = released; 0.25 for CPU).")
  flags.DEFINE_bool("scan_stages", False, "nn.scan over stages t >= 2: one stage compiled "
                    "instead of T - 1 (the same function; parameters stacked under "
                    "stages/, see jhpe.models.cpm.stack_variables).")


# The released setting: SGD (momentum 0.9 and sigma 1 are `Config`'s defaults), lr 8e-5
# (Caffe's base_lr on the summed loss), weight decay 5e-4, 368 x 368 input, stride-8
# belief maps.
common.define_flags("cpm", _model_flags, dict(
    optimizer="sgd", learning_rate=8e-5, input_size=368, weight_decay=5e-4))

if __name__ == "__main__":
  common.run("cpm", MODEL_FLAGS)
