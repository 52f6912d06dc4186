"""Tests for jhpe.skeletons."""

import numpy as np
import pytest

from jhpe import skeletons

ALL = (skeletons.LSP, skeletons.MPII, skeletons.COCO)


def test_joint_counts_and_orders():
  assert skeletons.LSP.num_joints == 14
  assert skeletons.MPII.num_joints == 16
  assert skeletons.COCO.num_joints == 17
  # LSP's order from the dataset's README (../shared/data/README.md).
  assert skeletons.LSP.joint_names == (
      "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
      "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
      "left_wrist", "neck", "head_top")
  # MPII's official ids.
  assert skeletons.MPII.index("pelvis") == 6
  assert skeletons.MPII.index("thorax") == 7
  assert skeletons.MPII.index("head_top") == 9
  assert skeletons.MPII.index("left_wrist") == 15
  assert skeletons.COCO.index("nose") == 0
  assert skeletons.COCO.index("right_ankle") == 16


@pytest.mark.parametrize("skel", ALL, ids=lambda s: s.name)
def test_flip_permutation_swaps_left_and_right(skel):
  perm = skel.flip_permutation
  assert perm.dtype == np.int32 and perm.shape == (skel.num_joints,)
  np.testing.assert_array_equal(perm[perm], np.arange(skel.num_joints))  # An involution.
  for j, name in enumerate(skel.joint_names):
    flipped = skel.joint_names[perm[j]]
    if name.startswith("left_"):
      assert flipped == "right_" + name[len("left_"):]
    elif name.startswith("right_"):
      assert flipped == "left_" + name[len("right_"):]
    else:
      assert flipped == name
  assert len(skel.left_joints) == len(skel.right_joints) > 0


@pytest.mark.parametrize("skel", ALL, ids=lambda s: s.name)
def test_limbs_are_valid_and_connected(skel):
  for a, b in skel.limbs:
    assert 0 <= a < skel.num_joints and 0 <= b < skel.num_joints and a != b
  # Every joint is drawn.
  drawn = {i for limb in skel.limbs for i in limb}
  assert drawn == set(range(skel.num_joints))


def test_lsp_pcp_parts_and_torso():
  lsp = skeletons.LSP
  names = [l.name for l in lsp.pcp_limbs]
  assert len(names) == 10 and "torso" in names and "head" in names
  torso = lsp.pcp_limbs[names.index("torso")]
  assert set(torso.start) == {lsp.index("left_shoulder"), lsp.index("right_shoulder")}
  assert set(torso.end) == {lsp.index("left_hip"), lsp.index("right_hip")}
  assert lsp.torso_joints == (lsp.index("left_shoulder"), lsp.index("right_hip"))
  assert lsp.normaliser == "torso"
  assert skeletons.MPII.normaliser == "head"
  assert skeletons.COCO.normaliser == "bbox"


def test_get_skeleton():
  assert skeletons.get_skeleton("LSP") is skeletons.LSP
  with pytest.raises(ValueError, match="lsp"):
    skeletons.get_skeleton("h36m")
  with pytest.raises(ValueError, match="no joint"):
    skeletons.LSP.index("tail")


def test_invalid_skeleton_rejected():
  with pytest.raises(ValueError, match="outside"):
    skeletons.Skeleton("x", ("a", "b"), ((0, 2),), (), (), "torso", (0, 1))
  with pytest.raises(ValueError, match="normaliser"):
    skeletons.Skeleton("x", ("a", "b"), (), (), (), "area", (0, 1))
