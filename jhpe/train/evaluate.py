"""Evaluation: predictions on a dataset split, metrics, eval files, the table, figures.

`evaluate(...)` runs the jitted eval step (flip test, decode, back to original pixels)
over every example of a split and scores it with the dataset's evaluator
(`jhpe.train.evaluators`: PCK@0.2 or PCKh@0.5, strict PCP, error types, stages, curve).
`write_eval_files` (`jhpe.train.eval_files`) writes the workdir contract:

  eval/<dataset>_<split>.json              {'dataset', 'split', 'step', 'checkpoint',
                                            'metric', 'mean', 'per_joint', 'pcp',
                                            'per_stage', 'error_types', ...}
  eval/<dataset>_<split>_predictions.json  [{'id', 'joints' (J, 2) original px,
                                             'confidence' (J,)}, ...]
"""

import math
import os
from typing import Any, Callable, Optional

import jax
import numpy as np

from jhpe import inference
from jhpe import skeletons as skeletons_lib
from jhpe.train import evaluators
# What an evaluation writes lives in eval_files; its names stay importable from here.
from jhpe.train.eval_files import check_writable  # pylint: disable=unused-import
from jhpe.train.eval_files import dataset_tag  # pylint: disable=unused-import
from jhpe.train.eval_files import eval_tag  # pylint: disable=unused-import
from jhpe.train.eval_files import format_table  # pylint: disable=unused-import
from jhpe.train.eval_files import save_figures
from jhpe.train.eval_files import write_eval_files
from jhpe.train import steps as steps_lib
from jhpe.train.config import Config

NUM_GRID_EXAMPLES = 4  # Best and worst examples kept for the figure.


class Preempted(Exception):
  """Raised inside evaluation when SIGTERM or Ctrl-C asks the run to stop."""


def skeleton_of(dataset: str) -> skeletons_lib.Skeleton:
  from jhpe import datasets as registry  # pylint: disable=g-import-not-at-top  # No TFDS.
  return skeletons_lib.get_skeleton(registry.get_spec(dataset).skeleton)


def make_eval_loader(config: Config, dataset: str, split: str):
  """This process's shard of `dataset`/`split` as padded eval batches."""
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_loader(
      dataset, split, data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
      batch_size=config.global_eval_batch_size // jax.process_count(),
      canvas_size=config.input_size, train=False, shard_index=jax.process_index(),
      shard_count=jax.process_count(), skip_bad_examples=config.skip_bad_examples,
      worker_count=config.num_workers)


def _gather(tree):
  """Global arrays -> numpy on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, tree)


def evaluate(variables: dict, model, config: Config, *, dataset: str, split: str,
             mesh=None, num_examples: int = 0, loader=None,
             should_stop: Optional[Callable[[], bool]] = None,
             collect_figures: bool = False, evaluator=None,
             progress: Optional[Callable[[int, int], None]] = None
             ) -> tuple[dict, list, dict]:
  """Predicts every example of `dataset`/`split` and scores it.

  Args:
    variables: {'params', 'batch_stats'} (host or replicated arrays).
    model: the flax module.
    config: the run's Config (input size, decode method, flip test, batch size).
    dataset, split: what to evaluate on.
    mesh: the device mesh (default: all devices).
    num_examples: stop after this many examples (0 = the whole split).
    loader: a `pipeline.Loader` (default: `make_eval_loader`).
    should_stop: polled between batches; True raises `Preempted`.
    collect_figures: keep what the figures need (best/worst canvases, one example's
      stage heatmaps).
    evaluator: default `evaluators.for_dataset(dataset)`. An `OksEvaluator` adds OKS AP
      (`coco_eval.add_oks`); over a `coco_eval.DetectionSource` loader (detected person
      boxes, no matched ground truth per crop) it is the only metric.
    progress: called after each batch with (examples done, examples in all).

  Returns:
    (results, predictions, figure_inputs): results {'metric', 'mean', 'per_joint', 'pcp',
    'num_examples', 'per_stage' [{'stage', 'mean', 'pcp'}], ...}; predictions
    [{'id', 'joints', 'confidence'}]; figure inputs for
    `jhpe.viz.save_eval_figures` ({} unless collect_figures).
  """
  mesh = mesh or steps_lib.make_mesh()
  skeleton = skeleton_of(dataset)
  loader = loader or make_eval_loader(config, dataset, split)
  evaluator = evaluator or evaluators.for_dataset(dataset)
  from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top
  detected = isinstance(loader.source, coco_eval.DetectionSource)
  collect_figures = collect_figures and not detected
  eval_fn = steps_lib.make_eval_step(model, config, skeleton.flip_permutation, mesh)
  variables = steps_lib.replicate_mesh(
      {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
      mesh)
  local_batch = config.global_eval_batch_size // jax.process_count()
  # Every process must run the same number of batches (shards may differ by one).
  total = len(loader.source)
  per_shard = math.ceil(total / jax.process_count())
  num_batches = math.ceil(per_shard / local_batch)
  if num_examples:
    num_batches = min(num_batches, math.ceil(num_examples / config.global_eval_batch_size))
  num_people = min(total, num_examples) if num_examples else total
  outs = []
  grid = []  # (score, canvas, pred canvas px, gt canvas px, visible, index)
  it = iter(loader)
  padding = None
  for _ in range(num_batches):
    if should_stop is not None and should_stop():
      raise Preempted()
    try:
      batch = next(it)
    except StopIteration:
      if padding is None:  # A shorter shard: feed batches that count for nothing.
        padding = jax.tree.map(np.zeros_like, last_batch)
        padding["index"] = np.full_like(padding["index"], -1)
      batch = padding
    last_batch = batch  # The shapes of this shard's padding batches, if it runs out.
    out = _gather(eval_fn(variables, steps_lib.global_batch(batch, mesh)))
    host = _gather(steps_lib.global_batch(
        {k: batch[k] for k in ("visible", "normaliser", "index", "valid")}, mesh))
    outs.append({**out, **host})
    if collect_figures and jax.process_index() == 0:
      # The gathered arrays hold every process's rows in process order; the grid pairs
      # them with this process's own batch (its canvases), so it takes this process's rows.
      _keep_grid_examples(grid, batch, _local_rows(out, local_batch), evaluator)
    if progress is not None:
      progress(min(len(outs) * config.global_eval_batch_size, num_people), num_people)
  res = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  keep = (res["valid"] > 0) & (res["index"] >= 0)
  if num_examples:
    keep &= np.cumsum(keep) <= num_examples
  res = {k: v[keep] for k, v in res.items()}
  if not len(res["index"]):
    raise ValueError(f"{dataset!r} split {split!r}: no example to evaluate.")
  # People whose normaliser is undefined (0) cannot be scored by this metric.
  visible = res["visible"] * (res["normaliser"] > 0)[:, None]
  pred, gt = res["joints"], res["gt_joints"]

  results = {
      "dataset": dataset, "split": split,
      **({} if detected else evaluator.score(pred, gt, visible, res["normaliser"], skeleton,
                                             stage_joints=res["stage_joints"])),
      "num_examples": int(len(res["index"])),
      "flip_test": config.flip_test, "decode": config.decode,
      "test_scales": list(config.test_scales),
  }
  try:
    ids = loader.ids()
  except Exception:  # pylint: disable=broad-except  # Ids are a convenience.
    ids = None
  predictions = [
      {"id": ids[i] if ids is not None else str(i), "index": int(i),
       "joints": np.round(p.astype(np.float64), 2).tolist(),
       "confidence": np.round(c.astype(np.float64), 4).tolist()}
      for i, p, c in zip(res["index"].tolist(), pred, res["confidence"])]
  if isinstance(evaluator, evaluators.OksEvaluator):
    coco_eval.add_oks(results, predictions, evaluator, dataset=dataset, split=split,
                      source=loader.source, index=res["index"], joints=pred,
                      confidence=res["confidence"], skeleton=skeleton,
                      manual_dir=config.manual_dir or None)
  figure_inputs = {}
  if collect_figures and grid:
    figure_inputs = _figure_inputs(grid, ids, variables, model, config, skeleton,
                                   results, evaluator)
  return results, predictions, figure_inputs


def _local_rows(tree, local_batch: int):
  """This process's rows (local_batch, ...) of gathered global arrays (B_global, ...)."""
  start = jax.process_index() * local_batch
  return jax.tree.map(lambda x: x[start:start + local_batch], tree)


def _keep_grid_examples(grid, batch, out, evaluator):
  """Keeps the NUM_GRID_EXAMPLES best and worst examples (canvas coordinates).

  Args:
    grid: the kept examples so far (updated in place).
    batch: this process's host batch (B, ...).
    out: the eval step's outputs for the same B examples (`joints`, `gt_joints`).
    evaluator: scores each example (`jhpe.train.evaluators`).
  """
  to_canvas = np.linalg.inv(batch["canvas_to_original"].astype(np.float64))
  pred_c = np.einsum("bij,bkj->bki", to_canvas[:, :2, :2], out["joints"]) + \
      to_canvas[:, None, :2, 2]
  scores = evaluator.example_scores(out["joints"], out["gt_joints"], batch["visible"],
                                    batch["normaliser"])
  for b in range(len(scores)):
    if batch["valid"][b] > 0 and batch["index"][b] >= 0 and batch["normaliser"][b] > 0:
      grid.append((float(scores[b]), batch["image"][b], pred_c[b], batch["joints"][b],
                   batch["visible"][b], int(batch["index"][b])))
  grid.sort(key=lambda g: g[0])
  if len(grid) > 2 * NUM_GRID_EXAMPLES:
    del grid[NUM_GRID_EXAMPLES:len(grid) - NUM_GRID_EXAMPLES]


def _figure_inputs(grid, ids, variables, model, config, skeleton, results, evaluator):
  """Arguments of `jhpe.viz.save_eval_figures` (canvas pixels throughout)."""
  order = sorted(grid, key=lambda g: -g[0])
  inputs = dict(
      images=np.stack([g[1] for g in order]), preds=np.stack([g[2] for g in order]),
      gts=np.stack([g[3] for g in order]), visible=np.stack([g[4] for g in order]),
      scores=np.array([g[0] for g in order]),
      ids=[ids[g[5]] if ids else str(g[5]) for g in order],
      pck_alphas=np.asarray(results["pck_curve"]["alphas"]),
      pck_values_by_model={config.model: np.asarray(
          [np.nan if v is None else v for v in results["pck_curve"]["mean"]])},
      metric_name=evaluator.short_name, model_name=config.model,
      best_and_worst=min(NUM_GRID_EXAMPLES, len(order) // 2) or 1)
  if model.output_kind == "heatmap":
    canvas = order[0][1]
    images = inference.images_to_float(canvas[None])
    stages = model.apply(jax.tree.map(np.asarray, variables), images, train=False)
    num_joints = skeleton.num_joints
    inputs["heatmap_example"] = (
        canvas, [np.asarray(s[0, ..., :num_joints], np.float32) for s in stages],
        order[0][2])
  return inputs


def evaluate_workdir(workdir: str, *, which: Any = "latest", dataset: Optional[str] = None,
                     split: Optional[str] = None, num_examples: int = 0,
                     overrides: Optional[dict] = None, figures: bool = True,
                     person_boxes: Optional[str] = None, box_score_threshold: float = 0.0,
                     oks_nms_threshold: float = 0.9,
                     should_stop: Optional[Callable[[], bool]] = None,
                     progress: Optional[Callable[[int, int], None]] = None,
                     out_dir: Optional[str] = None) -> dict:
  """Evaluates a workdir's checkpoint ('latest', 'best' or a step) on any dataset split.

  Writes <out_dir>/eval/<dataset>_<split>.json and the predictions file (and figures/);
  `out_dir` defaults to the workdir (another folder for a read-only workdir). Returns the
  results (`results['files']`: the paths written). `should_stop` is polled between batches:
  True raises `Preempted` before anything is written. OKS AP datasets (COCO):
  `person_boxes`, a COCO results file of detected person boxes (those scored >=
  `box_score_threshold`), replaces the ground-truth boxes (files tagged
  `_detected_boxes`); `oks_nms_threshold` is OKS-NMS's (>= 1: off).

  Raises:
    ValueError: no config.json; an unknown dataset or split; a dataset whose skeleton is
      not the one the model predicts. CheckpointError (a ValueError): no checkpoint, or
      one that does not fit the config. All before anything is written.
  """
  from jhpe.train import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  trained_with = config_lib.load_config(workdir)
  config = trained_with.replace(**(overrides or {}))
  dataset = dataset or config.dataset
  split = split or config.eval_split
  # The model's outputs are the joints of the dataset it was trained for: another
  # skeleton would be scored joint by joint against the wrong joints.
  trained = config_lib.skeleton_of(config)
  target = skeleton_of(dataset)  # ValueError naming an unknown dataset.
  if target.name != trained.name:
    raise ValueError(
        f"dataset {dataset!r}: its skeleton {target.name!r} ({target.num_joints} joints) "
        f"is not the model's {trained.name!r} ({trained.num_joints} joints, trained for "
        f"{config.dataset!r}) in {workdir}; evaluate on a dataset with the "
        f"{trained.name!r} skeleton.")
  overrides = {**(overrides or {}), "dataset": dataset, "eval_split": split}
  config.replace(**overrides).validate(num_devices=jax.device_count(),
                                       num_processes=jax.process_count())
  from jhpe.data import preflight  # pylint: disable=g-import-not-at-top
  preflight.check_split(dataset, split, data_dir=config.data_dir or None,
                        manual_dir=config.manual_dir or None)
  from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top
  evaluator, loader = coco_eval.evaluator_and_loader(
      config.replace(**overrides), target, person_boxes, box_score_threshold,
      oks_nms_threshold)
  config, model, variables, step = ckpt.load_model(workdir, which, overrides)
  out_dir = out_dir or workdir
  if jax.process_index() == 0:
    check_writable(out_dir)
  path = os.path.join(ckpt.checkpoint_dir(workdir), str(step))
  results, predictions, figure_inputs = evaluate(
      variables, model, config, dataset=dataset, split=split, num_examples=num_examples,
      collect_figures=figures, loader=loader, evaluator=evaluator,
      should_stop=should_stop, progress=progress)
  results.update(step=step, checkpoint=path)
  # Another decoding or flip test than the run's own goes to files of its own, so the
  # run's evaluation is never overwritten by a variant of it.
  variant = ""
  if config.decode != trained_with.decode:
    variant += f"_{config.decode}"
  if config.flip_test != trained_with.flip_test:
    variant += "_flip" if config.flip_test else "_noflip"
  if tuple(config.test_scales) != tuple(trained_with.test_scales):
    variant += "_scales" + "-".join(f"{s:g}" for s in config.test_scales)
  variant += ("_detected_boxes" if person_boxes else "") + (
      f"_oksnms{oks_nms_threshold:g}" if oks_nms_threshold != 0.9 else "")
  if variant:
    results["variant"] = variant
  if jax.process_index() == 0:
    paths = write_eval_files(out_dir, results, predictions)
    drawn = save_figures(out_dir, results, figure_inputs)
    results = {**results, "files": [*paths, *drawn.values()]}
  return results
