"""Is a dataset split there to read, or buildable from the files at hand? Asked up front.

A run needs its training split and its evaluation split; finding out that the evaluation
one is missing (a typo'd --eval_split, an absent archive) only when the first evaluation
starts loses the training before it. `check_split` answers without building anything:
a built dataset knows its splits; an unbuilt one is buildable when the files its builder
reads are in the manual folder (`INPUTS`). jhpe builds these datasets from the official
files placed by hand (the addresses are dead or need a registration), so a missing file
is one line naming it, the folder searched and where to get it, never a download retry
loop.
"""

import os

from jhpe.data import registry

# The splits each builder writes (an unbuilt builder cannot say).
SPLITS = {
    'lsp': ('train', 'test'),
    'lspet': ('train',),
    'mpii': ('train', 'validation'),
    'coco_keypoints': ('train', 'validation'),
    'synthetic': ('train', 'test'),
}

# The files (relative to the manual folder) a build reads: each entry a tuple of
# alternatives, one of which must exist. The builders' MANUAL_DOWNLOAD_INSTRUCTIONS say
# where to get them.
INPUTS = {
    'lsp': (('lsp_dataset.zip',),),
    'lspet': (('lspet_dataset.zip',),),
    'mpii': (('annot/train.json',), ('annot/valid.json',), ('annot/gt_valid.mat',),
             ('images', 'mpii_human_pose_v1/images', 'mpii_human_pose_v1.tar.gz')),
    'coco_keypoints': (('annotations', 'annotations_trainval2017.zip'),),
    'synthetic': (),
}


def missing_input(name, manual_dir=None):
  """One line naming the first file a build of `name` needs that is absent, or None."""
  base, _ = registry.split_name(name)
  folder = manual_dir or registry.default_manual_dir()
  for alternatives in INPUTS.get(base, ()):
    if folder and any(os.path.exists(os.path.join(folder, a)) for a in alternatives):
      continue
    where = (f'in {folder} (--manual_dir)' if folder else
             'anywhere: --manual_dir is unset and ../shared/data (the default) is absent')
    either = ' or '.join(repr(a) for a in alternatives)
    how = getattr(registry.get_spec(name).builder_cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')
    return (f'dataset {name!r} is not built and needs {either}, not found {where}. '
            f'{how} Then pass --manual_dir=that folder.').strip()
  return None


def check_split(name, split, *, data_dir=None, manual_dir=None, split_flag='split'):
  """Raises ValueError (one line) unless `name`'s `split` is built or buildable here."""
  builder = registry.get_builder(name, data_dir)
  prepared = builder.is_prepared()
  splits = (sorted(builder.info.splits) if prepared
            else list(SPLITS.get(registry.split_name(name)[0], (split,))))
  if split not in splits:
    raise ValueError(f'--{split_flag}={split!r}: dataset {name!r} has no such split; it '
                     f'has {", ".join(splits)}.')
  if not prepared:
    message = missing_input(name, manual_dir)
    if message:
      raise ValueError(message)


def check_config(config):
  """The training and evaluation splits of a `Config` (`check_split` on each dataset)."""
  kwargs = dict(data_dir=config.data_dir or None, manual_dir=config.manual_dir or None)
  for name in config.train_datasets:
    check_split(name, config.train_split, split_flag='train_split', **kwargs)
  check_split(config.dataset, config.eval_split, split_flag='eval_split', **kwargs)
