"""Dataset names -> TFDS builder, skeleton and metric normaliser; building on demand.

A dataset name is a builder name with an optional config (`synthetic/tiny`); the pipeline
also accepts a '+' of several (`lsp+lspet`: concatenated, for the usual LSP training set).
"""

import contextlib
import dataclasses
import fcntl
import importlib
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the rest of jhpe needs to know about a dataset.

  Importing this module is light: the builders (which import tensorflow_datasets) are named
  by their import path and loaded on first use of `builder_cls`, so the predictor and the
  train step can ask for a skeleton or a metric without TFDS.

  Attributes:
    builder: 'module:Class' of the TFDS builder (`builder_cls` imports it).
    skeleton: name for `jhpe.skeletons.get_skeleton`.
    normaliser: the per-person metric normaliser: 'torso' (PCK, LSP), 'head' (PCKh,
      0.6 x the head box diagonal, MPII) or 'area' (sqrt of the instance area, COCO).
    metric: the headline metric.
    eval_split: the split the papers report on.
  """
  builder: str
  skeleton: str
  normaliser: str
  metric: str
  eval_split: str

  @property
  def builder_cls(self) -> type:
    module, _, name = self.builder.partition(':')
    return getattr(importlib.import_module(module), name)


DATASETS = {
    'lsp': DatasetSpec('jhpe.data.builders.lsp:Lsp', 'lsp', 'torso', 'pck@0.2', 'test'),
    'lspet': DatasetSpec('jhpe.data.builders.lsp:Lspet', 'lsp', 'torso', 'pck@0.2', 'train'),
    'mpii': DatasetSpec('jhpe.data.builders.mpii:Mpii', 'mpii', 'head', 'pckh@0.5', 'validation'),
    'coco_keypoints': DatasetSpec('jhpe.data.builders.coco_keypoints:CocoKeypoints', 'coco', 'area',
                                  'oks_ap', 'validation'),
    'synthetic': DatasetSpec('jhpe.data.builders.synthetic:Synthetic', 'lsp', 'torso', 'pck@0.2',
                             'test'),
}

def split_name(name):
  """'synthetic/tiny' -> ('synthetic', 'tiny'); 'lsp' -> ('lsp', None)."""
  base, _, config = name.partition('/')
  if base not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {sorted(DATASETS)} '
                     "(optionally with a config, e.g. 'synthetic/tiny', or joined by '+').")
  return base, (config or None)


def get_spec(name):
  return DATASETS[split_name(name)[0]]


def default_data_dir():
  """Where built datasets live: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get('TFDS_DATA_DIR',
                        os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def default_manual_dir():
  """../shared/data next to the repository when it exists (the archives at hand)."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.path.join(os.path.dirname(repo), 'shared', 'data')
  return path if os.path.isdir(path) else None


def get_builder(name, data_dir=None, **builder_kwargs):
  """The TFDS builder of dataset `name` (array_record files), not necessarily built."""
  base, config = split_name(name)
  spec = DATASETS[base]
  if config is not None:
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
  builder = get_builder(name, data_dir, **builder_kwargs)
  if builder.is_prepared():
    return builder
  from jhpe.data import preflight  # pylint: disable=g-import-not-at-top
  missing = preflight.missing_input(name, manual_dir)
  if missing:  # One line now, not a download attempt (and its retries) in the builder.
    raise ValueError(missing)
  lock = os.path.join(data_dir, f'.{name.replace("/", "_")}.lock')
  with _lock(lock):
    builder = get_builder(name, data_dir, **builder_kwargs)
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir, try_download_gcs=False))
  return builder


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
