r"""Writes a small COCO 2017 keypoints look-alike: generated images, the official archives.

  python -m experiments.make_coco_sample --out=/tmp/coco_sample --train_images=40 \
      --val_images=10

The folder then holds exactly what the official downloads hold (names and layout):

  annotations_trainval2017.zip   annotations/person_keypoints_{train,val}2017.json
  train2017.zip                  train2017/<12-digit image id>.jpg
  val2017.zip                    val2017/<12-digit image id>.jpg
  person_detections_val2017.json a detector's boxes in COCO results format (the ground-truth
                                 boxes jittered, a false positive per image)

Each image shows 1-3 stick figures with COCO's 17 keypoints, so the COCO commands
(build, train, evaluate with ground-truth or detected boxes, predict with boxes) can be
tried without the 20 GB download. Its figures say nothing about real COCO.
"""

import io
import json
import os
import zipfile

import numpy as np
from PIL import Image, ImageDraw

# A standing figure in a unit box (x right, y down), COCO keypoint order.
_TEMPLATE = np.array([
    [.50, .08], [.46, .06], [.54, .06], [.42, .08], [.58, .08],  # nose, eyes, ears
    [.36, .22], [.64, .22], [.28, .40], [.72, .40], [.24, .56], [.76, .56],  # arms
    [.42, .55], [.58, .55], [.40, .76], [.60, .76], [.40, .97], [.60, .97]])  # legs
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16),
          (5, 6), (11, 12), (5, 11), (6, 12), (0, 5), (0, 6))
_COLOURS = ((230, 60, 60), (60, 200, 60), (60, 90, 230), (230, 200, 40))


def _person(rng, x, y, w, h):
  """(17, 3) COCO keypoints (x, y, v) of a jittered figure in the box (x, y, w, h)."""
  kp = _TEMPLATE + rng.normal(0, 0.025, _TEMPLATE.shape)
  if rng.random() < 0.5:  # Some wave an arm.
    kp[9] = [0.10, 0.15 + 0.2 * rng.random()]
  pts = np.stack([x + kp[:, 0] * w, y + kp[:, 1] * h], axis=1)
  v = np.full((17, 1), 2.)
  v[rng.random(17) < 0.1] = 1.
  return np.concatenate([pts, v], axis=1)


def _image(rng, size, people):
  img = Image.fromarray(rng.integers(60, 140, (size[1], size[0], 3), dtype=np.uint8))
  draw = ImageDraw.Draw(img)
  for k, kp in enumerate(people):
    width = max(2, int(0.03 * (kp[:, 1].max() - kp[:, 1].min())))
    colour = _COLOURS[k % len(_COLOURS)]
    for a, b in _LIMBS:
      draw.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=colour, width=width)
    for x, y, _ in kp:
      draw.ellipse([x - width, y - width, x + width, y + width], fill=(250, 250, 250))
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def make_split(rng, num_images, first_id, size=(192, 160)):
  """-> ({file name: JPEG bytes}, COCO keypoints dict) of one split."""
  files, images, anns = {}, [], []
  for n in range(num_images):
    image_id = first_id + 7 * n
    name = f'{image_id:012d}.jpg'
    people = []
    count = 1 + n % 3
    slot = size[0] / count
    for k in range(count):
      h = rng.uniform(0.6, 0.9) * size[1]
      w = min(0.45 * h, 0.9 * slot)
      x = k * slot + rng.uniform(0, slot - w)
      y = rng.uniform(0, size[1] - h)
      kp = _person(rng, x, y, w, h)
      people.append(kp)
      lo, hi = kp[:, :2].min(0), kp[:, :2].max(0)
      bbox = [float(lo[0]) - 2, float(lo[1]) - 2, float(hi[0] - lo[0]) + 4,
              float(hi[1] - lo[1]) + 4]
      anns.append(dict(id=1000 * image_id + k, image_id=image_id, category_id=1,
                       iscrowd=0, num_keypoints=17, area=0.6 * bbox[2] * bbox[3],
                       bbox=bbox, keypoints=np.round(kp, 2).reshape(-1).tolist()))
    files[name] = _image(rng, size, people)
    images.append(dict(id=image_id, file_name=name, width=size[0], height=size[1]))
  from jhpe import skeletons  # pylint: disable=g-import-not-at-top
  coco = dict(images=images, annotations=anns, categories=[dict(
      id=1, name='person', supercategory='person',
      keypoints=list(skeletons.COCO.joint_names),
      skeleton=[[a + 1, b + 1] for a, b in _LIMBS])])
  return files, coco


def detections(rng, coco):
  """A detector's person boxes (COCO results format): every GT box jittered, plus a
  low-scored false positive per image."""
  out = []
  for a in coco['annotations']:
    x, y, w, h = a['bbox']
    j = rng.normal(0, 0.04, 4) * [w, h, w, h]
    out.append(dict(image_id=a['image_id'], category_id=1,
                    bbox=[round(float(v), 2) for v in (x + j[0], y + j[1], w + j[2], h + j[3])],
                    score=round(float(rng.uniform(0.7, 1.0)), 3)))
  for im in coco['images']:
    out.append(dict(image_id=im['id'], category_id=1, bbox=[2., 2., 30., 40.],
                    score=0.1))
  return out


def write(out_dir, train_images=6, val_images=3, seed=0):
  """Writes the official-layout archives into `out_dir`; returns {split_dir: coco dict}."""
  rng = np.random.default_rng(seed)
  os.makedirs(out_dir, exist_ok=True)
  splits = {'train2017': make_split(rng, train_images, 9),
            'val2017': make_split(rng, val_images, 400009)}
  with zipfile.ZipFile(os.path.join(out_dir, 'annotations_trainval2017.zip'), 'w') as z:
    for split_dir, (_, coco) in splits.items():
      z.writestr(f'annotations/person_keypoints_{split_dir}.json', json.dumps(coco))
  for split_dir, (files, _) in splits.items():
    with zipfile.ZipFile(os.path.join(out_dir, f'{split_dir}.zip'), 'w') as z:
      z.writestr(f'{split_dir}/', b'')
      for name, data in files.items():
        z.writestr(f'{split_dir}/{name}', data)
  with open(os.path.join(out_dir, 'person_detections_val2017.json'), 'w') as f:
    json.dump(detections(rng, splits['val2017'][1]), f)
  return {d: coco for d, (_, coco) in splits.items()}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  write(f.out, f.train_images, f.val_images, f.seed)
  print(f'{f.out}: annotations_trainval2017.zip, train2017.zip ({f.train_images} images), '
        f'val2017.zip ({f.val_images} images), person_detections_val2017.json')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('out', None, 'The folder to write (the manual_dir of coco_keypoints).')
  flags.DEFINE_integer('train_images', 6, 'Images in train2017.zip.')
  flags.DEFINE_integer('val_images', 3, 'Images in val2017.zip.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.mark_flag_as_required('out')
  app.run(main)
