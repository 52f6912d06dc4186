"""Datasets: TFDS builders (`builders/`), the registry and the host input pipeline (grain).

Importing `jhpe.data` stays light: the builders (which import tensorflow_datasets) load
on first use of `prepare`, `make_loader` or the submodules. Device augmentation
lives with the train step (`jhpe.train.augment`).
"""


def prepare(name, data_dir=None, manual_dir=None, **kwargs):
  """Builds dataset `name` unless built; see `jhpe.data.registry.prepare`."""
  from jhpe.data import registry  # pylint: disable=g-import-not-at-top
  return registry.prepare(name, data_dir, manual_dir, **kwargs)


def make_loader(dataset, split, **kwargs):
  """A grain loader of canvas batches; see `jhpe.data.pipeline.make_loader`."""
  from jhpe.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_loader(dataset, split, **kwargs)
