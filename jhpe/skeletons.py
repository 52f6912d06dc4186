"""Joint sets of the benchmarks: names, flip pairs, limbs and metric normalisers.

Left and right are the person's own (person-centric), as in the LSP, MPII and COCO
annotations. Joint orders are the official ones of each dataset, so the stored examples keep
the annotation order and no re-indexing happens anywhere.

Normalisers (``Skeleton.normaliser``):
  'torso': LSP's PCK@0.2. The torso size is the distance between the left shoulder and the
    right hip of the ground truth. This is the person-centric definition of the official LSP
    evaluation that the Convolutional Pose Machines release follows:
    shihenw/convolutional-pose-machines-release, testing/src/run_benchmark.m,
    ``util_get_bodysize_size``: ``norm(rect(10,:) - rect(3,:))`` in 1-based LSP order, i.e.
    left shoulder (9) and right hip (2) here, "following evalLSP_official".
  'head': MPII's PCKh. The head size is 0.6 x the diagonal of the annotated head box
    (``SC_BIAS = 0.6`` in the MPII evaluation code); see `jhpe.metrics.head_size`.
  'bbox': COCO's OKS uses the person's box / segment area; evaluated with pycocotools.
"""

import dataclasses
import os
from typing import NamedTuple

import numpy as np


class PcpLimb(NamedTuple):
  """A body part for PCP: its name and two end points.

  Each end point is a tuple of joint indices whose mean is the end point, so a single joint
  is ``(j,)`` and the torso's "mid shoulders" is ``(right_shoulder, left_shoulder)``.
  """
  name: str
  start: tuple[int, ...]
  end: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint set.

  Attributes:
    name: 'lsp', 'mpii' or 'coco'.
    joint_names: (J,) names, in the dataset's annotation order.
    flip_pairs: (left, right) index pairs swapped by a horizontal flip.
    limbs: (a, b) index pairs drawn as sticks.
    pcp_limbs: the body parts scored by PCP.
    normaliser: 'torso' | 'head' | 'bbox' (see the module docstring).
    torso_joints: (left shoulder, right hip) indices: the person-centric torso for PCK.
    oks_sigmas: (J,) per-joint OKS sigmas (COCO's for 'coco', a custom set's own; empty
      where OKS is not used).
  """
  name: str
  joint_names: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...]
  limbs: tuple[tuple[int, int], ...]
  pcp_limbs: tuple[PcpLimb, ...]
  normaliser: str
  torso_joints: tuple[int, int]
  oks_sigmas: tuple[float, ...] = ()

  def __post_init__(self):
    j = len(self.joint_names)
    if len(set(self.joint_names)) != j:
      raise ValueError(f"{self.name}: joint_names must be unique.")
    indices = [i for pair in (*self.flip_pairs, *self.limbs, self.torso_joints)
               for i in pair]
    indices += [i for limb in self.pcp_limbs for i in (*limb.start, *limb.end)]
    if any(not 0 <= i < j for i in indices):
      raise ValueError(f"{self.name}: a joint index is outside [0, {j}).")
    flipped = [i for pair in self.flip_pairs for i in pair]
    if len(set(flipped)) != len(flipped):
      raise ValueError(f"{self.name}: a joint appears in two flip pairs.")
    if self.oks_sigmas and (len(self.oks_sigmas) != j
                            or not all(s > 0 for s in self.oks_sigmas)):
      raise ValueError(f"{self.name}: oks_sigmas must be {j} positive numbers, got "
                       f"{list(self.oks_sigmas)}.")
    if self.normaliser not in ("torso", "head", "bbox"):
      raise ValueError(
          f"{self.name}: normaliser must be 'torso', 'head' or 'bbox', got "
          f"{self.normaliser!r}.")

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def flip_permutation(self) -> np.ndarray:
    """(J,) int32: joint j of a flipped image is joint ``perm[j]`` of the original."""
    perm = np.arange(self.num_joints, dtype=np.int32)
    for left, right in self.flip_pairs:
      perm[left], perm[right] = right, left
    return perm

  @property
  def left_joints(self) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(self.joint_names) if n.startswith("left_"))

  @property
  def right_joints(self) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(self.joint_names) if n.startswith("right_"))

  def index(self, joint_name: str) -> int:
    """The index of a joint by name; ValueError naming the known joints otherwise."""
    try:
      return self.joint_names.index(joint_name)
    except ValueError:
      raise ValueError(
          f"{self.name} has no joint {joint_name!r}; joints: {self.joint_names}"
      ) from None


def _skeleton(name, joint_names, flip_pairs, limbs, pcp_parts, normaliser, oks_sigmas=()):
  """Builds a Skeleton from joint *names* (readable tables, checked indices)."""
  idx = {n: i for i, n in enumerate(joint_names)}

  def end(point):
    return tuple(idx[n] for n in ((point,) if isinstance(point, str) else point))

  return Skeleton(
      name=name,
      joint_names=tuple(joint_names),
      flip_pairs=tuple((idx[a], idx[b]) for a, b in flip_pairs),
      limbs=tuple((idx[a], idx[b]) for a, b in limbs),
      pcp_limbs=tuple(PcpLimb(n, end(a), end(b)) for n, a, b in pcp_parts),
      normaliser=normaliser,
      torso_joints=(idx["left_shoulder"], idx["right_hip"]),
      oks_sigmas=tuple(oks_sigmas),
  )


_SIDES = ("left", "right")
_ARMS_LEGS_FLIP = [(f"left_{p}", f"right_{p}") for p in
                   ("ankle", "knee", "hip", "wrist", "elbow", "shoulder")]
_ARMS_LEGS_LIMBS = [
    (f"{s}_{a}", f"{s}_{b}") for s in _SIDES
    for a, b in (("ankle", "knee"), ("knee", "hip"), ("wrist", "elbow"),
                 ("elbow", "shoulder"))
]
_TORSO_LIMBS = [("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
                ("left_hip", "right_hip"), ("left_shoulder", "right_shoulder")]
# The usual PCP parts (Ferrari et al. 2008; Johnson & Everingham 2010): the torso runs from
# the shoulders' midpoint to the hips' midpoint.
_TORSO_PCP = ("torso", ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"))
_ARMS_LEGS_PCP = [
    (f"{s}_{part}", f"{s}_{a}", f"{s}_{b}")
    for part, a, b in (("upper_arm", "shoulder", "elbow"), ("lower_arm", "elbow", "wrist"),
                       ("upper_leg", "hip", "knee"), ("lower_leg", "knee", "ankle"))
    for s in _SIDES
]

LSP = _skeleton(
    "lsp",
    # The order of LSP's joints.mat (the dataset's README).
    ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
     "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
     "left_wrist", "neck", "head_top"),
    _ARMS_LEGS_FLIP,
    _ARMS_LEGS_LIMBS + _TORSO_LIMBS + [("neck", "head_top"), ("neck", "left_shoulder"),
                        ("neck", "right_shoulder")],
    [_TORSO_PCP, ("head", "neck", "head_top")] + _ARMS_LEGS_PCP,
    "torso",
)

MPII = _skeleton(
    "mpii",
    # MPII's official joint ids 0..15.
    ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
     "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
     "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"),
    _ARMS_LEGS_FLIP,
    _ARMS_LEGS_LIMBS
    + [("pelvis", "thorax"), ("thorax", "upper_neck"), ("upper_neck", "head_top"),
       ("pelvis", "left_hip"), ("pelvis", "right_hip"), ("thorax", "left_shoulder"),
       ("thorax", "right_shoulder")],
    [_TORSO_PCP, ("head", "upper_neck", "head_top")] + _ARMS_LEGS_PCP,
    "head",
)

COCO = _skeleton(
    "coco",
    # COCO keypoints' official order.
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
     "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
     "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    [("left_eye", "right_eye"), ("left_ear", "right_ear")] + _ARMS_LEGS_FLIP,
    _ARMS_LEGS_LIMBS + _TORSO_LIMBS + [("nose", "left_eye"), ("nose", "right_eye"),
                        ("left_eye", "left_ear"), ("right_eye", "right_ear")],
    # COCO has no head-top joint, so PCP has the nine body parts without the head.
    [_TORSO_PCP] + _ARMS_LEGS_PCP,
    "bbox",
    # pycocotools' kpt_oks_sigmas (jhpe.oks.COCO_SIGMAS).
    (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087,
     .087, .089, .089),
)

_SKELETONS = {s.name: s for s in (LSP, MPII, COCO)}


def load_skeleton(path: str) -> Skeleton:
  """A custom keypoint set from its description file (JSON; see README, custom keypoints):

    {"name": "mouse", "keypoints": ["snout", "left_ear", ...],
     "flip_pairs": [["left_ear", "right_ear"], ...], "limbs": [["snout", "left_ear"], ...],
     "oks_sigmas": [0.025, ...]}

  Keypoints are named; pairs and limbs name them. Its metrics are OKS AP (with its sigmas)
  and PCK of sqrt(area), so its normaliser is 'bbox'; it has no PCP parts.
  """
  import json  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      spec = json.load(f)
    names = [str(n) for n in spec["keypoints"]]
    idx = {n: i for i, n in enumerate(names)}
    pairs = {key: tuple((idx[a], idx[b]) for a, b in spec.get(key, ()))
             for key in ("flip_pairs", "limbs")}
    sigmas = tuple(float(x) for x in spec["oks_sigmas"])
    name = str(spec.get("name") or os.path.splitext(os.path.basename(path))[0])
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable keypoint set description ({e}).") from None
  except KeyError as e:
    raise ValueError(f"{path}: {e} is not given, or a pair names a keypoint not in "
                     f"'keypoints' {list(spec.get('keypoints', []))} (a keypoint set "
                     "names 'keypoints', 'flip_pairs', 'limbs', 'oks_sigmas').") from None
  except TypeError as e:
    raise ValueError(f"{path}: flip_pairs and limbs are lists of [name, name] ({e})."
                     ) from None
  if not names:
    raise ValueError(f"{path}: 'keypoints' is empty.")
  try:
    return Skeleton(name=name, joint_names=tuple(names), flip_pairs=pairs["flip_pairs"],
                    limbs=pairs["limbs"], pcp_limbs=(), normaliser="bbox",
                    torso_joints=(0, 0), oks_sigmas=sigmas)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def get_skeleton(name: str) -> Skeleton:
  """Returns the skeleton 'lsp', 'mpii' or 'coco' (case-insensitive), or the custom set
  described by a .json file (`load_skeleton`)."""
  if isinstance(name, str) and name.lower().endswith(".json"):
    return load_skeleton(name)
  try:
    return _SKELETONS[name.lower()]
  except (KeyError, AttributeError):
    raise ValueError(
        f"Unknown skeleton {name!r}; expected one of {sorted(_SKELETONS)}.") from None
