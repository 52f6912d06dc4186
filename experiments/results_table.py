r"""The README's results table, computed from runs' files (nothing typed by hand).

  python -m experiments.results_table docs/results/lsp_hourglass docs/results/lsp_cpm ...

Each argument is a run folder holding the workdir's `config.json`, `metrics.jsonl` and
`eval/<dataset>_<split>.json` (a training workdir, or its copy under docs/results/). Prints
markdown tables: per joint (left/right pairs averaged; the columns are the dataset's own
joints, the headline its own metric: PCK@0.2 on LSP, PCKh@0.5 on MPII) with PCP; stage by
stage; the learning curve of runs evaluated during training; and where the joints go
(good, left/right inversion, jitter, miss) for evaluations that have it. Runs of datasets
with different joints get a table each. The files store fractions; the tables print
percent.
"""

import json
import os
import re
import sys
from typing import Sequence

# LSP's usual columns: a left/right pair averaged (every LSP test joint is annotated, so
# the two rates have the same count); Head is the mean of the neck and the head top.
COLUMNS = (("Head", ("neck", "head_top")), ("Sho.", ("left_shoulder", "right_shoulder")),
           ("Elb.", ("left_elbow", "right_elbow")), ("Wri.", ("left_wrist", "right_wrist")),
           ("Hip", ("left_hip", "right_hip")), ("Knee", ("left_knee", "right_knee")),
           ("Ank.", ("left_ankle", "right_ankle")))
_COLUMNS_BY_JOINTS = {frozenset(j for _, js in COLUMNS for j in js): COLUMNS}


def columns_of(joint_names: Sequence[str]) -> tuple:
  """The per-joint columns of a skeleton: LSP's usual ones, else each joint with its
  left/right counterpart averaged, in the skeleton's order ('ankle', 'pelvis', ...)."""
  names = [n for n in joint_names if not n.startswith("mean")]
  known = _COLUMNS_BY_JOINTS.get(frozenset(names))
  if known:
    return known
  columns = {}
  for name in names:
    base = name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name
    columns.setdefault(base, []).append(name)
  return tuple((base, tuple(js)) for base, js in columns.items())


def load_run(run_dir: str) -> dict:
  """config, metrics records and eval results of a run folder; a missing file is named."""
  def read(*parts):
    path = os.path.join(run_dir, *parts)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing; a run folder needs config.json, "
                              "metrics.jsonl and eval/<dataset>_<split>.json.")
    with open(path) as f:
      return [json.loads(l) for l in f if l.strip()] if path.endswith(".jsonl") else json.load(f)

  from jhpe.train import evaluate  # pylint: disable=g-import-not-at-top
  config = read("config.json")
  tag = evaluate.dataset_tag(config["dataset"], config["eval_split"])
  metrics = read("metrics.jsonl")
  images = config["num_train_steps"] * config["batch_size"]
  seconds = training_seconds(metrics)
  previous = _previous_stage(run_dir)
  if previous:  # A cascade's stage counts the stages before it.
    earlier = load_run(previous)
    images, seconds = images + earlier["images"], seconds + earlier["seconds"]
  return {"name": run_name(run_dir), "config": config, "metrics": metrics,
          "eval": read("eval", f"{tag}.json"), "images": images, "seconds": seconds}


def _stage_number(run_dir: str):
  """s of a cascade's stage folder W/stage{s}, else None."""
  match = re.fullmatch(r"stage(\d+)", os.path.basename(os.path.normpath(run_dir)))
  return int(match.group(1)) if match else None


def _previous_stage(run_dir: str):
  """stage{s-1} beside a cascade's stage{s} folder (W/stage3 -> W/stage2), else None."""
  stage = _stage_number(run_dir)
  if stage is None or stage < 2:
    return None
  return os.path.join(os.path.dirname(os.path.normpath(run_dir)), f"stage{stage - 1}")


def run_name(run_dir: str) -> str:
  """The folder's name; a cascade stage's folder (W/stage2) is named with its run's."""
  path = os.path.normpath(run_dir)
  name = os.path.basename(path)
  if _stage_number(path) is not None:
    return f"{os.path.basename(os.path.dirname(path))}/{name}"
  return name


def training_seconds(records: Sequence[dict]) -> float:
  """Wall seconds of training: from `elapsed_s`, else the sum of the log intervals.

  `elapsed_s` restarts at 0 when a preempted run resumes: each segment's last value is
  added (the steps between a segment's last log line and its checkpoint are not counted).
  """
  train = [r for r in records if "steps_per_s" in r]
  if train and all("elapsed_s" in r for r in train):
    total, previous = 0.0, 0.0
    for r in train:
      if r["elapsed_s"] < previous:  # A resumed segment starts.
        total += previous
      previous = r["elapsed_s"]
    return total + previous
  total, last_step = 0.0, 0
  for r in train:
    total += (r["step"] - last_step) / r["steps_per_s"]
    last_step = r["step"]
  return total


def num_params(config: dict) -> int:
  """Parameters of the run's model (shapes only: nothing is initialised or compiled)."""
  from jhpe.models import summary  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.config_from_dict(config)
  return summary.count_params(summary.abstract_variables(config_lib.build_model(cfg),
                                                         cfg.input_size))


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}"


def joint_table(runs: Sequence[dict]) -> str:
  """One table per set of joints (runs on LSP and on MPII get a table each)."""
  groups = {}
  for run in runs:
    groups.setdefault(columns_of(list(run["eval"]["per_joint"])), []).append(run)
  return "\n\n".join(_joint_table(group, columns) for columns, group in groups.items())


def _joint_table(runs: Sequence[dict], columns: tuple) -> str:
  metrics = sorted({run["eval"]["metric"] for run in runs})
  head = ["run", "model", "params", "input", "images seen", "train time"] + [
      c for c, _ in columns] + [f"{' / '.join(metrics)} mean", "PCP"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for run in runs:
    cfg, ev = run["config"], run["eval"]
    params = num_params(cfg)
    per = ev["per_joint"]
    cells = [_pct(None if any(per.get(j) is None for j in js) else
                  sum(per[j] for j in js) / len(js)) for _, js in columns]
    lines.append("| " + " | ".join([
        run["name"], cfg["model"], f"{params / 1e6:.2f}M", str(cfg["input_size"]),
        f"{run['images']:,}", f"{run['seconds'] / 60:.0f} min",
        *cells, f"**{_pct(ev['mean'])}**", _pct(ev.get("pcp", {}).get("mean"))]) + " |")
  return "\n".join(lines)


def stage_table(runs: Sequence[dict]) -> str:
  staged = [r for r in runs if len(r["eval"].get("per_stage", ())) > 1]
  if not staged:
    return ""
  depth = max(len(r["eval"]["per_stage"]) for r in staged)
  head = ["run", "intermediate supervision"] + [f"stage {t + 1}" for t in range(depth)]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for run in staged:
    stages = [_pct(s["mean"]) for s in run["eval"]["per_stage"]]
    lines.append("| " + " | ".join(
        [run["name"], "yes" if run["config"].get("intermediate_supervision", True) else
         "no (last stage only)"] + stages + [""] * (depth - len(stages))) + " |")
  return "\n".join(lines)


def error_table(runs: Sequence[dict]) -> str:
  """Where each run's joints go (`jhpe.metrics.error_types`), for runs whose eval has it."""
  typed = [r for r in runs if r["eval"].get("error_types")]
  if not typed:
    return ""
  head = ["run", "good", "inversion (left/right)", "jitter", "miss",
          "wrist inversion", "wrist jitter"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for run in typed:
    types = run["eval"]["error_types"]
    wrists = ("left_wrist", "right_wrist")
    wrist = {k: None if any(types[k].get(j) is None for j in wrists) else
             sum(types[k][j] for j in wrists) / 2 for k in ("inversion", "jitter")}
    lines.append("| " + " | ".join(
        [run["name"]] + [_pct(types[k]["mean"]) for k in ("good", "inversion", "jitter",
                                                          "miss")] +
        [_pct(wrist["inversion"]), _pct(wrist["jitter"])]) + " |")
  return "\n".join(lines)


def curve_table(runs: Sequence[dict]) -> str:
  """The learning curve of runs evaluated more than once: each evaluation's mean and stages.

  Stage cells come from the evaluations' records in metrics.jsonl (logged since
  2026-12-02) and, for the last step, from the eval JSON; older records show the mean only.
  """
  curves = []
  for run in runs:
    metric = run["eval"]["metric"]
    # By step; a step evaluated twice (a run preempted mid-evaluation) keeps its last.
    evals = {r["step"]: r for r in run["metrics"] if f"eval/{metric}" in r}
    evals = [evals[step] for step in sorted(evals)]
    if len(evals) > 1:
      curves.append((run, metric, evals))
  if not curves:
    return ""
  depth = max(len(run["eval"].get("per_stage") or ()) for run, _, _ in curves)
  metrics = sorted({metric for _, metric, _ in curves})
  head = ["run", "step", "images seen", f"{' / '.join(metrics)} mean"] + [
      f"stage {t + 1}" for t in range(depth)]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for run, metric, evals in curves:
    final = {s["stage"]: s["mean"] for s in run["eval"].get("per_stage") or ()}
    for record in evals:
      stages = [record.get(f"eval/{metric}/stage{t + 1}") for t in range(depth)]
      if record["step"] == run["eval"]["step"] and len(final) > 1:
        stages = [final.get(t + 1) for t in range(depth)]
      lines.append("| " + " | ".join(
          [run["name"], str(record["step"]),
           f"{record['step'] * run['config']['batch_size']:,}",
           _pct(record[f"eval/{metric}"])] +
          ["" if x is None else _pct(x) for x in stages]) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__, file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2
  try:
    runs = [load_run(d) for d in argv]
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(joint_table(runs))
  for table in (stage_table(runs), curve_table(runs), error_table(runs)):
    if table:
      print("\n" + table)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
