r"""Turns a trained workdir into a shipped model: jhpe/pretrained/<name>/.

  python -m experiments.ship --workdir=W --name=lsp_hourglass

writes, into a temporary folder renamed into place at the end (an earlier shipped copy is
replaced only once the new one is complete):

  config.json                      the run's own (model, input size, test-time settings)
  checkpoints/<step>/              orbax, the `state` item holding `params` and
                                   `batch_stats` only (no optimiser state): a few MB
  eval/<dataset>_<split>.json      the run's evaluation of that checkpoint, copied
  eval/<dataset>_<split>_first<N>.json   the shipped copy re-evaluated on the split's first
                                   N examples: what tests/test_pretrained.py reproduces
  MODEL_CARD.md                    data, recipe, figures, input expectations, licence

`jhpe.load('<name>')` and `jhpe-predict` (no --workdir) then use it; it is a workdir like
any other, so `python -m experiments.evaluate --workdir=jhpe/pretrained/<name>` works too.
"""

import json
import os
import shutil
import tempfile
from typing import Sequence

from absl import app
from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained workdir to ship (required).")
flags.DEFINE_string("name", None, "The shipped model's name (required).")
flags.DEFINE_string("which", "latest", "Checkpoint: 'latest', 'best' or a step.")
flags.DEFINE_integer("num_slice_examples", 200, "Examples of the recorded slice figure.")
flags.DEFINE_string("recipe", "", "The command that trained it, for the model card.")

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "jhpe", "pretrained")


def slice_tag(tag: str, num_examples: int) -> str:
  """'lsp_test' -> 'lsp_test_first200': the recorded slice figure's file name."""
  return f"{tag}_first{num_examples}"


def ship(workdir: str, name: str, which="latest", num_slice_examples: int = 200,
         recipe: str = "", pretrained_dir: str = PRETRAINED_DIR) -> str:
  """Writes pretrained_dir/name (see the module docstring); returns its path."""
  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  config, _, variables, step = ckpt.load_model(workdir, which)
  tag = eval_lib.dataset_tag(config.dataset, config.eval_split)
  run_eval = os.path.join(workdir, "eval", f"{tag}.json")
  with open(run_eval) as f:
    recorded = json.load(f)
  if recorded.get("step") != step:
    raise ValueError(f"{run_eval} is of step {recorded.get('step')}, the checkpoint is "
                     f"step {step}: evaluate the checkpoint first.")
  os.makedirs(pretrained_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=pretrained_dir, prefix=f".{name}.")
  try:
    config_lib.save_config(config, tmp)
    manager = ckpt.make_manager(tmp, keep=1, async_save=False)
    ckpt.save(manager, step, {"params": variables["params"],
                              "batch_stats": variables.get("batch_stats", {})})
    ckpt.close(manager)
    # The slice figure of the shipped copy itself (its own restore, its own eval path).
    sliced = eval_lib.evaluate_workdir(tmp, num_examples=num_slice_examples, figures=False)
    evals = os.path.join(tmp, "eval")
    os.replace(os.path.join(evals, f"{tag}.json"),
               os.path.join(evals, f"{slice_tag(tag, num_slice_examples)}.json"))
    os.remove(os.path.join(evals, f"{tag}_predictions.json"))
    shutil.copy(run_eval, os.path.join(evals, f"{tag}.json"))
    with open(os.path.join(tmp, "MODEL_CARD.md"), "w") as f:
      f.write(model_card(name, config, tag, recorded, sliced, recipe))
    dest = os.path.join(pretrained_dir, name)
    if os.path.exists(dest):
      old = dest + ".old"
      os.replace(dest, old)
      os.replace(tmp, dest)
      shutil.rmtree(old)
    else:
      os.replace(tmp, dest)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dest


def model_card(name, config, tag, recorded, sliced, recipe) -> str:
  """The model card's Markdown."""
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  skeleton = config_lib.skeleton_of(config)
  joints = "\n".join(f"| {k} | {100 * v:.1f} |" for k, v in recorded["per_joint"].items()
                     if v is not None)
  pcp = recorded.get("pcp", {}).get("mean")
  return f"""# {name}

A {config.model} ({config.model_kwargs}) for single-person 2D pose on the {skeleton.name}
skeleton ({skeleton.num_joints} joints: {", ".join(skeleton.joint_names)}).

## Use

    jhpe-predict photo.jpg                  # overlay PNG + predictions.json in ./predict
    predictor = jhpe.load("{name}")         # predictor(image_or_path, box=(x, y, w, h))

**Input expectations.** One person who roughly fills the image, or a person box
(x, y, w, h) around them: the box's longest side times 1.25 is cut to a
{config.input_size} x {config.input_size} canvas. No person detector is included: in a photo of
several people, give each person's box. Trained on sports photos (LSP, LSPET): full bodies,
mostly upright, small images (people ~150 px tall); far-off poses, heavy occlusion and
truncated bodies are where it errs. Left and right are the person's own.

## Accuracy

LSP test (images 1001-2000, person-centric PCK@0.2, {recorded["num_examples"]} people,
step {recorded["step"]}, flip test {recorded["flip_test"]}, decoding `{recorded["decode"]}`):
**{100 * recorded["mean"]:.1f} PCK@0.2**{f", strict PCP {100 * pcp:.1f}" if pcp else ""}
(`eval/{tag}.json`).
On the first {sliced["num_examples"]} test people this shipped copy scores
{100 * sliced["mean"]:.2f} (`eval/{slice_tag(tag, sliced["num_examples"])}.json`), which
`tests/test_pretrained.py` reproduces within 0.5.

| joint | PCK@0.2 |
| --- | --- |
{joints}

## Training

Data: `{config.train_dataset or config.dataset}` split `{config.train_split}` (for LSP: LSP
images 1-1000 + the 10,000 LSPET images), no other data, no pretraining.
Recipe: {recipe or "config.json"} ({config.num_train_steps} steps
of batch {config.batch_size}, {config.optimizer} {config.learning_rate:g}, {config.schedule}
schedule, sigma {config.sigma}, rotation +-{config.aug_rotation:g} deg, scale
1 +- {config.aug_scale:g}, flips, colour jitter {config.aug_color:g}), on a 2-core CPU.

Stored: parameters and BatchNorm statistics only (no optimiser state), orbax format:
`checkpoints/<step>/state` restores with `orbax.checkpoint` alone (docs/restore_snippet.py).

## Licence

The code is Apache-2.0. The weights are learnt from LSP and LSPET (Johnson and Everingham,
BMVC 2010 and CVPR 2011), which their authors released for research use: use the weights
for research, and cite the datasets.
"""


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    common.fail(f"unexpected positional arguments {argv[1:]}.")
  if not FLAGS.workdir or not FLAGS.name:
    common.fail("--workdir and --name are required.")
  from jhpe import cpu_defaults  # pylint: disable=g-import-not-at-top
  cpu_defaults.apply()
  try:
    which = int(FLAGS.which) if FLAGS.which.isdigit() else FLAGS.which
    print(ship(FLAGS.workdir, FLAGS.name, which, FLAGS.num_slice_examples, FLAGS.recipe))
  except (OSError, ValueError) as e:
    common.fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
