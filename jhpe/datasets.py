"""Dataset names -> skeleton, metric normaliser, evaluation split; the default folders.

Light (no TFDS, no grain): the predictor and the train step ask here for a skeleton or a
metric. The TFDS builders are in `jhpe.data` (`import jhpe.data` registers them with TFDS).

Folders:
  data_dir    built datasets: --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets
  manual_dir  the official archives (lsp_dataset.zip, ...): --manual_dir, else
              $JHPE_MANUAL_DIR, else ../shared/data beside the repository when it exists,
              else TFDS's <data_dir>/downloads/manual
"""

import dataclasses
import importlib
import os

MANUAL_DIR_ENV = 'JHPE_MANUAL_DIR'


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
  """Where the official archives are: $JHPE_MANUAL_DIR, else ../shared/data beside the
  repository when it exists, else None (TFDS's <data_dir>/downloads/manual)."""
  if os.environ.get(MANUAL_DIR_ENV):
    return os.environ[MANUAL_DIR_ENV]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(os.path.dirname(repo), 'shared', 'data')
  return path if os.path.isdir(path) else None
