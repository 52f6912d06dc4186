"""Tests of the host pipeline (jhpe.data.pipeline) on the synthetic dataset and fakes."""

import io

import numpy as np
from PIL import Image
import pytest

from jhpe import geometry
from jhpe.data import pipeline
from jhpe.data.builders import synthetic


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _loader(data_dir, split='train', **kw):
  args = dict(data_dir=data_dir, batch_size=8, canvas_size=48, train=True, seed=0)
  args.update(kw)
  return pipeline.make_loader('synthetic/tiny', split, **args)


def test_synthetic_builds_deterministically(data_dir, tmp_path):
  a = pipeline.annotations('synthetic/tiny', 'test', data_dir=data_dir)
  assert len(a['id']) == 32 and a['joints'].shape == (32, 14, 2)
  assert a['id'] == sorted(a['id'])  # split order is the id order
  b = pipeline.annotations('synthetic/tiny', 'test', data_dir=str(tmp_path))
  np.testing.assert_array_equal(a['joints'], b['joints'])  # rebuilt from the seed
  src = pipeline.data_source('synthetic/tiny', 'test', data_dir=data_dir)
  assert src[0]['image'] == pipeline.data_source(
      'synthetic/tiny', 'test', data_dir=str(tmp_path))[0]['image']


def test_eval_visits_every_example_once_in_order_and_pads(data_dir):
  loader = _loader(data_dir, split='test', train=False, batch_size=5)
  batches = list(loader)
  assert loader.num_examples == 32 and loader.num_batches == len(batches) == 7
  index = np.concatenate([b['index'] for b in batches])
  valid = np.concatenate([b['valid'] for b in batches])
  np.testing.assert_array_equal(index[valid > 0], np.arange(32))
  assert valid.sum() == 32 and np.all(index[valid == 0] == -1)
  b = batches[0]
  assert b['image'].dtype == np.uint8 and b['image'].shape == (5, 48, 48, 3)
  assert b['joints'].shape == (5, 14, 2) and b['canvas_to_original'].shape == (5, 3, 3)
  assert b['joints'].dtype == b['visible'].dtype == b['normaliser'].dtype == np.float32
  assert b['index'].dtype == np.int32 and np.all(b['normaliser'] > 0)
  # Canvas joints map back onto the stored original joints.
  a = pipeline.annotations('synthetic/tiny', 'test', data_dir=data_dir)
  back = geometry.apply_affine(b['canvas_to_original'], b['joints'])
  np.testing.assert_allclose(back, a['joints'][:5], atol=1e-2)
  assert loader.ids()[:2] == ['test_000000', 'test_000001']


def test_train_order_is_seeded_and_resumable(data_dir):
  it = iter(_loader(data_dir))
  first = [next(it)['index'] for _ in range(3)]
  state = it.get_state()
  rest = [next(it)['index'] for _ in range(10)]  # crosses the epoch boundary (8 batches)
  again = iter(_loader(data_dir))
  assert all(np.array_equal(x, next(again)['index']) for x in first)
  resumed = iter(_loader(data_dir))
  resumed.set_state(state)
  for x in rest:
    np.testing.assert_array_equal(next(resumed)['index'], x)
  other = iter(_loader(data_dir, seed=1))
  assert not all(np.array_equal(x, next(other)['index']) for x in first)
  # Each epoch is a permutation of the split (drop remainder: 64 = 8 x 8).
  epoch = np.concatenate(first + rest[:5])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(64))


def test_shards_partition_the_split(data_dir):
  seen = []
  for k in range(3):
    loader = _loader(data_dir, split='test', train=False, batch_size=4, shard_index=k,
                     shard_count=3)
    for b in loader:
      seen.extend(b['index'][b['valid'] > 0].tolist())
  assert sorted(seen) == list(range(32))


def test_bad_arguments_are_named(data_dir):
  with pytest.raises(ValueError, match='Unknown dataset'):
    pipeline.make_loader('nope', 'train', data_dir=data_dir, batch_size=2,
                         canvas_size=32, train=True)
  with pytest.raises(ValueError, match='no split'):
    _loader(data_dir, split='validation')
  with pytest.raises(ValueError, match='shard_index'):
    _loader(data_dir, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match='batch_size'):
    _loader(data_dir, batch_size=1000)


def _jpeg(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def _record(image, joints, visible=None, **kw):
  j = np.asarray(joints, np.float32)
  v = np.ones(len(j), np.float32) if visible is None else np.asarray(visible, np.float32)
  rec = dict(id=b'fake', image=image, joints=j, visible=v,
             center=np.float32([kw.get('cx', 100.), kw.get('cy', 80.)]),
             scale=np.float32(kw.get('scale', 120.)))
  return rec


def _transform(records, **kw):
  return pipeline.HostTransform(records, 'synthetic', 'test', 32,
                                (('synthetic', 0, len(records)),), **kw)


@pytest.mark.parametrize('width, scale', [(200, 120.), (1600, 1200.)])
def test_host_crop_puts_joints_on_the_content(width, scale):
  # A white square on black around a known point; the big image takes the JPEG draft path.
  h = width * 4 // 5
  img = np.zeros((h, width, 3), np.uint8)
  px, py = int(width * 0.6), int(h * 0.4)
  r = max(1, width // 100)
  img[py - r:py + r + 1, px - r:px + r + 1] = 255
  joints = np.tile([[px, py]], (14, 1))
  rec = _record(_jpeg(img), joints, cx=width / 2, cy=h / 2, scale=scale)
  out = _transform([rec])(0)
  canvas = out['image'].astype(np.float32).mean(-1)
  peak = np.array(np.unravel_index(np.argmax(canvas), canvas.shape))[::-1]
  assert np.linalg.norm(peak - out['joints'][0]) <= 1.0
  ys, xs = np.nonzero(canvas > 0.5 * canvas.max())
  centroid = np.array([xs.mean(), ys.mean()])
  np.testing.assert_allclose(centroid, out['joints'][0], atol=0.75)


def test_corrupt_image_is_named_or_skipped_and_counted():
  good = _jpeg(np.full((160, 200, 3), 128, np.uint8))
  joints = np.tile([[100., 80.]], (14, 1))
  records = [_record(good, joints), _record(good[:200], joints), _record(b'junk', joints)]
  with pytest.raises(ValueError, match=r"index 1 \(id 'fake'\).*skip_bad_examples"):
    _transform(records)(1)
  train = _transform(records, skip_bad_examples=True)
  assert train(0) is not None and train(1) is None and train(2) is None
  assert len(train.skipped) == 2
  evaluation = _transform(records, skip_bad_examples=True, pad_invalid=True)
  assert evaluation(2)['valid'] == 0 and evaluation(0)['valid'] == 1


def test_all_invisible_person_is_an_error():
  good = _jpeg(np.full((160, 200, 3), 128, np.uint8))
  rec = _record(good, np.zeros((14, 2)), visible=np.zeros(14))
  with pytest.raises(ValueError, match='index 0.*all invisible'):
    _transform([rec])(0)


def test_synthetic_left_and_right_limbs_differ_in_colour():
  warm, cool = 0, 0
  for i in range(20):
    image, joints, occluded = synthetic.render_example(np.random.default_rng([9, 0, i]), 96)
    for j in (synthetic.L_ELBOW, synthetic.L_KNEE, synthetic.R_ELBOW, synthetic.R_KNEE):
      if occluded[j]:
        continue
      x, y = np.clip(np.round(joints[j]).astype(int), 0, 95)
      r, _, b = image[y, x].astype(int)
      left = j in (synthetic.L_ELBOW, synthetic.L_KNEE)
      warm += left and r > b
      cool += (not left) and b > r
  assert warm >= 25 and cool >= 25  # of 40 each, allowing for overlaps and occluders


def test_synthetic_uses_the_lsp_joint_order():
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  names = skeletons.LSP.joint_names
  for const, name in [(synthetic.R_ANKLE, 'right_ankle'), (synthetic.L_HIP, 'left_hip'),
                      (synthetic.R_WRIST, 'right_wrist'), (synthetic.L_SHOULDER,
                                                           'left_shoulder'),
                      (synthetic.NECK, 'neck'), (synthetic.HEAD_TOP, 'head_top')]:
    assert names[const] == name


def test_worker_processes_give_the_same_batches(data_dir):
  it0 = iter(_loader(data_dir))
  it1 = iter(_loader(data_dir, worker_count=1))
  for _ in range(2):
    a, b = next(it0), next(it1)
    np.testing.assert_array_equal(a['index'], b['index'])
    np.testing.assert_array_equal(a['image'], b['image'])
  assert it1.get_state()  # checkpointable with workers too
