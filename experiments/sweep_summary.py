r"""The table launch.sh prints at the end of a sweep: one row per run, whatever the dataset.

  python -m experiments.sweep_summary WORKDIR EXIT_STATUS SECONDS [WORKDIR EXIT_STATUS SECONDS ...]

Each run's row: its status (done; stopped at step N of M, e.g. after a Ctrl-C, so the same
sweep command resumes it; failed with its exit status), its best evaluation (the run's own
headline metric from metrics.jsonl: PCK@0.2, PCKh@0.5, ...; percent) and the step it was
reached at, the last step trained, and its wall time. Reads only the workdirs' files
(config.json, metrics.jsonl, eval/*.json); a run that wrote none shows '-'.
"""

import glob
import json
import os
import sys
from typing import Optional, Sequence

# Evaluation records in metrics.jsonl that are not a headline metric.
_NOT_HEADLINE = ("eval/num_examples", "eval/PCP")


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _records(workdir: str) -> list:
  records = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue  # A line cut by a kill.
  except OSError:
    pass
  return records


def best_eval(records: Sequence[dict]) -> Optional[tuple]:
  """(metric, best value, its step) over the evaluation records; None without any.

  The headline is each record's `eval/<metric>` key without a '/stage' suffix; every
  metric jhpe reports (PCK, PCKh, OKS AP) is better when higher.
  """
  best = None
  for record in records:
    for key, value in record.items():
      if (key.startswith("eval/") and key.count("/") == 1 and key not in _NOT_HEADLINE
          and isinstance(value, (int, float))):
        if best is None or value > best[1]:
          best = (key[len("eval/"):], value, record["step"])
  return best


def summarise(workdir: str, exit_status: int, seconds: float) -> dict:
  """One run's row: {'run', 'status', 'best', 'step', 'time'} as strings."""
  records = _records(workdir)
  config = _read_json(os.path.join(workdir, "config.json")) or {}
  last = max((r.get("step", 0) for r in records if "loss" in r), default=None)
  total = config.get("num_train_steps")
  if exit_status != 0:
    status = f"failed (exit {exit_status})"
  elif last is not None and total and last < total:
    status = f"stopped at {last}/{total}"
  else:
    status = "done"
  best = best_eval(records)
  if best is None:  # An evaluation run: its eval files.
    for path in sorted(glob.glob(os.path.join(workdir, "eval", "*.json"))):
      result = _read_json(path)
      if isinstance(result, dict) and isinstance(result.get("mean"), (int, float)):
        best = (result.get("metric", "mean"), result["mean"], result.get("step", "-"))
        break
  from jhpe.train import progress  # pylint: disable=g-import-not-at-top  # Light.
  return {
      "run": os.path.basename(os.path.normpath(workdir)),
      "status": status,
      "best": "-" if best is None else f"{best[0]} {progress.percent(best[1])}",
      "at step": "-" if best is None else str(best[2]),
      "last step": "-" if last is None else str(last),
      "time": progress.format_duration(seconds),
  }


def format_table(rows: Sequence[dict]) -> str:
  """Aligned columns, one line per run."""
  head = ("run", "status", "best", "at step", "last step", "time")
  widths = [max(len(h), *(len(r[h]) for r in rows)) for h in head]
  lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
  for row in rows:
    lines.append("  ".join(row[h].ljust(w) for h, w in zip(head, widths)).rstrip())
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if not argv or len(argv) % 3 or argv[0] in ("-h", "--help"):
    print(__doc__, file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  rows = [summarise(argv[i], int(argv[i + 1]), float(argv[i + 2]))
          for i in range(0, len(argv), 3)]
  print(format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
