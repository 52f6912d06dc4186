"""Dataset names -> TFDS builders; building on demand (quietly, once, under a lock).

A dataset name is a builder name with an optional config (`synthetic/tiny`); the pipeline
also accepts a '+' of several (`lsp+lspet`: concatenated, for the usual LSP training set).
The names' skeletons, metrics and default folders are in `jhpe.datasets` (no TFDS import);
they are re-exported here.
"""

import contextlib
import fcntl
import importlib
import logging
import os

import numpy as np

from jhpe.datasets import (DATASETS, FILE_DATASETS, DatasetSpec,  # pylint: disable=unused-import
                           default_data_dir, default_manual_dir, file_safe, get_spec,
                           split_name)


def get_builder(name, data_dir=None, **builder_kwargs):
  """The TFDS builder of dataset `name` (array_record files), not necessarily built."""
  base, config = split_name(name)
  spec = get_spec(name)
  if base in FILE_DATASETS:
    builder_kwargs['spec_path'] = config
  elif config is not None:
    builder_kwargs['config'] = config
  return spec.builder_cls(data_dir=data_dir or default_data_dir(),
                          file_format='array_record', **builder_kwargs)


@contextlib.contextmanager
def _lock(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name, data_dir=None, manual_dir=None, skip_bad_examples=False,
            **builder_kwargs):
  """Builds dataset `name` into `data_dir` unless already built; returns the builder.

  Idempotent and safe against concurrent callers: a file lock serialises builders of
  the same dataset, and TFDS writes into a temporary folder that it renames when done.

  Args:
    name: a dataset name ('lsp', 'synthetic/tiny', ...).
    data_dir: the TFDS data dir (default `default_data_dir()`).
    manual_dir: the folder holding the official archives (default
      `default_manual_dir()`); without it the builder downloads them.
    skip_bad_examples: skip (and count, in `builder.skipped`) examples with a corrupt
      image or a bad annotation instead of raising an error naming them.
    **builder_kwargs: passed to the builder class.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or default_data_dir()
  manual_dir = manual_dir or default_manual_dir()
  builder_kwargs.update(skip_bad_examples=skip_bad_examples, manual_dir=manual_dir)
  with _quiet_tfds():
    builder = get_builder(name, data_dir, **builder_kwargs)
    if builder.is_prepared():
      return builder
  from jhpe.data import preflight  # pylint: disable=g-import-not-at-top
  missing = preflight.missing_input(name, manual_dir)
  if missing:  # One line now, not a download attempt (and its retries) in the builder.
    raise ValueError(missing)
  lock = os.path.join(data_dir, f'.{file_safe(name)}.lock')
  with _lock(lock), _quiet_tfds():
    builder = get_builder(name, data_dir, **builder_kwargs)
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir, try_download_gcs=False))
  return builder


def gt_annotations(name, split, manual_dir=None):
  """The split's COCO-format ground truth (a dict) where the dataset's builder module can
  find its annotation file (`gt_annotations(split, manual_dir, config)`), else None."""
  base, config = split_name(name)
  module = importlib.import_module(get_spec(name).builder.partition(':')[0])
  find = getattr(module, 'gt_annotations', None)
  return find(split, manual_dir or default_manual_dir(), config) if find else None


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's progress bars, its 'Downloading ... Unknown size' banner and its warnings
  about the folders it is writing (e.g. 'has no dataset_info.json') say nothing useful
  about a build from local archives (the builders print their own two lines:
`common.PoseBuilder`)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  logger = logging.getLogger('absl')
  level, bars = logger.level, tqdm_utils._active  # pylint: disable=protected-access
  logger.setLevel(logging.ERROR)
  tqdm_utils.display_progress_bar(False)
  try:
    yield
  finally:
    logger.setLevel(level)
    tqdm_utils.display_progress_bar(bars)


def normaliser(name, fields):
  """Per-person metric normalisers in original pixels (N,) float32, from stored fields.

  Args:
    name: the dataset name.
    fields: dict of stacked arrays: 'joints' (N, J, 2), 'visible' (N, J), and
      'head_box' (N, 4) for MPII, 'area' (N,) for COCO.

  Returns:
    (N,) float32; 0 where undefined (e.g. an LSPET person without both torso joints):
    such a person cannot be scored with this metric.
  """
  from jhpe import metrics, skeletons  # pylint: disable=g-import-not-at-top
  spec = get_spec(name)
  if spec.normaliser == 'torso':
    size = metrics.torso_size(np.asarray(fields['joints']),
                              skeletons.get_skeleton(spec.skeleton),
                              visible=np.asarray(fields['visible']))
  elif spec.normaliser == 'head':
    size = metrics.head_size(np.asarray(fields['head_box']))
  else:
    size = np.sqrt(np.asarray(fields['area'], np.float64))
  return np.nan_to_num(np.asarray(size, np.float64), nan=0.).astype(np.float32)
