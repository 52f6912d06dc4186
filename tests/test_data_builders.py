"""Tests of the dataset builders: LSP/LSPET on ../shared/data, faults, MPII and COCO fakes."""

import io
import json
import os
import zipfile

import numpy as np
from PIL import Image
import pytest
import scipy.io

from jhpe import geometry
from jhpe import metrics
from jhpe import skeletons
from jhpe.data.builders import coco_keypoints
from jhpe.data.builders import common
from jhpe.data.builders import lsp
from jhpe.data import pipeline
from jhpe.data import registry


def _jpeg(width, height, seed=0):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
      buf, format='JPEG')
  return buf.getvalue()


# --- LSP and LSPET, built from the real archives ------------------------------------


@pytest.fixture(scope='module')
def built_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.mark.lsp
def test_lsp_has_1000_plus_1000_people_on_their_images(shared_data_dir, built_dir):
  registry.prepare('lsp', built_dir, str(shared_data_dir))
  train = pipeline.annotations('lsp', 'train', data_dir=built_dir)
  test = pipeline.annotations('lsp', 'test', data_dir=built_dir)
  assert len(train['id']) == 1000 and len(test['id']) == 1000
  assert train['id'][0] == 'im0001' and test['id'][0] == 'im1001'
  assert test['id'][-1] == 'im2000' and test['id'] == sorted(test['id'])
  # Every LSP joint is annotated; about 7% carry the occlusion flag (README).
  assert np.all(test['visible'] == 1)
  assert 0.03 < test['occluded'].mean() < 0.12
  # The person is about 150 px tall: torso (left shoulder - right hip) and joint box.
  torso = metrics.torso_size(test['joints'], skeletons.LSP)
  assert 35 < np.median(torso) < 70, np.median(torso)
  height = test['joints'][..., 1].max(1) - test['joints'][..., 1].min(1)
  assert 90 < np.median(height) < 170, np.median(height)
  np.testing.assert_allclose(test['normaliser'], torso, rtol=1e-5)
  # Joints lie on the image (0-based pixels), and the image is the one named.
  src = pipeline.data_source('lsp', 'test', data_dir=built_dir)
  for i in (0, 499, 999):
    w, h = Image.open(io.BytesIO(src[i]['image'])).size
    j = test['joints'][i]
    assert np.all(j > -3) and np.all(j[:, 0] < w + 2) and np.all(j[:, 1] < h + 2)
  with zipfile.ZipFile(os.path.join(shared_data_dir, 'lsp_dataset.zip')) as z:
    assert src[7]['image'] == z.read('images/im1008.jpg')
    mat = scipy.io.loadmat(io.BytesIO(z.read('joints.mat')))['joints']
  np.testing.assert_allclose(test['joints'][7], mat[:2, :, 1007].T - 1, atol=1e-4)


@pytest.mark.lsp
def test_lspet_has_10000_people_and_no_junk_coordinates(shared_data_dir, built_dir):
  builder = registry.prepare('lspet', built_dir, str(shared_data_dir))
  assert list(builder.info.splits) == ['train']
  a = pipeline.annotations('lspet', 'train', data_dir=built_dir)
  assert len(a['id']) == 10000 and a['id'][0] == 'im00001'
  assert 0.8 < a['visible'].mean() < 0.95  # ~88% of the joints are annotated
  assert np.all(a['joints'][a['visible'] == 0] == 0)
  assert np.all(a['joints'][a['visible'] > 0] > -3)
  # The known annotation error (LSPET_ERRATA) is marked invisible, not dropped.
  assert a['visible'][8074, 1] == 0


# --- Faults -------------------------------------------------------------------------


def _lsp_zip(path, images, joints):
  with zipfile.ZipFile(path, 'w') as z:
    for name, data in images.items():
      z.writestr(f'images/{name}', data)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {'joints': joints})
    z.writestr('joints.mat', buf.getvalue())


def _lsp_joints(n, width=60, height=80, seed=0):
  rng = np.random.default_rng(seed)
  j = np.zeros((3, 14, n))
  j[0] = rng.uniform(5, width - 5, (14, n)) + 1  # 1-based
  j[1] = rng.uniform(5, height - 5, (14, n)) + 1
  return j


def _generate(builder, path, layout, n, numbers):
  archive, path = common.open_archive(os.path.dirname(path), os.path.basename(path), 'url')
  joints, flags = lsp.load_joints(archive, path, layout, n)
  return list(builder._generate_examples(archive, path, joints, flags, numbers))


def test_lsp_generator_converts_to_zero_based(tmp_path):
  joints = _lsp_joints(3)
  joints[2, 4, 1] = 1  # occluded
  _lsp_zip(tmp_path / 'lsp_dataset.zip', {f'im{i:04d}.jpg': _jpeg(60, 80, i)
                                          for i in (1, 2, 3)}, joints)
  out = _generate(lsp.Lsp(data_dir=str(tmp_path)), str(tmp_path / 'lsp_dataset.zip'),
                  'lsp', 3, range(1, 4))
  assert [k for k, _ in out] == [1, 2, 3]
  ex = out[1][1]
  assert ex['id'] == 'im0002' and ex['occluded'][4] == 1 and np.all(ex['visible'] == 1)
  np.testing.assert_allclose(ex['joints'], joints[:2, :, 1].T - 1, rtol=1e-6)
  box = ex['joints'].max(0) - ex['joints'].min(0)
  assert ex['scale'] == pytest.approx(geometry.PERSON_MARGIN * box.max(), rel=1e-5)


def test_missing_archive_names_path_and_url(tmp_path):
  builder = registry.get_builder('lsp', str(tmp_path / 'tfds'), manual_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    builder.download_and_prepare(file_format='array_record')
  assert str(tmp_path / 'lsp_dataset.zip') in str(e.value) and lsp.LSP_URL in str(e.value)


def test_truncated_archive_is_named(tmp_path):
  _lsp_zip(tmp_path / 'full.zip', {f'im{i:04d}.jpg': _jpeg(60, 80, i) for i in (1, 2)},
           _lsp_joints(2))
  data = (tmp_path / 'full.zip').read_bytes()
  (tmp_path / 'lsp_dataset.zip').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='lsp_dataset.zip.*truncated or corrupt'):
    common.open_archive(str(tmp_path), 'lsp_dataset.zip', lsp.LSP_URL)


def test_wrong_joints_shape_names_file_and_expected_shape(tmp_path):
  _lsp_zip(tmp_path / 'lsp_dataset.zip', {'im0001.jpg': _jpeg(60, 80)},
           np.zeros((14, 3, 1)))  # the LSPET layout in an LSP archive
  archive, path = common.open_archive(str(tmp_path), 'lsp_dataset.zip', 'url')
  with pytest.raises(ValueError, match=r'lsp_dataset.zip.*\(14, 3, 1\).*\(3, 14, 1\)'):
    lsp.load_joints(archive, path, 'lsp', 1)


def _faulty_lspet(tmp_path):
  n = 4
  j = _lsp_joints(n).transpose(1, 0, 2)  # (14, 3, n)
  j[:, 2, :] = 1
  j[:, 2, 1] = 0  # im00002: all joints missing
  j[3, 0, 2] = 500.  # im00003: a visible joint far outside the 60 px wide image
  images = {f'im{i:05d}.jpg': _jpeg(60, 80, i) for i in range(1, n + 1)}
  images['im00004.jpg'] = images['im00004.jpg'][:300]  # truncated JPEG
  _lsp_zip(tmp_path / 'lspet_dataset.zip', images, j)
  return str(tmp_path / 'lspet_dataset.zip'), n


@pytest.mark.parametrize('number, reason', [
    (2, 'no annotated joint'), (3, 'outside the 60x80 image'), (4, 'cannot decode')])
def test_bad_examples_are_named(tmp_path, number, reason):
  path, n = _faulty_lspet(tmp_path)
  builder = lsp.Lspet(data_dir=str(tmp_path))
  with pytest.raises(common.BadExampleError) as e:
    _generate(builder, path, 'lspet', n, [1, number])
  message = str(e.value)
  assert f'im{number:05d}.jpg' in message and f'index {number - 1}' in message
  assert reason in message and 'skip_bad_examples' in message


def test_bad_examples_are_skipped_and_counted_under_the_flag(tmp_path):
  path, n = _faulty_lspet(tmp_path)
  builder = lsp.Lspet(data_dir=str(tmp_path), skip_bad_examples=True)
  out = _generate(builder, path, 'lspet', n, range(1, n + 1))
  assert [k for k, _ in out] == [1] and len(builder.skipped) == 3


# --- MPII and COCO, on tiny files in their official formats --------------------------


def test_mpii_builds_from_the_json_annotations(tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'images').mkdir(parents=True)
  (manual / 'annot').mkdir()
  rng = np.random.default_rng(0)
  entries = {'train': [], 'valid': []}
  for k, split in enumerate(['train', 'train', 'valid', 'valid', 'valid']):
    name = f'{k:09d}.jpg'
    (manual / 'images' / name).write_bytes(_jpeg(120, 100, k))
    joints = rng.uniform(10, 90, (16, 2)) + 1
    vis = np.ones(16)
    vis[6] = 0
    joints[6] = -1  # MPII's missing joint
    entries[split].append(dict(image=name, center=[60., 50.], scale=0.4,
                               joints=joints.tolist(), joints_vis=vis.tolist()))
  for split in entries:
    (manual / 'annot' / f'{split}.json').write_text(json.dumps(entries[split]))
  boxes = np.stack([np.array([[10., 5.], [30., 25.]]) + k for k in range(3)], -1)
  scipy.io.savemat(manual / 'annot' / 'gt_valid.mat',
                   {'headboxes_src': boxes, 'jnt_missing': np.zeros((16, 3))})
  data_dir = str(tmp_path / 'tfds')
  registry.prepare('mpii', data_dir, str(manual))
  val = pipeline.annotations('mpii', 'validation', data_dir=data_dir)
  assert len(val['id']) == 3 and len(pipeline.annotations(
      'mpii', 'train', data_dir=data_dir)['id']) == 2
  np.testing.assert_allclose(val['joints'][0, 0],
                             np.asarray(entries['valid'][0]['joints'][0]) - 1, rtol=1e-5)
  assert val['visible'][0, 6] == 0 and np.all(val['joints'][:, 6] == 0)
  np.testing.assert_allclose(val['head_box'][1], [10., 5., 30., 25.])  # +1 then -1
  np.testing.assert_allclose(val['normaliser'], 0.6 * np.hypot(20, 20), rtol=1e-5)
  np.testing.assert_allclose(val['center'][0], [59., 49. + 15 * 0.4], rtol=1e-5)
  np.testing.assert_allclose(val['scale'], 250 * 0.4, rtol=1e-5)
  loader = pipeline.make_loader('mpii', 'validation', data_dir=data_dir, batch_size=2,
                                canvas_size=32, train=False)
  assert sum(b['valid'].sum() for b in loader) == 3


def _coco_files(root, rng):
  (root / 'annotations').mkdir(parents=True)
  (root / 'val2017').mkdir()
  images, anns = [], []
  for image_id in (7, 3):
    name = f'{image_id:012d}.jpg'
    (root / 'val2017' / name).write_bytes(_jpeg(160, 120, image_id))
    images.append(dict(id=image_id, file_name=name, width=160, height=120))
    for k in range(2):
      x, y = 20. + 60 * k, 10.
      kp = np.zeros((17, 3))
      kp[:, 0] = rng.uniform(x, x + 50, 17)
      kp[:, 1] = rng.uniform(y, y + 100, 17)
      kp[:, 2] = 2
      kp[0] = 0  # an unlabelled nose
      anns.append(dict(id=100 * image_id + k, image_id=image_id, category_id=1, iscrowd=0,
                       num_keypoints=16, keypoints=kp.reshape(-1).tolist(),
                       bbox=[x, y, 50., 100.], area=4000.))
  anns.append(dict(id=999, image_id=3, category_id=1, iscrowd=1, num_keypoints=0,
                   keypoints=[0] * 51, bbox=[0, 0, 10, 10], area=100.))
  anns.append(dict(id=998, image_id=3, category_id=1, iscrowd=0, num_keypoints=0,
                   keypoints=[0] * 51, bbox=[0, 0, 10, 10], area=100.))
  coco = dict(images=images, annotations=anns,
              categories=[dict(id=1, name='person', supercategory='person',
                               keypoints=list(skeletons.COCO.joint_names), skeleton=[])])
  path = root / 'annotations' / 'person_keypoints_val2017.json'
  path.write_text(json.dumps(coco))
  return str(path), anns


def test_coco_builds_person_instances_and_scores_oks_ap(tmp_path):
  pytest.importorskip('pycocotools')
  ann_file, anns = _coco_files(tmp_path / 'manual', np.random.default_rng(0))
  data_dir = str(tmp_path / 'tfds')
  builder = registry.prepare('coco_keypoints', data_dir, str(tmp_path / 'manual'))
  assert list(builder.info.splits) == ['validation']
  a = pipeline.annotations('coco_keypoints', 'validation', data_dir=data_dir)
  # Crowd and keypoint-less instances are left out; sorted by (image_id, id).
  assert a['id'] == ['3_300', '3_301', '7_700', '7_701']
  by_id = {f'{x["image_id"]}_{x["id"]}': x for x in anns}
  kp = np.asarray(by_id['7_701']['keypoints']).reshape(17, 3)
  np.testing.assert_allclose(a['joints'][3, 1:], kp[1:, :2] - 0.5, rtol=1e-5)
  assert a['visible'][3, 0] == 0 and np.all(a['visible'][:, 1:] == 1)
  np.testing.assert_allclose(a['normaliser'], np.sqrt(4000.), rtol=1e-5)
  perfect = [dict(image_id=int(i), joints=j, score=1.) for i, j in
             zip(a['image_id'], a['joints'])]
  assert coco_keypoints.coco_oks_ap(perfect, ann_file)['AP'] == pytest.approx(1.0)
  noisy = [dict(p, joints=p['joints'] + 6.) for p in perfect]
  assert coco_keypoints.coco_oks_ap(noisy, ann_file)['AP'] < 0.9


@pytest.mark.parametrize('name', sorted(registry.DATASETS))
def test_registry_builders_match_their_skeletons(name, tmp_path):
  builder = registry.get_builder(name, str(tmp_path))
  skeleton = skeletons.get_skeleton(registry.get_spec(name).skeleton)
  assert builder.info.features['joints'].shape == (skeleton.num_joints, 2)
  assert builder.info.disable_shuffling  # split order = key order, on every machine


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match="'lsq'.*coco_keypoints"):
    registry.split_name('lsq')


# --- TFDS's own API after `import jhpe.data` ---------------------------------------------

_TFDS_BUILD = '''
import sys
import jhpe.data  # Registers the builders with TFDS.
import tensorflow_datasets as tfds
builder = tfds.builder("lsp", data_dir=sys.argv[1])
builder.download_and_prepare()  # No file_format, no manual_dir: the builders' defaults.
source = builder.as_data_source(split="test")
print(len(source), str(builder.info.file_format), "tensorflow" in sys.modules)
'''


@pytest.mark.lsp
def test_tfds_builder_builds_lsp_after_import_jhpe_data_without_tensorflow(
    shared_data_dir, tmp_path):
  # A fresh interpreter: the registration must come from `import jhpe.data` alone; the
  # archives come from $JHPE_MANUAL_DIR (the documented variable).
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  env = dict(os.environ, JHPE_MANUAL_DIR=str(shared_data_dir))
  proc = subprocess.run([sys.executable, '-c', _TFDS_BUILD, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['1000', 'FileFormat.ARRAY_RECORD', 'False']
  assert 'Building dataset lsp' in proc.stderr
  assert 'Unknown size' not in proc.stdout + proc.stderr


def test_importing_jhpe_datasets_loads_no_tfds():
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ('import sys, jhpe.datasets, jhpe.train.config as c; '
          'c.skeleton_of(c.Config(model="hourglass", dataset="mpii")); '
          'print([m for m in ("tensorflow_datasets", "grain") if m in sys.modules])')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stderr[-2000:]
