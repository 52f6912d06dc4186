"""The host side of the input pipeline: TFDS array_record -> grain -> canvas batches.

The host only reads, decodes and cuts a fixed canvas around each person (with
`jhpe.inference.load_canvas`, the predictor's crop too); the random
augmentation (affine warp, flip, colour) and the target heatmaps run on the device inside
the jitted step (`jhpe.train.augment`, `jhpe.heatmaps`). No TensorFlow is needed: examples
come from `builder.as_data_source` (array_record files) and grain batches them.

A batch (docs/design.md) is a dict of numpy arrays:

  image               uint8 (B, S, S, 3)  the canvas
  joints              float32 (B, J, 2)   canvas pixels
  visible             float32 (B, J)
  canvas_to_original  float32 (B, 3, 3)   canvas pixels -> original-image pixels
  normaliser          float32 (B,)        the metric's person size, original pixels
                                          (0 where undefined)
  index               int32 (B,)          position in the split (-1 for padding)
  valid               float32 (B,)        0 for the padding of the last eval batch

Training batches shuffle (seeded, reshuffled every epoch) and drop the remainder; eval
batches visit every example of the split (or of this shard) exactly once, in split order,
padding the last batch. The iterator is grain's: `it = iter(loader)`, `it.get_state()`,
`it.set_state(state)` resume exactly (the host side has no randomness of its own).
"""

import dataclasses
import logging
import math

import grain
import numpy as np

from jhpe import geometry
from jhpe import inference
from jhpe.data import registry


class ConcatSource:
  """Random access over one or several TFDS data sources, one after the other."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, index):
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range [0, {len(self)}).')
    k = int(np.searchsorted(self.offsets, index, side='right') - 1)
    return self.sources[k][int(index - self.offsets[k])]


def _names(dataset):
  names = [n for n in dataset.split('+') if n]
  if not names:
    raise ValueError(f'dataset must name at least one dataset, got {dataset!r}.')
  for n in names:
    registry.split_name(n)
  return names


def data_source(dataset, split, *, data_dir=None, prepare=True, manual_dir=None,
                skip_bad_examples=False):
  """Random access to the stored examples of `dataset` ('lsp', 'lsp+lspet', ...) / split.

  Builds the datasets first when `prepare` (idempotent: a built dataset is reused).
  """
  sources = []
  for name in _names(dataset):
    if prepare:
      builder = registry.prepare(name, data_dir, manual_dir,
                                 skip_bad_examples=skip_bad_examples)
    else:
      builder = registry.get_builder(name, data_dir)
    if split not in builder.info.splits:
      raise ValueError(f'Dataset {name!r} has no split {split!r}; it has '
                       f'{sorted(builder.info.splits)}.')
    sources.append(builder.as_data_source(split=split))
  return ConcatSource(sources)


def _text(x):
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def annotations(dataset, split, *, data_dir=None, source=None):
  """The split's annotations in split order, without decoding images.

  Returns:
    dict of stacked arrays: 'id' (list of str), 'joints' (N, J, 2) original pixels,
    'visible' (N, J), 'center' (N, 2), 'scale' (N,), 'normaliser' (N,), plus the
    dataset's extra fields ('occluded', 'head_box', 'bbox', 'area', ...).
  """
  source = source or data_source(dataset, split, data_dir=data_dir)
  records = [source[i] for i in range(len(source))]
  out = {'id': [_text(r['id']) for r in records]}
  keys = set(records[0]) if records else set()
  for key in sorted(keys - {'id', 'image'}):
    if all(key in r for r in records):
      out[key] = np.stack([np.asarray(r[key]) for r in records])
  norms = []
  for name, part in _split_by_dataset(dataset, source, records):
    norms.append(registry.normaliser(name, part))
  out['normaliser'] = np.concatenate(norms) if norms else np.zeros((0,), np.float32)
  return out


def _split_by_dataset(dataset, source, records):
  names = _names(dataset)
  for k, name in enumerate(names):
    part = records[source.offsets[k]:source.offsets[k + 1]]
    if part:
      yield name, {key: np.stack([np.asarray(r[key]) for r in part])
                   for key in part[0] if key not in ('id', 'image')}


@dataclasses.dataclass
class HostTransform:
  """Position in the split -> one canvas example (see the module docstring)."""
  source: object
  dataset: str
  split: str
  canvas_size: int
  names_offsets: tuple  # ((name, start, stop), ...) for the per-dataset normaliser
  skip_bad_examples: bool = False
  pad_invalid: bool = False  # eval: a skipped example becomes a valid = 0 entry

  def __post_init__(self):
    self.skipped = []

  def _name_of(self, index):
    for name, start, stop in self.names_offsets:
      if start <= index < stop:
        return name
    raise IndexError(index)

  def padding(self, num_joints):
    s = self.canvas_size
    return dict(image=np.zeros((s, s, 3), np.uint8),
                joints=np.zeros((num_joints, 2), np.float32),
                visible=np.zeros((num_joints,), np.float32),
                canvas_to_original=np.eye(3, dtype=np.float32),
                normaliser=np.float32(0.), index=np.int32(-1), valid=np.float32(0.))

  def __call__(self, index):
    index = int(index)
    if index < 0:
      return self.padding(self.num_joints)
    record = self.source[index]
    where = (f'dataset {self.dataset!r} split {self.split!r} index {index} '
             f'(id {_text(record.get("id", "?"))!r})')
    try:
      return self._example(index, record, where)
    except ValueError as e:
      if not self.skip_bad_examples:
        raise ValueError(f'{e} Pass skip_bad_examples=True to skip and count such '
                         'examples.') from e
      self.skipped.append(str(e))
      logging.warning('Skipping a bad example (%d so far): %s', len(self.skipped), e)
      if self.pad_invalid:
        return self.padding(self.num_joints)
      return None

  @property
  def num_joints(self):
    return int(np.asarray(self.source[0]['joints']).shape[0])

  def _example(self, index, record, where):
    joints = np.asarray(record['joints'], np.float64)
    visible = np.asarray(record['visible'], np.float32)
    center = np.asarray(record['center'], np.float64)
    scale = float(record['scale'])
    if not (np.all(np.isfinite(center)) and np.isfinite(scale) and scale > 0):
      raise ValueError(f'{where}: bad person box (center {center.tolist()}, scale {scale}).')
    if not np.any(visible > 0):
      raise ValueError(f'{where}: no annotated joint (all invisible).')
    # The crop the predictor makes too (jhpe.inference): one way from a file to a canvas.
    canvas, m = inference.load_canvas(record['image'], center, scale, self.canvas_size, where)
    canvas_joints = geometry.apply_affine(m, joints)
    fields = {k: np.asarray(v)[None] for k, v in record.items() if k not in ('id', 'image')}
    normaliser = registry.normaliser(self._name_of(index), fields)[0]
    return dict(image=canvas,
                joints=np.where(visible[:, None] > 0, canvas_joints, 0.).astype(np.float32),
                visible=visible,
                canvas_to_original=np.linalg.inv(m).astype(np.float32),
                normaliser=np.float32(normaliser),
                index=np.int32(index),
                valid=np.float32(1.))


class Loader:
  """An iterable of batches (grain IterDataset) and what callers need to know about it.

  Attributes:
    dataset: the grain IterDataset; `iter(loader)` gives a checkpointable iterator.
    num_examples: examples in this shard of the split.
    num_batches: batches per pass (eval: all examples once, padded; train: per epoch).
    skipped: messages of the examples skipped under `skip_bad_examples` (counted in this
      process; with worker_count > 0 they are logged by the workers).
  """

  def __init__(self, dataset, source, transform, num_examples, num_batches):
    self.dataset = dataset
    self.source = source
    self._transform = transform
    self.num_examples = num_examples
    self.num_batches = num_batches

  def __iter__(self):
    return iter(self.dataset)

  @property
  def skipped(self):
    return list(self._transform.skipped)

  def ids(self):
    """The example ids of the whole split, in split order (index -> id)."""
    return [_text(self.source[i]['id']) for i in range(len(self.source))]


def make_loader(dataset, split, *, data_dir=None, batch_size, canvas_size, train, seed=0,
                num_epochs=None, shard_index=0, shard_count=1, skip_bad_examples=False,
                worker_count=0, manual_dir=None, prefetch_buffer_size=2, source=None):
  """A grain loader of canvas batches (see the module docstring for the batch).

  Args:
    dataset: a dataset name or several joined by '+' ('lsp+lspet').
    split: 'train', 'test', ...
    data_dir: the TFDS data dir (built there on first use).
    batch_size: examples per batch on this host.
    canvas_size: S, the canvas side in pixels.
    train: shuffle (seeded, reshuffled each epoch), repeat `num_epochs` (None = forever)
      and drop the remainder; else one ordered pass with a padded last batch.
    seed: the shuffle seed.
    num_epochs: training epochs (None = forever); ignored for eval.
    shard_index, shard_count: this host's share (examples shard_index::shard_count).
    skip_bad_examples: skip (train) or pad with valid = 0 (eval) undecodable or badly
      annotated examples, counted in `loader.skipped`, instead of raising an error that
      names them.
    worker_count: grain worker processes (0 = decode in the main process).
    manual_dir: where the official archives are (building only).
    prefetch_buffer_size: batches prefetched by each worker (worker_count > 0).
    source: random access over records to use instead of the built split (e.g. the
      person crops of detected boxes, `jhpe.train.coco_eval`).

  Returns:
    A `Loader`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if canvas_size < 8:
    raise ValueError(f'canvas_size must be >= 8 pixels, got {canvas_size}.')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index must be in [0, shard_count={shard_count}), got '
                     f'{shard_index}.')
  if source is None:
    source = data_source(dataset, split, data_dir=data_dir, manual_dir=manual_dir,
                         skip_bad_examples=skip_bad_examples)
    names = _names(dataset)
    names_offsets = tuple((n, int(source.offsets[k]), int(source.offsets[k + 1]))
                          for k, n in enumerate(names))
  else:
    names_offsets = ((dataset, 0, len(source)),)
  transform = HostTransform(source, dataset, split, canvas_size, names_offsets,
                            skip_bad_examples, pad_invalid=not train)
  indices = grain.MapDataset.range(len(source))[shard_index::shard_count]
  n = len(indices)
  if n == 0:
    raise ValueError(f'{dataset!r} split {split!r} shard {shard_index}/{shard_count} '
                     'holds no example.')
  if train:
    if n < batch_size:
      raise ValueError(f'batch_size {batch_size} exceeds the {n} training examples of '
                       f'{dataset!r} {split!r} (shard {shard_index}/{shard_count}).')
    ds = indices.shuffle(seed).repeat(num_epochs).map(transform).to_iter_dataset()
    ds = ds.batch(batch_size, drop_remainder=True)
    num_batches = n // batch_size
  else:
    num_batches = math.ceil(n / batch_size)
    pad = num_batches * batch_size - n
    padded = grain.MapDataset.concatenate(
        [indices, grain.MapDataset.source([-1] * pad)]) if pad else indices
    ds = padded.map(transform).batch(batch_size).to_iter_dataset()
  if worker_count > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # grain's workers read its absl flags; outside an absl app (a script, a test)
      # nobody parsed them: use their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch_buffer_size))
  return Loader(ds, source, transform, n, num_batches)
