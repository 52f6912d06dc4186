r"""Evaluates a training workdir's checkpoint on any dataset split.

  python -m experiments.evaluate --workdir=/tmp/quickstart
  python -m experiments.evaluate --workdir=DIR --which=best --dataset=lsp --split=test
  python -m experiments.evaluate --workdir=DIR --decode=taylor --noflip_test  # a variant
  python -m experiments.evaluate --workdir=DIR --test_scales=0.8,1,1.2  # multi-scale test
  python -m experiments.evaluate --workdir=DIR --person_boxes=dets.json  # COCO, detected
  python -m experiments.evaluate --workdir=DIR --which=4000 --dataset=synthetic/tiny \
      --data_dir=/tmp/tfds

Writes `<workdir>/eval/<dataset>_<split>.json` (metrics: mean and per joint, the step, the
checkpoint used) and `<workdir>/eval/<dataset>_<split>_predictions.json`, draws the eval
figures (`--eval_dir=DIR`: all under DIR instead, for a read-only workdir), and prints the evaluation table. The model, input size, decoding and flip test
are the workdir's (config.json); --dataset and --split default to its evaluation split.
--decode, --flip_test and --test_scales evaluate a variant: its files get a suffix naming
what changed (`lsp_test_taylor_noflip.json`, `lsp_test_scales0.8-1-1.2.json`), so the
run's own evaluation is never overwritten.

SIGTERM or Ctrl-C stops the evaluation between two batches, before anything is written
(the workdir's files stay as they were): one line, exit status 130; a second Ctrl-C aborts
at once.

Bad input (no checkpoint, an unknown dataset or split, a dataset whose skeleton is not
the model's, a workdir it cannot write to without --eval_dir) is one line on stderr
naming it, exit status 2, before anything is written or evaluated:
the workdir's existing files are left as they are.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import common

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "The training workdir to evaluate (required).")
flags.DEFINE_string("which", "latest", "Checkpoint: 'latest', 'best' (highest validation "
                    "metric) or a step number.")
flags.DEFINE_string("dataset", "", "Dataset, e.g. lsp, mpii, synthetic/tiny ('' = the "
                    "workdir's).")
flags.DEFINE_string("split", "", "Split ('' = the workdir's evaluation split).")
flags.DEFINE_integer("num_examples", 0, "Evaluate the first N examples (0 = all).")
flags.DEFINE_bool("figures", True, "Draw the evaluation figures into <workdir>/figures.")
flags.DEFINE_string("person_boxes", None, "OKS AP datasets (COCO): a COCO results file "
                    "of detected person boxes ([{image_id, bbox: [x, y, w, h], score}]) "
                    "to cut the people from, instead of the ground-truth boxes; writes "
                    "eval/<dataset>_<split>_detected_boxes*.json.")
flags.DEFINE_float("box_score_threshold", 0.0, "With --person_boxes: keep the boxes "
                   "scored at least this.")
flags.DEFINE_float("oks_nms_threshold", 0.9, "OKS AP datasets: OKS-NMS of each image's "
                   "poses at this OKS (1 = off), as the top-down papers.")
flags.DEFINE_bool("validate_only", False, "Check the flags and exit (status 0, or 2 with "
                  "one line naming a bad one): launch.sh checks a sweep this way.")
flags.DEFINE_string("eval_dir", "", "Where eval/ and figures/ go ('' = the workdir; "
                    "another folder for a read-only workdir).")
# Config fields this evaluation may change; unset, each keeps the workdir's value. Their
# help and choices are the fields' (jhpe/train/config.py).
_OVERRIDES = ("data_dir", "manual_dir", "eval_batch_size", "decode", "flip_test",
              "test_scales")
common.define_override_flags(_OVERRIDES, notes=dict(
    decode="another than the run's writes eval/<dataset>_<split>_<decode>.json",
    flip_test="another than the run's adds _flip / _noflip to the files",
    test_scales="another than the run's adds _scales<...> to the files"))
for _name in _OVERRIDES:
  flags.declare_key_flag(_name)  # --help lists them as this entry point's own.
# Multi-host (jax.distributed), as the training entry points (`launch.sh multihost`).
common.define_distributed_flags()


def _which(value: str):
  """'latest' | 'best' | a step number (int)."""
  if value in ("latest", "best"):
    return value
  if value.isdigit():
    return int(value)
  raise ValueError(f"--which={value!r}: expected 'latest', 'best' or a step number.")


def _overrides() -> dict:
  """The Config fields the flags replace (only those given)."""
  overrides = common.override_values(_OVERRIDES)
  if FLAGS.num_examples < 0:
    raise ValueError(f"--num_examples={FLAGS.num_examples}: expected >= 0.")
  return overrides


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    common.fail(f"unexpected positional arguments {argv[1:]} (flags start with --).")
  if not FLAGS["verbosity"].present:
    # Orbax and TFDS log every restore and read at INFO: keep the output to the table
    # (and an error to its one line) unless --verbosity asks for more.
    logging.set_verbosity(logging.ERROR)
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import progress  # pylint: disable=g-import-not-at-top
  from jhpe.train import runtime  # pylint: disable=g-import-not-at-top
  try:
    if not FLAGS.workdir:
      raise ValueError("--workdir is required (the training workdir to evaluate).")
    which = _which(FLAGS.which)
    overrides = _overrides()
    if FLAGS.validate_only:
      return
    common.init_distributed()
    import jax  # pylint: disable=g-import-not-at-top
    shown = progress.EvalProgress(f"{FLAGS.workdir} ({FLAGS.which})",
                                  enabled=jax.process_index() == 0)
    with runtime.PreemptionFlag(
        what="stopping the evaluation; nothing is written") as stop:
      results = eval_lib.evaluate_workdir(
          FLAGS.workdir, which=which, dataset=FLAGS.dataset or None,
          split=FLAGS.split or None, num_examples=FLAGS.num_examples,
          overrides=overrides, figures=FLAGS.figures, person_boxes=FLAGS.person_boxes,
          box_score_threshold=FLAGS.box_score_threshold,
          oks_nms_threshold=FLAGS.oks_nms_threshold, should_stop=stop, progress=shown,
          out_dir=FLAGS.eval_dir or None)
  except (ValueError, FileNotFoundError, ImportError) as e:
    # CheckpointError is a ValueError; FileNotFoundError: dataset files (COCO images);
    # ImportError: pycocotools for OKS AP (`pip install -e ".[coco]"`).
    common.fail(str(e).splitlines()[0] if str(e) else repr(e))
  except eval_lib.Preempted:
    print("Evaluation stopped before writing anything; rerun the same command.",
          file=sys.stderr, flush=True)
    sys.exit(runtime.ABORT_EXIT_STATUS)
  if jax.process_index() == 0:
    print(eval_lib.format_table(results), flush=True)
    print(progress.result_line(results, shown.elapsed), flush=True)
    for path in results.get("files", ()):
      print(f"  wrote {path}", flush=True)


if __name__ == "__main__":
  common.apply_cpu_defaults()  # Before anything can start JAX.
  app.run(main, flags_parser=common.parse_flags)
