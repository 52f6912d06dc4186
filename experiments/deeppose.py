r"""DeepPose (Toshev & Szegedy 2014): cascaded joint regression from flags.

  python -m experiments.deeppose --flagfile=experiments/configs/lsp_deeppose.flags \
      --workdir=DIR

`--cascade_training=stagewise` trains the cascade as the paper does, one stage after
another, in DIR/stage1, DIR/stage2, ... (each evaluated; DIR/stage<S> holds the whole
cascade): stage s starts from DIR/stage<s-1>'s checkpoint with those stages frozen, on
boxes drawn from stage s-1's training-set errors (`jhpe.train.cascade`). A stage whose
workdir already holds its final checkpoint is skipped, so the same command resumes.
`--cascade_training=joint` trains every stage at once (stage s on stage s-1's live,
isotropically perturbed output) in DIR.
"""

import os

from absl import app
from absl import flags

from experiments import common

FLAGS = flags.FLAGS

MODEL_FLAGS = ("num_stages", "backbone", "use_batchnorm", "width", "fc_features",
               "dropout_rate", "box_scale", "perturb_sigma", "crop_size", "refiner_width",
               "diameter")


def _model_flags():
  flags.DEFINE_integer("num_stages", 1, "Cascade stages (1 = no refinement; paper 3).")
  flags.DEFINE_enum("backbone", "alexnet", ["alexnet", "resnet"], "Regressor network.")
  flags.DEFINE_bool("use_batchnorm", False, "AlexNet with BatchNorm instead of LRN.")
  flags.DEFINE_float("width", 1.0, "Channel multiplier of the backbone (1.0 = paper).")
  flags.DEFINE_integer("fc_features", 4096, "Hidden FC width.")
  flags.DEFINE_float("dropout_rate", 0.5, "FC dropout.")
  flags.DEFINE_float("box_scale", 1.0, "sigma: refinement crop side in pose diameters "
                     "(the paper: 1.0 on FLIC, 2.0 on LSP).")
  flags.DEFINE_enum("diameter", "torso", ["torso", "bbox"], "diam(y): the distance "
                    "between opposing torso joints (the paper; the skeleton's left "
                    "shoulder and right hip) or the pose's bounding-box diagonal.")
  flags.DEFINE_integer("crop_size", None, "Refinement crop side in pixels (default: "
                       "--input_size, as the paper).")
  flags.DEFINE_float("refiner_width", None, "Channel multiplier of stages >= 2 "
                     "(default: --width).")
  flags.DEFINE_float("perturb_sigma", 0.02, "--cascade_training=joint: std of the "
                     "isotropic displacements added to stage s-1's output, normalised "
                     "units.")
  flags.DEFINE_enum("cascade_training", "joint", ["joint", "stagewise"],
                    "stagewise: the paper's stage-by-stage training in WORKDIR/stage<s>; "
                    "joint: every stage at once in WORKDIR.")
  flags.DEFINE_list("stage_steps", None, "--cascade_training=stagewise: training steps "
                    "of each stage, e.g. 3000,1000,1000 (default: --num_train_steps each).")


# The paper: 220 x 220 input, L2 on normalised coordinates (`Config`'s default), SGD
# (AdaGrad-era setting; momentum 0.9 is `Config`'s default).
common.define_flags("deeppose", _model_flags, dict(
    optimizer="sgd", learning_rate=5e-4, input_size=220))


def stage_steps() -> list:
  """The training steps of each stage (one line naming the flag when they do not fit)."""
  if FLAGS.stage_steps is None:
    return [FLAGS.num_train_steps] * FLAGS.num_stages
  try:
    steps = [int(v) for v in FLAGS.stage_steps]
  except ValueError:
    steps = []
  if len(steps) != FLAGS.num_stages or min(steps) < 1:
    common.fail(f"--stage_steps={','.join(FLAGS.stage_steps)}: expected {FLAGS.num_stages} "
                "positive integers, one per stage (--num_stages).")
  return steps


def main_stagewise(argv) -> None:
  """Trains stage 1, 2, ... of the cascade, each in WORKDIR/stage<s>, each evaluated."""
  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  if FLAGS.summary or FLAGS.eval_only or not FLAGS.workdir:
    return common.main(argv, "deeppose", MODEL_FLAGS)
  if FLAGS.train_stage or FLAGS.init_from:
    common.fail("--cascade_training=stagewise sets --train_stage and --init_from for each "
                "stage; leave them unset.")
  root, steps, total = FLAGS.workdir, stage_steps(), FLAGS.num_stages
  for s in range(1, total + 1):
    workdir = os.path.join(root, f"stage{s}")
    if ckpt.latest_step(workdir) == steps[s - 1]:
      print(f"Stage {s}: {workdir} holds its final checkpoint (step {steps[s - 1]}); "
            "skipped.", flush=True)
      continue
    print(f"Stage {s} of {total}: {steps[s - 1]} steps in {workdir}.", flush=True)
    # Stage s's run: the cascade up to stage s, training stage s alone.
    FLAGS.workdir, FLAGS.num_stages, FLAGS.train_stage = workdir, s, s
    FLAGS.num_train_steps = steps[s - 1]
    FLAGS.init_from = os.path.join(root, f"stage{s - 1}") if s > 1 else ""
    common.main(argv, "deeppose", MODEL_FLAGS)
    if ckpt.latest_step(workdir) != steps[s - 1]:
      return  # Preempted: the same command resumes this stage.


def main(argv) -> None:
  if FLAGS.cascade_training == "stagewise":
    return main_stagewise(argv)
  return common.main(argv, "deeppose", MODEL_FLAGS)


if __name__ == "__main__":
  common.apply_cpu_defaults()  # Before anything can start JAX.
  app.run(main, flags_parser=common.parse_flags)
