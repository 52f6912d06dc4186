r"""DeepPose (Toshev & Szegedy 2014): cascaded joint regression from flags.

  python -m experiments.deeppose --flagfile=experiments/configs/lsp_deeppose.flags \
      --workdir=DIR
"""

from absl import flags

from experiments import common

MODEL_FLAGS = ("num_stages", "backbone", "use_batchnorm", "width", "fc_features",
               "dropout_rate", "box_scale", "perturb_sigma")


def _model_flags():
  flags.DEFINE_integer("num_stages", 1, "Cascade stages (1 = no refinement; paper 3).")
  flags.DEFINE_enum("backbone", "alexnet", ["alexnet", "resnet"], "Regressor network.")
  flags.DEFINE_bool("use_batchnorm", False, "AlexNet with BatchNorm instead of LRN.")
  flags.DEFINE_float("width", 1.0, "Channel multiplier of the backbone (1.0 = paper).")
  flags.DEFINE_integer("fc_features", 4096, "Hidden FC width.")
  flags.DEFINE_float("dropout_rate", 0.5, "FC dropout.")
  flags.DEFINE_float("box_scale", 1.0, "Refinement crop side, in pose diameters.")
  flags.DEFINE_float("perturb_sigma", 0.02, "Simulated displacements in training.")


# The paper: 220 x 220 input, L2 on normalised coordinates (`Config`'s default), SGD
# (AdaGrad-era setting; momentum 0.9 is `Config`'s default).
common.define_flags("deeppose", _model_flags, dict(
    optimizer="sgd", learning_rate=5e-4, input_size=220))

if __name__ == "__main__":
  common.run("deeppose", MODEL_FLAGS)
