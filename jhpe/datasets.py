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

# Datasets named by a file: 'coco_format:PATH/spec.json' (any COCO-format keypoint set and
# its keypoint set description; jhpe/data/builders/coco_format.py). The skeleton is the file.
FILE_DATASETS = {
    'coco_format': DatasetSpec('jhpe.data.builders.coco_format:CocoFormat', '', 'area',
                               'oks_ap', 'validation'),
}


def split_name(name):
  """'synthetic/tiny' -> ('synthetic', 'tiny'); 'lsp' -> ('lsp', None);
  'coco_format:PATH' -> ('coco_format', PATH) (the file must exist)."""
  base, sep, path = name.partition(':')
  if sep and base in FILE_DATASETS:
    if not os.path.isfile(path):
      raise ValueError(f'dataset {name!r}: the description file {path!r} does not exist '
                       f'(expected {base}:PATH/spec.json).')
    return base, path
  base, _, config = name.partition('/')
  if base not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {sorted(DATASETS)} '
                     "(optionally with a config, e.g. 'synthetic/tiny', or joined by '+'), "
                     'or coco_format:PATH/spec.json (a COCO-format keypoint set).')
  return base, (config or None)


def get_spec(name):
  base, config = split_name(name)
  if base in FILE_DATASETS:
    return dataclasses.replace(FILE_DATASETS[base], skeleton=os.path.abspath(config))
  return DATASETS[base]


def file_safe(name):
  """A dataset name as a file-name part: 'coco_format:/a/mouse.json' -> 'coco_format_mouse'."""
  base, sep, path = name.partition(':')
  if sep and base in FILE_DATASETS:
    name = f'{base}_{os.path.splitext(os.path.basename(path))[0]}'
  return name.replace('/', '_').replace('+', '_')


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
