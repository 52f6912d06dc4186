"""`synthetic`: procedurally drawn articulated figures on the LSP 14-joint skeleton.

The quickstart's dataset: no download, built in seconds, and learnable in minutes on a CPU
while still asking for what pose estimation needs (joint localisation under rotation, scale,
clutter and occlusion). Each image holds one human-like figure:

- a kinematic chain with human proportions: torso, head, two arms (shoulder, elbow, wrist)
  and two legs (hip, knee, ankle), with plausible joint-angle ranges (elbows and knees bend
  one way, limbs do not pass through the torso), a random in-plane rotation (+-45 degrees)
  and a size of 55-90% of the image height;
- textured limbs whose widths taper from proximal to distal; the person's LEFT limbs take
  warm hues and the RIGHT limbs cool hues (real images carry lateral cues such as the face
  and the clothes; without one, left and right of a figure seen from the front or from the
  back would be ambiguous), upper limbs darker than lower ones; the figure faces the camera
  or turns away at random, so image-left is not person-right;
- a textured background (colour noise and gradients), clutter (shapes and bars, some in
  limb-like colours), self-occlusion (limbs drawn in depth order) and occluding boxes; a
  joint under an occluder keeps its annotation (visible = 1) and is flagged `occluded`, as
  in LSP.

Everything is drawn from `np.random.default_rng([seed, split, index])`, so an example does
not depend on the others and the build is deterministic.
"""

import colorsys
import dataclasses
import io

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter
import tensorflow_datasets as tfds

from jhpe import geometry
from jhpe.data.builders import common

NUM_JOINTS = 14
# LSP joint order (jhpe.skeletons.LSP).
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE = range(6)
R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST, NECK, HEAD_TOP = range(6, 14)

# Segment lengths as fractions of the figure height (head top to ankles when upright).
_TORSO, _HEAD = 0.30, 0.17
_UPPER_ARM, _FOREARM = 0.17, 0.16
_THIGH, _SHIN = 0.23, 0.22
_SHOULDER_HALF, _HIP_HALF = 0.10, 0.065


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Sizes of the synthetic dataset. The config name goes into the build path."""
  num_train: int = 2000
  num_test: int = 500
  image_size: int = 128
  seed: int = 0
  # Difficulty: clutter shapes per image are drawn in [min_clutter, max_clutter); the
  # probabilities of an occluding box and of a blur.
  min_clutter: int = 3
  max_clutter: int = 12
  occluder_prob: float = 0.3
  blur_prob: float = 0.5


def synthetic_config(num_train, num_test, image_size=128, seed=0):
  """A config with a name that spells its values (so different sizes build apart)."""
  return SyntheticConfig(name=f'n{num_train}_{num_test}_s{image_size}_seed{seed}',
                         num_train=num_train, num_test=num_test,
                         image_size=image_size, seed=seed)


def _unit(angle):
  """Unit vector for an angle in radians, measured from image-down (+y) towards +x."""
  return np.array([np.sin(angle), np.cos(angle)])


def sample_pose(rng, size):
  """Joints (14, 2) of one figure in image pixels, plus drawing attributes.

  Angles are in the figure frame (radians from 'down', towards the figure's image-right
  side when upright); `side` = +1 puts the person's right limbs on the image's left
  (the figure faces the camera), -1 turns it away.
  """
  height = rng.uniform(0.55, 0.9) * size
  rotation = np.deg2rad(rng.uniform(-45, 45))
  side = rng.choice([1.0, -1.0])
  # Pelvis placed so that the figure stays mostly inside the image.
  pelvis = np.array([size / 2, size / 2]) + rng.uniform(-0.12, 0.12, 2) * size
  pelvis[1] += 0.08 * height

  def rot(v):
    c, s = np.cos(rotation), np.sin(rotation)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])

  up = rot(np.array([0., -1.]))
  across = rot(np.array([1., 0.]))  # towards image-right when upright
  lean = np.deg2rad(rng.uniform(-15, 15))
  torso_dir = rot(-_unit(lean))
  joints = np.zeros((NUM_JOINTS, 2))
  joints[NECK] = pelvis + _TORSO * height * torso_dir
  head_tilt = lean + np.deg2rad(rng.uniform(-20, 20))
  joints[HEAD_TOP] = joints[NECK] + _HEAD * height * rot(-_unit(head_tilt))
  # Person-right is image-left (-across) when facing the camera (side = +1).
  width_turn = rng.uniform(0.6, 1.0)  # foreshortening of a turned body
  for joint, sign in ((R_SHOULDER, -1), (L_SHOULDER, 1)):
    joints[joint] = joints[NECK] + sign * side * _SHOULDER_HALF * width_turn * height * across
    joints[joint] += 0.03 * height * -up
  for joint, sign in ((R_HIP, -1), (L_HIP, 1)):
    joints[joint] = pelvis + sign * side * _HIP_HALF * width_turn * height * across

  def limb(root, outward, a_range, bend_range, bend_sign, l1, l2):
    # `outward` = +1 when this limb's side is image-right in the figure frame.
    a = np.deg2rad(rng.uniform(*a_range)) * outward + lean
    b = a + np.deg2rad(rng.uniform(*bend_range)) * outward * bend_sign
    foreshorten = rng.uniform(0.7, 1.0, 2)
    mid = root + l1 * foreshorten[0] * height * rot(_unit(a))
    end = mid + l2 * foreshorten[1] * height * rot(_unit(b))
    return mid, end

  for (shoulder, elbow, wrist), sign in (((R_SHOULDER, R_ELBOW, R_WRIST), -1),
                                         ((L_SHOULDER, L_ELBOW, L_WRIST), 1)):
    # Arms: from hanging (-20) to raised overhead (170 deg); elbows bend forward/up.
    joints[elbow], joints[wrist] = limb(joints[shoulder], sign * side, (-20, 170),
                                        (0, 140), 1, _UPPER_ARM, _FOREARM)
  for (hip, knee, ankle), sign in (((R_HIP, R_KNEE, R_ANKLE), -1),
                                   ((L_HIP, L_KNEE, L_ANKLE), 1)):
    # Legs: slightly crossed (-15) to spread or kicked out (80 deg); knees bend back.
    joints[knee], joints[ankle] = limb(joints[hip], sign * side, (-15, 80), (0, 120), -1,
                                       _THIGH, _SHIN)
  return joints, dict(height=height, side=side, up=up)


def _colour(rng, hue_range, sat=(0.5, 1.0), val=(0.35, 1.0)):
  h = rng.uniform(*hue_range) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
  return int(r * 255), int(g * 255), int(b * 255)


def _background(rng, size, clutter=(3, 12)):
  """Smooth colour noise plus a gradient plus clutter shapes -> PIL image.

  clutter: the number of clutter shapes is drawn in [clutter[0], clutter[1]).
  """
  low = rng.uniform(0, 255, (4, 4, 3))
  img = Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC)
  arr = np.asarray(img, np.float32)
  arr += rng.normal(0, rng.uniform(3, 20), (size, size, 3))
  img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(*clutter) if clutter[1] > clutter[0] else clutter[0]):
    kind = rng.integers(3)
    # Clutter mostly in muted colours, some in limb-like saturated ones (distractors).
    colour = _colour(rng, (0, 1), sat=(0, 0.5) if rng.uniform() < 0.7 else (0.5, 1))
    x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
    w, h = rng.uniform(0.05, 0.4, 2) * size
    if kind == 0:
      draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    elif kind == 1:
      draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
    else:
      draw.line([x0, y0, x0 + w * rng.choice([-1, 1]), y0 + h], fill=colour,
                width=int(rng.integers(1, max(2, size // 25))))
  return img


def _draw_limb(draw, rng, p, q, colour, width_p, width_q):
  """A tapered, textured limb from p to q: a quad with round ends and stripes."""
  d = q - p
  n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6)
  quad = [tuple(p + n * width_p / 2), tuple(q + n * width_q / 2),
          tuple(q - n * width_q / 2), tuple(p - n * width_p / 2)]
  draw.polygon(quad, fill=colour)
  for c, r in ((p, width_p / 2), (q, width_q / 2)):
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)
  # Texture: a few darker/lighter stripes across the limb.
  shade = rng.uniform(0.6, 1.3)
  stripe = tuple(int(np.clip(v * shade, 0, 255)) for v in colour)
  for t in rng.uniform(0.15, 0.85, rng.integers(0, 4)):
    c = p + t * d
    w = (width_p + t * (width_q - width_p)) / 2
    draw.line([tuple(c + n * w), tuple(c - n * w)], fill=stripe,
              width=max(1, int(w / 2)))


def render_example(rng, size, clutter=(3, 12), occluder_prob=0.3, blur_prob=0.5):
  """One synthetic image and its annotation.

  Args:
    rng: a numpy Generator.
    size: the image side in pixels.
    clutter: the number of background clutter shapes is drawn in [clutter[0], clutter[1]).
    occluder_prob: the probability of a box occluding part of the figure.
    blur_prob: the probability of a Gaussian blur of the whole image.

  Returns:
    image (size, size, 3) uint8, joints (14, 2) float32 0-based pixels, occluded (14,).
  """
  joints, attrs = sample_pose(rng, size)
  height, side = attrs['height'], attrs['side']
  img = _background(rng, size, clutter)
  draw = ImageDraw.Draw(img)
  # Left limbs warm (reds to yellows), right limbs cool (cyans to blues).
  left_hue, right_hue = rng.uniform(-0.05, 0.12), rng.uniform(0.5, 0.68)
  colours = {}
  for name, hue in (('l', left_hue), ('r', right_hue)):
    colours[name + '_upper'] = _colour(rng, (hue, hue + 0.02), val=(0.35, 0.6))
    colours[name + '_lower'] = _colour(rng, (hue, hue + 0.02), val=(0.75, 1.0))
  torso_colour = _colour(rng, (0.25, 0.45), sat=(0.2, 0.8), val=(0.3, 0.9))
  skin = _colour(rng, (0.05, 0.1), sat=(0.2, 0.6), val=(0.5, 1.0))
  w_arm, w_leg = rng.uniform(0.05, 0.08) * height, rng.uniform(0.07, 0.1) * height
  arms = {s: [(sh, el, w_arm, 0.8 * w_arm, colours[s + '_upper']),
              (el, wr, 0.8 * w_arm, 0.6 * w_arm, colours[s + '_lower'])]
          for s, (sh, el, wr) in (('r', (R_SHOULDER, R_ELBOW, R_WRIST)),
                                  ('l', (L_SHOULDER, L_ELBOW, L_WRIST)))}
  legs = {s: [(hp, kn, w_leg, 0.8 * w_leg, colours[s + '_upper']),
              (kn, an, 0.8 * w_leg, 0.6 * w_leg, colours[s + '_lower'])]
          for s, (hp, kn, an) in (('r', (R_HIP, R_KNEE, R_ANKLE)),
                                  ('l', (L_HIP, L_KNEE, L_ANKLE)))}
  # Depth order: facing the camera (side = +1) the person's ... either side may be the far
  # one; the far limbs are drawn first, then the torso, then the near limbs.
  far, near = ('l', 'r') if rng.uniform() < 0.5 else ('r', 'l')
  segments = legs[far] + arms[far]
  for a, b, wa, wb, c in segments:
    _draw_limb(draw, rng, joints[a], joints[b], c, wa, wb)
  pelvis = (joints[R_HIP] + joints[L_HIP]) / 2
  torso = [joints[R_SHOULDER], joints[L_SHOULDER], joints[L_HIP], joints[R_HIP]]
  draw.polygon([tuple(p) for p in torso], fill=torso_colour)
  _draw_limb(draw, rng, pelvis, joints[NECK], torso_colour, 0.2 * height, 0.22 * height)
  head_c = joints[NECK] + 0.55 * (joints[HEAD_TOP] - joints[NECK])
  r = 0.5 * np.linalg.norm(joints[HEAD_TOP] - joints[NECK])
  draw.ellipse([head_c[0] - 0.8 * r, head_c[1] - r, head_c[0] + 0.8 * r, head_c[1] + r],
               fill=skin)
  if side > 0:  # Facing the camera: eyes, a cue for the head's orientation.
    for s in (-1, 1):
      e = head_c + 0.3 * r * np.array([s, 0.0]) - 0.1 * r
      draw.ellipse([e[0] - 1, e[1] - 1, e[0] + 1, e[1] + 1], fill=(20, 20, 20))
  for a, b, wa, wb, c in legs[near] + arms[near]:
    _draw_limb(draw, rng, joints[a], joints[b], c, wa, wb)
  for j in (R_WRIST, L_WRIST, R_ANKLE, L_ANKLE):  # hands and feet
    rr = 0.035 * height
    draw.ellipse([joints[j][0] - rr, joints[j][1] - rr, joints[j][0] + rr,
                  joints[j][1] + rr], fill=skin)
  occluded = np.zeros(NUM_JOINTS, np.float32)
  if rng.uniform() < occluder_prob:  # an occluding box over part of the figure
    c = joints[rng.integers(NUM_JOINTS)]
    w, h = rng.uniform(0.08, 0.25, 2) * height
    box = [c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2]
    draw.rectangle(box, fill=_colour(rng, (0, 1), sat=(0, 0.4)))
    occluded = ((joints[:, 0] >= box[0]) & (joints[:, 0] <= box[2])
                & (joints[:, 1] >= box[1]) & (joints[:, 1] <= box[3])).astype(np.float32)
  if rng.uniform() < blur_prob:
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
  return np.asarray(img), joints.astype(np.float32), occluded


def encode_jpeg(image, quality=90):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


class Synthetic(common.PoseBuilder):
  """Procedural articulated figures on the LSP skeleton (train and test splits).

  The shared constructor (`common.PoseBuilder`: array_record, the build's console lines);
  generated data is never bad, and needs no manual_dir.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticConfig(name='default', description='2000 train / 500 test, 128 px.'),
      SyntheticConfig(name='tiny', description='64 train / 32 test, 96 px (tests).',
                      num_train=64, num_test=32, image_size=96),
      SyntheticConfig(name='quickstart', description=(
          '2000 train / 500 test, 128 px, lighter clutter, fewer occluders and blurs '
          '(the README quickstart: learnable in a few CPU minutes).'),
                      min_clutter=0, max_clutter=4, occluder_prob=0.1, blur_prob=0.2),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.pose_features(
            NUM_JOINTS,
            occluded=tfds.features.Tensor(shape=(NUM_JOINTS,), dtype=np.float32)),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {'train': self._generate_examples(0, c.num_train),
            'test': self._generate_examples(1, c.num_test)}

  def _generate_examples(self, split, count):
    c = self.builder_config
    for i in range(count):
      rng = np.random.default_rng([c.seed, split, i])
      image, joints, occluded = render_example(
          rng, c.image_size, (c.min_clutter, c.max_clutter), c.occluder_prob, c.blur_prob)
      visible = np.ones(NUM_JOINTS, np.float32)
      center, scale = geometry.person_center_scale(joints, visible)
      yield i, dict(id=f'{"train" if split == 0 else "test"}_{i:06d}',
                    image=encode_jpeg(image), joints=joints, visible=visible,
                    center=center, scale=scale, occluded=occluded)
