"""Any COCO-format keypoint set as a TFDS builder: `--dataset=coco_format:PATH/spec.json`.

The description file names the keypoint set (`jhpe.skeletons.load_skeleton`) and, per
split, a COCO-format annotation JSON and the folder of its images (paths relative to the
description file):

  {"name": "mouse", "keypoints": [...], "flip_pairs": [...], "limbs": [...],
   "oks_sigmas": [...], "category_id": 1,
   "splits": {"train": {"annotations": "train.json", "images": "images"},
              "validation": {"annotations": "val.json", "images": "images"}}}

One example per instance of `category_id` (default: the annotation file's category that
lists as many keypoints as the set has, else 1) with `iscrowd` 0 and `num_keypoints` > 0,
stored as COCO keypoints are (`coco_keypoints`). Its metrics: OKS AP with the set's sigmas
and PCK@0.2 of sqrt(area). The built dataset lives under <data_dir>/coco_format/<config>,
the config named after the description file and a hash of it and of the annotation files'
sizes and times: editing them builds anew.
"""

import hashlib
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from jhpe import skeletons
from jhpe.data.builders import coco_keypoints
from jhpe.data.builders import common

SPLIT_NAMES = ('train', 'validation', 'test')


def read_spec(path):
  """The description file -> {'skeleton', 'category_id', 'splits': {split: (annotation
  path, images folder)}}; ValueError naming the file and what is wrong."""
  path = os.path.abspath(path)
  skeleton = skeletons.load_skeleton(path)  # Names the file on a bad keypoint set.
  with open(path) as f:
    spec = json.load(f)
  base = os.path.dirname(path)
  splits = {}
  for split, entry in (spec.get('splits') or {}).items():
    if split not in SPLIT_NAMES or not isinstance(entry, dict) or not {
        'annotations', 'images'} <= set(entry):
      raise ValueError(f'{path}: splits.{split} must be one of {SPLIT_NAMES} with '
                       '{"annotations": FILE, "images": FOLDER}.')
    ann, images = (os.path.join(base, entry[k]) for k in ('annotations', 'images'))
    for what, p, ok in (('annotations', ann, os.path.isfile), ('images', images,
                                                               os.path.isdir)):
      if not ok(p):
        raise ValueError(f'{path}: splits.{split}.{what} {p!r} does not exist.')
    splits[split] = (ann, images)
  if not splits:
    raise ValueError(f'{path}: no "splits" ({{"train": {{"annotations": ..., "images": '
                     '...}}, ...}).')
  return dict(skeleton=skeleton, category_id=spec.get('category_id'), splits=splits)


def config_name(path):
  """A TFDS config name for the description file: its stem and a content hash."""
  path = os.path.abspath(path)
  digest = hashlib.sha1(path.encode())
  with open(path, 'rb') as f:
    digest.update(f.read())
  for ann, _ in read_spec(path)['splits'].values():
    st = os.stat(ann)
    digest.update(f'{ann}:{st.st_size}:{st.st_mtime_ns}'.encode())
  stem = re.sub(r'[^a-z0-9_]', '_', os.path.splitext(os.path.basename(path))[0].lower())
  return f'{stem}_{digest.hexdigest()[:10]}'


def _category(coco, num_joints, given):
  if given is not None:
    return int(given)
  for c in coco.get('categories', ()):
    if len(c.get('keypoints', ())) == num_joints:
      return int(c['id'])
  return 1


class CocoFormat(coco_keypoints.CocoKeypoints):
  """A COCO-format keypoint set named by its description file (module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def __init__(self, *, spec_path, **kwargs):
    self.spec_path = os.path.abspath(spec_path)
    self.spec = read_spec(self.spec_path)
    kwargs['config'] = tfds.core.BuilderConfig(name=config_name(self.spec_path))
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(
        description=f'COCO-format keypoints {self.spec["skeleton"].name} '
                    f'({self.spec_path}).',
        features=common.pose_features(
            self.spec['skeleton'].num_joints,
            bbox=tfds.features.Tensor(shape=(4,), dtype=np.float32),
            area=tfds.features.Tensor(shape=(), dtype=np.float32),
            image_id=tfds.features.Tensor(shape=(), dtype=np.int64),
            annotation_id=tfds.features.Tensor(shape=(), dtype=np.int64)),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    out = {}
    num_joints = self.spec['skeleton'].num_joints
    for split, (ann, images) in self.spec['splits'].items():
      coco = coco_keypoints.load_coco_json(ann)
      category = _category(coco, num_joints, self.spec['category_id'])
      reader = coco_keypoints.image_reader(os.path.dirname(os.path.abspath(images)),
                                           os.path.basename(os.path.abspath(images)))
      out[split] = self._generate_examples(reader, ann, num_joints, category)
    return out


def gt_annotations(split, manual_dir, config):
  """The split's ground truth: its annotation file, restricted to the set's category (as
  category 1, which the results are written with)."""
  del manual_dir
  spec = read_spec(config)
  if split not in spec['splits']:
    return None
  coco = coco_keypoints.load_coco_json(spec['splits'][split][0])
  category = _category(coco, spec['skeleton'].num_joints, spec['category_id'])
  return dict(coco, annotations=[dict(a, category_id=1) for a in coco['annotations']
                                 if a.get('category_id', 1) == category],
              categories=[dict(id=1, name=spec['skeleton'].name,
                               keypoints=list(spec['skeleton'].joint_names))])


def image_bytes(split, manual_dir, config):
  """file name -> the bytes of a split's image from its images folder."""
  del manual_dir
  spec = read_spec(config)
  if split not in spec['splits']:
    return None
  images = os.path.abspath(spec['splits'][split][1])
  reader = coco_keypoints.image_reader(os.path.dirname(images), os.path.basename(images))
  return lambda file_name: reader.read(file_name)[0]
