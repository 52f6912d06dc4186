"""Datasets: TFDS builders (`builders/`), the registry and the host input pipeline (grain).

Importing `jhpe.data` registers the builders with TFDS (it imports tensorflow_datasets,
not TensorFlow), so TFDS's own API knows them:

  import jhpe.data, tensorflow_datasets as tfds
  builder = tfds.builder("lsp", data_dir=D)   # array_record files: no TensorFlow needed
  builder.download_and_prepare()              # archives from manual_dir (jhpe.datasets)

What only needs a dataset's skeleton, metric or folders (the predictor, the train step)
imports `jhpe.datasets` instead, which loads no TFDS. Device augmentation lives with the
train step (`jhpe.train.augment`).
"""

# Registration is the import: each builder class registers its name ('lsp', 'lspet',
# 'mpii', 'coco_keypoints', 'synthetic') with TFDS when its module is imported.
from jhpe.data.builders import coco_keypoints as _coco_keypoints  # pylint: disable=unused-import
from jhpe.data.builders import lsp as _lsp  # pylint: disable=unused-import
from jhpe.data.builders import mpii as _mpii  # pylint: disable=unused-import
from jhpe.data.builders import synthetic as _synthetic  # pylint: disable=unused-import


def prepare(name, data_dir=None, manual_dir=None, **kwargs):
  """Builds dataset `name` unless built; see `jhpe.data.registry.prepare`."""
  from jhpe.data import registry  # pylint: disable=g-import-not-at-top
  return registry.prepare(name, data_dir, manual_dir, **kwargs)


def make_loader(dataset, split, **kwargs):
  """A grain loader of canvas batches; see `jhpe.data.pipeline.make_loader`."""
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_loader(dataset, split, **kwargs)
