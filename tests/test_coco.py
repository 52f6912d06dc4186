"""COCO top-down end to end: the official archives, OKS AP, detected boxes, person boxes in
the predictor, custom keypoint sets. All from archives generated in the test, laid out as
the official downloads (experiments/make_coco_sample.py)."""

import json
import zipfile

import numpy as np
import pytest

from experiments import make_coco_sample
from jhpe import oks
from jhpe.data import pipeline
from jhpe.data import registry

pytest.importorskip('pycocotools')


@pytest.fixture(scope='module')
def coco_zips(tmp_path_factory):
  """The official archives (generated images) and the built TFDS dataset."""
  root = tmp_path_factory.mktemp('coco')
  manual = root / 'manual'
  cocos = make_coco_sample.write(str(manual), train_images=3, val_images=3)
  data_dir = str(root / 'tfds')
  builder = registry.prepare('coco_keypoints', data_dir, str(manual))
  return dict(manual=str(manual), data_dir=data_dir, cocos=cocos, builder=builder)


def test_official_archives_are_exactly_the_downloads_layout(coco_zips):
  with zipfile.ZipFile(f'{coco_zips["manual"]}/annotations_trainval2017.zip') as z:
    assert sorted(z.namelist()) == ['annotations/person_keypoints_train2017.json',
                                    'annotations/person_keypoints_val2017.json']
  with zipfile.ZipFile(f'{coco_zips["manual"]}/val2017.zip') as z:
    assert all(n == 'val2017/' or (n.startswith('val2017/') and len(n) == len(
        'val2017/000000000000.jpg')) for n in z.namelist())


def test_builds_from_the_official_zips(coco_zips):
  assert sorted(coco_zips['builder'].info.splits) == ['train', 'validation']
  a = pipeline.annotations('coco_keypoints', 'validation', data_dir=coco_zips['data_dir'])
  anns = coco_zips['cocos']['val2017']['annotations']
  assert len(a['id']) == len(anns) == 6  # 1 + 2 + 3 people
  by_id = {x['id']: x for x in anns}
  for i, ann_id in enumerate(a['annotation_id']):
    kp = np.asarray(by_id[int(ann_id)]['keypoints']).reshape(17, 3)
    np.testing.assert_allclose(a['joints'][i], kp[:, :2] - 0.5, atol=1e-4)
    np.testing.assert_allclose(a['bbox'][i], by_id[int(ann_id)]['bbox'], rtol=1e-6)
  # The images came out of val2017.zip: the stored bytes are the archive's.
  with zipfile.ZipFile(f'{coco_zips["manual"]}/val2017.zip') as z:
    first = z.read(f'val2017/{int(a["image_id"][0]):012d}.jpg')
  source = pipeline.data_source('coco_keypoints', 'validation', data_dir=coco_zips['data_dir'])
  assert source[0]['image'] == first


def test_annotations_zip_with_unpacked_image_folders(tmp_path, coco_zips):
  """Each part found in its own form: the annotation zip, an unpacked image folder."""
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'annotations_trainval2017.zip').write_bytes(
      open(f'{coco_zips["manual"]}/annotations_trainval2017.zip', 'rb').read())
  with zipfile.ZipFile(f'{coco_zips["manual"]}/val2017.zip') as z:
    z.extractall(manual)
  builder = registry.prepare('coco_keypoints', str(tmp_path / 'tfds'), str(manual))
  assert list(builder.info.splits) == ['validation']  # train2017 images are absent...
