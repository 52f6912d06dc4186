"""What an evaluation writes: the eval files, the printed table, the figures.

  eval/<tag>.json                 the results ({'dataset', 'split', 'step', 'checkpoint',
                                  'metric', 'mean', 'per_joint', 'pcp', 'per_stage', ...})
  eval/<tag>_predictions.json     [{'id', 'joints' (J, 2) original px, 'confidence' (J,)}]
  eval/<tag>_coco_results.json    OKS AP datasets: the people in COCO results format
  figures/<tag>_*.png             `jhpe.viz.save_eval_figures`

<tag> is `eval_tag`: the dataset and split, plus what a re-evaluation changed from the
run's own settings. Every file is written atomically (`jhpe.files`).
"""

import logging
import os

from jhpe import datasets
from jhpe import files
from jhpe import skeletons


def eval_tag(results: dict) -> str:
  """The file-name tag of an eval result: the dataset and split, plus what a re-evaluation
  changed from the run's own settings ('lsp_test_taylor', 'lsp_test_noflip')."""
  return dataset_tag(results["dataset"], results["split"]) + results.get("variant", "")


def dataset_tag(dataset: str, split: str) -> str:
  """'synthetic/tiny', 'test' -> 'synthetic_tiny_test' (a file-name-safe tag)."""
  return f"{datasets.file_safe(dataset)}_{split}"


def write_eval_files(workdir: str, results: dict, predictions: list) -> tuple[str, str]:
  """Writes eval/<tag>.json and eval/<tag>_predictions.json (atomically); with OKS AP also
  eval/<tag>_coco_results.json, the people kept by OKS-NMS in COCO results format."""
  tag = eval_tag(results)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  paths = (os.path.join(out_dir, f"{tag}.json"),
           os.path.join(out_dir, f"{tag}_predictions.json"))
  files.write_json(paths[0], results)
  files.write_json(paths[1], predictions, indent=None)
  if "oks" in results:
    from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top
    coco_eval.write_coco_results(os.path.join(out_dir, f"{tag}_coco_results.json"),
                                 predictions)
  return paths


def format_table(results: dict) -> str:
  """The per-joint table printed at the end of a run."""
  lines = [f"{results['metric']} on {results['dataset']} {results['split']} "
           f"({results['num_examples']} people, step {results.get('step', '?')}):"]
  if "oks" in results:
    from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top
    lines += coco_eval.table_lines(results)
  if "per_joint" not in results:
    return "\n".join(lines)
  if "per_joint_metric" in results:
    lines.append(f"  {results['per_joint_metric']}, mean {100 * results['pck']['mean']:.2f}:")
  width = max(len(k) for k in results["per_joint"])
  for name, value in results["per_joint"].items():
    shown = "   n/a" if value is None else f"{100 * value:6.2f}"
    lines.append(f"  {name:<{width}}  {shown}")
  if "pcp" in results:
    lines.append(f"  PCP (strict, mean)  {100 * (results['pcp']['mean'] or 0):6.2f}")
  if len(results.get("per_stage", ())) > 1:
    lines.append("  by stage (mean):    " + "  ".join(
        "n/a" if s["mean"] is None else f"{100 * s['mean']:.2f}"
        for s in results["per_stage"]))
  return "\n".join(lines)


def save_figures(workdir: str, results: dict, figure_inputs: dict) -> dict:
  """Draws the eval figures with `jhpe.viz` when it is available; never fails a run."""
  if not figure_inputs:
    return {}
  try:
    from jhpe import viz  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  try:
    return viz.save_eval_figures(
        workdir, skeletons.get_skeleton(datasets.get_spec(results["dataset"]).skeleton),
        tag=eval_tag(results),
        run_name=os.path.basename(os.path.normpath(workdir)), step=results.get("step"),
        **figure_inputs)
  except Exception as e:  # pylint: disable=broad-except  # Figures are a by-product.
    logging.warning("Could not draw the evaluation figures: %s", e)
    return {}


def check_writable(out_dir: str) -> None:
  """Raises ValueError (one line) unless <out_dir>/eval could be written; creates nothing.

  Asked before the evaluation runs: a read-only workdir (access(2) answers EROFS even to
  root) would otherwise fail at the end, with the work lost.
  """
  target = os.path.join(os.path.abspath(out_dir), "eval")
  existing = target
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
    raise ValueError(f"cannot write the evaluation files to {target} ({existing} is not a "
                     "writable folder); pass --eval_dir=a writable folder to write them "
                     "there.")
