"""TFDS dataset builders, one per dataset (LSP, LSP-extended, MPII, COCO keypoints,
synthetic), and `common` (their shared feature spec and record checks)."""
