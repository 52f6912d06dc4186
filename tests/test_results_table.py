"""The README's results table is computed from the runs' own files."""

import json
import os
import re

import pytest

from experiments import results_table
from jhpe import skeletons
from jhpe.train import config as config_lib


def _run_dir(tmp_path, name, per_stage, intermediate=True):
  run = tmp_path / name
  (run / "eval").mkdir(parents=True)
  config = config_lib.Config(
      model="hourglass", model_kwargs=dict(num_stacks=2, num_features=8, depth=1),
      dataset="lsp", eval_split="test", input_size=32, batch_size=4, num_train_steps=10,
      intermediate_supervision=intermediate)
  (run / "config.json").write_text(config.to_json())
  (run / "metrics.jsonl").write_text(
      json.dumps({"step": 5, "loss": 1.0, "steps_per_s": 0.5}) + "\n" +
      json.dumps({"step": 10, "loss": 0.5, "steps_per_s": 0.25}) + "\n" +
      json.dumps({"step": 10, "eval/PCK@0.2": per_stage[-1]}) + "\n")
  per_joint = {n: 0.5 for n in skeletons.LSP.joint_names}
  per_joint.update(left_wrist=0.2, right_wrist=0.4, mean=per_stage[-1])
  (run / "eval" / "lsp_test.json").write_text(json.dumps({
      "metric": "PCK@0.2", "step": 10, "mean": per_stage[-1], "per_joint": per_joint,
      "pcp": {"mean": 0.25},
      "per_stage": [{"stage": t + 1, "mean": m} for t, m in enumerate(per_stage)]}))
  return str(run)


def test_tables_from_run_folders(tmp_path, capsys):
  runs = [_run_dir(tmp_path, "with", [0.6, 0.7]),
          _run_dir(tmp_path, "without", [0.1, 0.65], intermediate=False)]
  assert results_table.main(runs) == 0
  out = capsys.readouterr().out
  rows = [l for l in out.splitlines() if l.startswith("| with") or l.startswith("| without")]
  assert len(rows) == 4  # A joint row and a stage row per run.
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  # 10 steps: 5 / 0.5 + 5 / 0.25 = 30 s; 40 images; wrists (0.2 + 0.4) / 2; PCP 25.
  assert cells[4:6] == ["40", "0 min"] and cells[9] == "30.0"
  assert cells[-2:] == ["**70.0**", "25.0"]
  assert "| with | yes | 60.0 | 70.0 |" in out
  assert "| without | no (last stage only) | 10.0 | 65.0 |" in out


def test_learning_curve_lists_each_evaluation_with_its_stages(tmp_path, capsys):
  run = _run_dir(tmp_path, "curve", [0.3, 0.5])
  with open(f"{run}/metrics.jsonl", "a") as f:  # An earlier evaluation, stages logged.
    f.write(json.dumps({"step": 5, "eval/PCK@0.2": 0.2, "eval/PCK@0.2/stage1": 0.1,
                        "eval/PCK@0.2/stage2": 0.2}) + "\n")
  single = _run_dir(tmp_path, "single", [0.4, 0.45])  # Evaluated once: no curve.
  assert results_table.main([run, single]) == 0
  out = capsys.readouterr().out
  curve = out.split("| run | step | images seen | PCK@0.2 mean | stage 1 | stage 2 |")[1]
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in curve.splitlines()
          if l.startswith("| curve")]
  # By step; the last step's stages from the eval JSON.
  assert rows == [["curve", "5", "20", "20.0", "10.0", "20.0"],
                  ["curve", "10", "40", "50.0", "30.0", "50.0"]]
  assert "| single" not in curve


def test_error_table_for_runs_whose_eval_has_error_types(tmp_path, capsys):
  typed = _run_dir(tmp_path, "typed", [0.5])
  with open(f"{typed}/eval/lsp_test.json") as f:
    ev = json.load(f)
  names = list(skeletons.LSP.joint_names)
  ev["error_types"] = {
      "good": {**{n: 0.5 for n in names}, "mean": 0.5},
      "inversion": {**{n: 0.1 for n in names}, "left_wrist": 0.3, "mean": 0.1},
      "jitter": {**{n: 0.3 for n in names}, "mean": 0.3},
      "miss": {**{n: 0.1 for n in names}, "mean": 0.1}}
  with open(f"{typed}/eval/lsp_test.json", "w") as f:
    json.dump(ev, f)
  untyped = _run_dir(tmp_path, "untyped", [0.5])
  assert results_table.main([typed, untyped]) == 0
  table = capsys.readouterr().out.split("| run | good | inversion (left/right) |")[1]
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in table.splitlines()
          if l.startswith("| ") and "---" not in l]
  # Wrists: (0.3 + 0.1) / 2 inverted, 0.3 jitter.
  assert rows == [["typed", "50.0", "10.0", "30.0", "10.0", "20.0", "30.0"]]


def test_missing_eval_file_is_named(tmp_path, capsys):
  run = _run_dir(tmp_path, "broken", [0.5, 0.6])
  (tmp_path / "broken" / "eval" / "lsp_test.json").unlink()
  assert results_table.main([run]) == 2
  assert "lsp_test.json: missing" in capsys.readouterr().err


def test_training_seconds_prefers_the_recorded_wall_time():
  assert results_table.training_seconds(
      [{"step": 5, "steps_per_s": 1.0, "elapsed_s": 42.0}]) == pytest.approx(42.0)


def test_training_seconds_adds_the_segments_of_a_resumed_run():
  # Preempted after 100 s, resumed: the resumed process counts from 0 again.
  records = [{"step": 50, "steps_per_s": 1.0, "elapsed_s": 60.0},
             {"step": 100, "steps_per_s": 1.0, "elapsed_s": 100.0},
             {"step": 100, "eval/PCK@0.2": 0.5},
             {"step": 150, "steps_per_s": 1.0, "elapsed_s": 45.0},
             {"step": 200, "steps_per_s": 1.0, "elapsed_s": 90.0}]
  assert results_table.training_seconds(records) == pytest.approx(190.0)


def test_help_prints_the_usage_and_no_arguments_is_an_error(capsys):
  assert results_table.main(["--help"]) == 0
  assert "results_table" in capsys.readouterr().out
  assert results_table.main([]) == 2
  assert "results_table" in capsys.readouterr().err


def test_columns_follow_the_dataset_joints_not_lsp():
  # LSP keeps its usual columns; MPII's come from its own joints, pairs averaged.
  assert [c for c, _ in results_table.columns_of(skeletons.LSP.joint_names)][:2] == [
      "Head", "Sho."]
  mpii = skeletons.get_skeleton("mpii").joint_names
  columns = dict(results_table.columns_of(list(mpii) + ["mean"]))
  assert set(columns["wrist"]) == {"left_wrist", "right_wrist"}
  assert columns["pelvis"] == ("pelvis",) and "mean" not in columns
  assert sum(len(js) for js in columns.values()) == len(mpii)


def test_a_cascade_stage_folder_is_named_with_its_run(tmp_path, capsys):
  (tmp_path / "cascade").mkdir()
  _run_dir(tmp_path, "cascade/stage1", [0.1])
  run = _run_dir(tmp_path, "cascade/stage2", [0.1, 0.2])
  assert results_table.run_name(run) == "cascade/stage2"
  assert results_table.run_name(str(tmp_path / "cascade")) == "cascade"
  assert results_table.main([run]) == 0
  # Its images and time count stage 1's too: 2 x 40 images, 2 x 30 s.
  assert "| cascade/stage2 | hourglass | 0.13M | 32 | 80 | 1 min |" in capsys.readouterr().out


def test_the_readme_table_is_what_the_documented_command_prints(capsys):
  # docs/results/README.md gives the command; README.md must hold its first table verbatim.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "docs", "results", "README.md")) as f:
    command = re.search(r"python -m experiments\.results_table (docs/results/lsp_hourglass_14k"
                        r"[^`]*?lsp_cpm_sigma1)", f.read()).group(1)
  runs = [os.path.join(repo, r) for r in command.replace("\\", " ").split()]
  assert results_table.main(runs) == 0
  table = capsys.readouterr().out.split("\n\n")[0].strip()
  with open(os.path.join(repo, "README.md")) as f:
    assert table in f.read()
