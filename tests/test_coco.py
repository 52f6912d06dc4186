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


# --- OKS AP: ground truth fed back, a shift, detected boxes. ---------------------------


def _gt_people(coco_zips):
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  from jhpe.train import evaluators  # pylint: disable=g-import-not-at-top
  a = pipeline.annotations('coco_keypoints', 'validation', data_dir=coco_zips['data_dir'])
  metas = [dict(image_id=i, bbox=b) for i, b in zip(a['image_id'], a['bbox'])]
  return a, metas, skeletons.COCO, evaluators.for_dataset('coco_keypoints')


def test_ground_truth_as_predictions_is_ap_1_and_a_1px_shift_is_less(coco_zips):
  from jhpe.train import coco_eval  # pylint: disable=g-import-not-at-top
  a, metas, skeleton, evaluator = _gt_people(coco_zips)
  gt = registry.gt_annotations('coco_keypoints', 'validation', coco_zips['manual'])
  assert gt is not None  # Read from annotations_trainval2017.zip.
  image_ids = sorted({int(i) for i in a['image_id']})
  conf = np.ones(a['visible'].shape)
  stats, scores, kept = coco_eval.score_people(metas, a['joints'], conf, gt, skeleton,
                                               evaluator, image_ids)
  assert stats['AP'] == pytest.approx(1.0) and stats['AR'] == pytest.approx(1.0)
  assert kept.all() and np.allclose(scores, 1.0)
  # People of 30 x 30 px area (COCO's small-to-medium range): one pixel matters.
  for ann in gt['annotations']:
    ann['area'] = 900.
  shifted, _, _ = coco_eval.score_people(metas, a['joints'] + [1., 0.], conf, gt,
                                         skeleton, evaluator, image_ids)
  assert shifted['AP'] < 1.0
  # The same from the stored examples alone (no annotation file at hand).
  rebuilt = oks.gt_from_records([dict(m, annotation_id=k, joints=j, visible=v, area=900.)
                                 for k, (m, j, v) in enumerate(zip(metas, a['joints'],
                                                                   a['visible']))],
                                skeleton.joint_names)
  again, _, _ = coco_eval.score_people(metas, a['joints'] + [1., 0.], conf, rebuilt,
                                       skeleton, evaluator, image_ids)
  assert again['AP'] == pytest.approx(shifted['AP'])


def test_person_scores_and_oks_nms():
  conf = np.array([[0.9, 0.1, 0.5], [0.1, 0.1, 0.1]])
  np.testing.assert_allclose(oks.person_scores(conf, [0.5, 1.0]), [0.5 * 0.7, 0.0])
  pose = np.array([[10., 10.], [20., 30.], [15., 50.]])
  joints = np.stack([pose, pose + 0.5, pose + 40, pose])
  keep = oks.oks_nms([1, 1, 1, 2], joints, [0.5, 0.9, 0.4, 0.1], [900.] * 4, [0.08] * 3)
  assert keep == [1, 2, 3]  # The duplicate of pose 1 goes; another image's stays.
  assert oks.oks_nms([1, 1], joints[:2], [0.5, 0.9], [900.] * 2, [0.08] * 3, 1.0) == [0, 1]


@pytest.fixture(scope='module')
def coco_workdir(coco_zips, tmp_path_factory):
  """A tiny hourglass workdir for coco_keypoints at its initial weights (step 1): the
  evaluation is under test here, not training."""
  import jax  # pylint: disable=g-import-not-at-top
  from jhpe.train import checkpoint  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import state as state_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('coco_run'))
  config = config_lib.Config(
      model='hourglass', model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
      dataset='coco_keypoints', eval_split='validation', data_dir=coco_zips['data_dir'],
      manual_dir=coco_zips['manual'], input_size=32, batch_size=4, eval_batch_size=4,
      flip_test=False).validate()
  config_lib.save_config(config, workdir)
  state = state_lib.create_train_state(jax.random.PRNGKey(0),
                                       config_lib.build_model(config), config)
  manager = checkpoint.make_manager(workdir, async_save=False)
  checkpoint.save(manager, 1, state.to_dict())
  checkpoint.close(manager)
  return workdir


def _evaluate(*flags):
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,g-multiple-import
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, '-m', 'experiments.evaluate', *flags], cwd=repo,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=repo))


def test_evaluate_reports_oks_ap_with_ground_truth_and_detected_boxes(coco_zips,
                                                                      coco_workdir):
  from jhpe.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  table = eval_lib.format_table(eval_lib.evaluate_workdir(coco_workdir, figures=False))
  assert 'OKS AP on coco_keypoints validation (6 people' in table
  assert 'AP50' in table and 'boxes: ground truth; ground truth: annotation file' in table
  with open(f'{coco_workdir}/eval/coco_keypoints_validation.json') as f:
    gt_boxes = json.load(f)
  assert gt_boxes['metric'] == 'OKS AP' and gt_boxes['mean'] == gt_boxes['oks']['AP']
  assert set(oks.STAT_NAMES) <= set(gt_boxes['oks']) and gt_boxes['pck']['mean'] is not None
  with open(f'{coco_workdir}/eval/coco_keypoints_validation_coco_results.json') as f:
    results = json.load(f)
  assert len(results) == gt_boxes['oks']['kept_by_oks_nms'] >= 1
  assert set(results[0]) == {'image_id', 'category_id', 'keypoints', 'score'}
  assert len(results[0]['keypoints']) == 51

  # Detected boxes: 6 jittered people + 3 false positives at 0.1; the threshold drops those.
  dets = f'{coco_zips["manual"]}/person_detections_val2017.json'
  for threshold, people in ((0.0, 9), (0.5, 6)):
    eval_lib.evaluate_workdir(coco_workdir, figures=False, person_boxes=dets,
                              box_score_threshold=threshold, oks_nms_threshold=1.0)
    with open(f'{coco_workdir}/eval/coco_keypoints_validation_detected_boxes_oksnms1.json') as f:
      detected = json.load(f)
    assert detected['oks']['boxes'] == dets and detected['oks']['people'] == people
    assert detected['num_examples'] == people and 'per_joint' not in detected
    with open(f'{coco_workdir}/eval/'
              'coco_keypoints_validation_detected_boxes_oksnms1_predictions.json') as f:
      predictions = json.load(f)
    assert all(p['box_score'] >= threshold for p in predictions)
  # The first boxes only (--num_examples): scored against their own images, not every one.
  eval_lib.evaluate_workdir(coco_workdir, figures=False, person_boxes=dets, num_examples=2,
                            oks_nms_threshold=1.0)
  with open(f'{coco_workdir}/eval/coco_keypoints_validation_detected_boxes_oksnms1.json') as f:
    first = json.load(f)
  with open(f'{coco_workdir}/eval/'
            'coco_keypoints_validation_detected_boxes_oksnms1_predictions.json') as f:
    first_images = {p['image_id'] for p in json.load(f)}
  assert first['oks']['people'] == 2
  assert first['oks']['images'] == len(first_images) < detected['oks']['images']
  # The ground-truth-box evaluation was not overwritten.
  with open(f'{coco_workdir}/eval/coco_keypoints_validation.json') as f:
    assert json.load(f) == gt_boxes


def test_bad_person_boxes_file_is_one_line(tmp_path, coco_workdir):
  bad = tmp_path / 'dets.json'
  bad.write_text(json.dumps([{'image_id': 400009, 'bbox': [1, 2, -3, 4], 'score': 1}]))
  proc = _evaluate(f'--workdir={coco_workdir}', f'--person_boxes={bad}')
  assert proc.returncode != 0 and 'entry 0' in proc.stderr
  assert 'Traceback' not in proc.stderr


# --- Person boxes in the predictor and jhpe-predict. -----------------------------------


@pytest.fixture(scope='module')
def val_images(coco_zips, tmp_path_factory):
  """The val2017 images as files (COCO's names: the 12-digit image id)."""
  out = tmp_path_factory.mktemp('val_images')
  with zipfile.ZipFile(f'{coco_zips["manual"]}/val2017.zip') as z:
    z.extractall(out)
  return sorted((out / 'val2017').glob('*.jpg'))


def test_predictor_predicts_every_person_of_an_image_from_boxes(coco_workdir, val_images):
  from jhpe import predict  # pylint: disable=g-import-not-at-top
  predictor = predict.load(coco_workdir)
  boxes = [(10., 5., 40., 100.), (90., 20., 50., 120.)]
  out = predictor.predict_people(str(val_images[-1]), boxes)
  assert out['joints'].shape == (2, 17, 2) and out['confidence'].shape == (2, 17)
  for k, box in enumerate(boxes):  # The same as one person at a time.
    one = predictor(str(val_images[-1]), box=box)
    np.testing.assert_allclose(out['joints'][k], one['joints'], atol=1e-3)
  assert predictor.predict_people(str(val_images[-1]), [])['joints'].shape == (0, 17, 2)


def test_read_boxes_both_formats(tmp_path, val_images):
  from jhpe import predict_cli  # pylint: disable=g-import-not-at-top
  paths = [str(p) for p in val_images]
  simple = tmp_path / 'boxes.json'
  simple.write_text(json.dumps({val_images[0].name: [[1, 2, 30, 40], [50, 2, 30, 40]]}))
  boxes = predict_cli.read_boxes(str(simple), paths)
  assert boxes[paths[0]] == [[1., 2., 30., 40.], [50., 2., 30., 40.]]
  assert boxes[paths[1]] == []
  coco = tmp_path / 'dets.json'
  image_id = int(val_images[1].stem)
  coco.write_text(json.dumps([dict(image_id=image_id, bbox=[1, 2, 3, 4], score=0.9),
                              dict(image_id=image_id, bbox=[5, 2, 3, 4], score=0.2)]))
  assert predict_cli.read_boxes(str(coco), paths, 0.5)[paths[1]] == [[1., 2., 3., 4.]]
  simple.write_text(json.dumps({'other.jpg': [[1, 2, 30, 40]]}))
  with pytest.raises(ValueError, match='no box for any'):
    predict_cli.read_boxes(str(simple), paths)
  simple.write_text(json.dumps({val_images[0].name: [[1, 2, -30, 40]]}))
  with pytest.raises(ValueError, match='must be'):
    predict_cli.read_boxes(str(simple), paths)


def test_cli_boxes_writes_one_prediction_per_box(tmp_path, coco_zips, coco_workdir,
                                                 val_images):
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,g-multiple-import
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  dets = f'{coco_zips["manual"]}/person_detections_val2017.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'jhpe.predict', f'--workdir={coco_workdir}',
       f'--boxes={dets}', '--box_score_threshold=0.5', f'--output={tmp_path}',
       *map(str, val_images)], cwd=repo, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=repo))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '3 people' in proc.stdout  # The third image has three.
  with open(tmp_path / 'predictions.json') as f:
    records = json.load(f)['predictions']
  kept = [d for d in json.load(open(dets)) if d['score'] >= 0.5]
  assert len(records) == len(kept) == 6
  assert sorted(r['box'] for r in records) == sorted(
      np.round(d['bbox'], 2).tolist() for d in kept)
  assert all(np.asarray(r['joints']).shape == (17, 2) for r in records)
  assert len({r['overlay'] for r in records}) == 3 and all(
      os.path.isfile(r['overlay']) for r in records)


# --- A custom keypoint set: coco_format:spec.json. -------------------------------------


def _custom_set(root):
  """An invented 5-keypoint animal set (category 3) in COCO format, with its description."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  (root / 'images').mkdir(parents=True)
  template = np.array([[.1, .5], [.3, .2], [.3, .8], [.7, .5], [.95, .5]])
  splits = {}
  for split, ids in (('train', range(1, 7)), ('val', range(50, 53))):
    images, anns = [], []
    for image_id in ids:
      name = f'{split}_{image_id}.jpg'
      img = Image.fromarray(rng.integers(60, 120, (64, 80, 3), dtype=np.uint8))
      draw = ImageDraw.Draw(img)
      x, y, w, h = rng.uniform(2, 20), rng.uniform(2, 20), rng.uniform(40, 56), 36.
      kp = np.concatenate([template * [w, h] + [x, y], np.full((5, 1), 2.)], axis=1)
      for (a, b) in ((0, 1), (0, 2), (1, 3), (2, 3), (3, 4)):
        draw.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=(240, 200, 40), width=3)
      img.save(root / 'images' / name)
      images.append(dict(id=image_id, file_name=name, width=80, height=64))
      anns.append(dict(id=image_id, image_id=image_id, category_id=3, iscrowd=0,
                       num_keypoints=5, keypoints=np.round(kp, 2).reshape(-1).tolist(),
                       bbox=[x, y, w, h], area=0.7 * w * h))
    cats = [dict(id=3, name='mouse', keypoints=['snout', 'left_ear', 'right_ear', 'back',
                                                  'tail'])]
    (root / f'{split}.json').write_text(json.dumps(dict(images=images, annotations=anns,
                                                        categories=cats)))
  spec = dict(name='mouse', keypoints=cats[0]['keypoints'],
              flip_pairs=[['left_ear', 'right_ear']],
              limbs=[['snout', 'left_ear'], ['snout', 'right_ear'], ['left_ear', 'back'],
                     ['right_ear', 'back'], ['back', 'tail']],
              oks_sigmas=[0.025, 0.035, 0.035, 0.079, 0.089],
              splits=dict(train=dict(annotations='train.json', images='images'),
                          validation=dict(annotations='val.json', images='images')))
  (root / 'mouse.json').write_text(json.dumps(spec))
  return str(root / 'mouse.json')


def test_custom_keypoint_set_trains_and_evaluates(tmp_path):
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  from jhpe.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from jhpe.train import loop  # pylint: disable=g-import-not-at-top
  spec = _custom_set(tmp_path / 'mouse')
  dataset = f'coco_format:{spec}'
  skeleton = skeletons.get_skeleton(registry.get_spec(dataset).skeleton)
  assert skeleton.name == 'mouse' and skeleton.num_joints == 5
  assert skeleton.flip_pairs == ((1, 2),)
  config = config_lib.Config(
      model='hourglass', model_kwargs=dict(num_stacks=1, num_features=8, depth=1),
      dataset=dataset, eval_split='validation', data_dir=str(tmp_path / 'tfds'),
      input_size=32, batch_size=2, eval_batch_size=2, num_train_steps=3, log_every=1,
      eval_every=0, checkpoint_every=3, flip_test=False).validate()
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(config, workdir)  # Its final evaluation is OKS AP.
  assert result['step'] == 3
  a = pipeline.annotations(dataset, 'train', data_dir=config.data_dir)
  assert a['joints'].shape == (6, 5, 2)
  results = result['eval']
  with open(f'{workdir}/eval/coco_format_mouse_validation.json') as f:
    assert json.load(f)['mean'] == results['mean']
  assert results['metric'] == 'OKS AP' and 0.0 <= results['mean'] <= 1.0
  assert results['oks']['ground_truth'] == 'annotation file'
  assert results['pck']['metric'] == 'PCK@0.2' and set(results['per_joint']) >= {
      'snout', 'tail'}
  tag = 'coco_format_mouse_validation'
  with open(f'{workdir}/eval/{tag}_coco_results.json') as f:
    assert len(json.load(f)[0]['keypoints']) == 15
  # The ground truth scored against itself through the same evaluation is perfect.
  gt = registry.gt_annotations(dataset, 'validation')
  people = [dict(image_id=a['image_id'], joints=np.asarray(a['keypoints']).reshape(5, 3)[
      :, :2] - 0.5, score=1.) for a in gt['annotations']]
  assert oks.coco_oks_ap(people, gt, skeleton.oks_sigmas)['AP'] == pytest.approx(1.0)


def test_bad_keypoint_set_file_is_named(tmp_path):
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(dict(keypoints=['a', 'b'], flip_pairs=[['a', 'c']],
                                 oks_sigmas=[0.1, 0.1])))
  with pytest.raises(ValueError, match="bad.json: 'c'"):
    skeletons.get_skeleton(str(bad))
  bad.write_text(json.dumps(dict(keypoints=['a', 'b'], oks_sigmas=[0.1])))
  with pytest.raises(ValueError, match='bad.json.*oks_sigmas must be 2'):
    skeletons.get_skeleton(str(bad))
  with pytest.raises(ValueError, match='does not exist'):
    registry.split_name(f'coco_format:{tmp_path}/none.json')
