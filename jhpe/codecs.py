"""Codecs: what a model's outputs mean, in both directions (as mmpose's codecs).

A codec owns one output representation: `encode` turns canvas-pixel joints into training
targets and loss weights, `loss` scores the stage outputs against them, and `decode` turns
one stage's output (with the mirrored canvas's, for the flip test) back into canvas-pixel
joints and confidences. Everything a representation needs (canvas size, stride, sigma,
background channel, decoding method, loss kind) lives in the codec, so the train step, the
evaluation and the predictor never ask which kind of model they hold.

  HeatmapCodec      Gaussian heatmaps on the canvas / stride grid (Stacked Hourglass;
                    CPM with its background channel)
  RegressionCodec   normalised coordinates in [0, 1] (DeepPose)

`make_codec(model, config)` is the one place that maps a model to its codec.
"""

import dataclasses

import jax.numpy as jnp

from jhpe import heatmaps
from jhpe import losses


@dataclasses.dataclass(frozen=True)
class HeatmapCodec:
  """Gaussian heatmaps, (B, S / stride, S / stride, K) per stage.

  Attributes:
    input_size: S, the canvas side in pixels.
    stride: canvas pixels per heatmap pixel.
    sigma: the targets' Gaussian std in heatmap pixels.
    decode_method: 'argmax', 'quarter' or 'taylor' (`jhpe.heatmaps.decode`).
    background: a trailing background channel (K = J + 1, CPM): its target is
      1 - max over the joints, its weight 1; decoding drops it.
  """
  input_size: int
  stride: int
  sigma: float
  decode_method: str = "quarter"
  background: bool = False

  @property
  def heatmap_size(self) -> int:
    return self.input_size // self.stride

  def replace(self, **kwargs) -> "HeatmapCodec":
    return dataclasses.replace(self, **kwargs)

  def encode(self, joints, visible):
    """Canvas-pixel joints (B, J, 2), visible (B, J) -> heatmaps (B, h, w, K), weights (B, K)."""
    size = self.heatmap_size
    maps, weights = heatmaps.render_gaussian(
        heatmaps.canvas_to_heatmap(joints, self.stride), visible, (size, size), self.sigma)
    if self.background:
      maps = heatmaps.add_background(maps)
      weights = heatmaps.add_background_weight(weights)
    return maps, weights

  def loss(self, outputs, targets, weights):
    """(total (), per_stage (T,)): the L2 loss summed over the T stage outputs."""
    return losses.heatmap_loss(outputs, targets, weights)

  def decode(self, output, flipped=None, flip_permutation=None):
    """One stage's heatmaps -> joints, confidences and the joints' heatmaps.

    Args:
      output: (B, h, w, K) the stage's output for the canvases.
      flipped: optional (B, h, w, K) output for the mirrored canvases (the flip test):
        mirrored back, left/right swapped, and averaged with `output`.
      flip_permutation: (J,) `Skeleton.flip_permutation`, with `flipped`.

    Returns:
      joints (B, J, 2) canvas pixels, confidence (B, J) the decoded peaks, and the
      averaged joint heatmaps (B, h, w, J).
    """
    num_joints = output.shape[-1] - int(self.background)
    maps = output.astype(jnp.float32)[..., :num_joints]
    if flipped is not None:
      back = heatmaps.flip_heatmaps(flipped.astype(jnp.float32),
                                    flip_permutation)[..., :num_joints]
      maps = 0.5 * (maps + back)
    coords, confidence = heatmaps.decode(maps, method=self.decode_method)
    return heatmaps.heatmap_to_canvas(coords, self.stride), confidence, maps


@dataclasses.dataclass(frozen=True)
class RegressionCodec:
  """Joint coordinates normalised to the canvas, (B, J, 2) per stage in [0, 1].

  Attributes:
    input_size: S; canvas pixel x maps to (x + 0.5) / S (pixel centres at integers, so
      the canvas edges are 0 and 1).
    loss_kind: 'l2' (the paper), 'l1' or 'smooth_l1' (`jhpe.losses.regression_loss`).
  """
  input_size: int
  loss_kind: str = "l2"

  def replace(self, **kwargs) -> "RegressionCodec":
    return dataclasses.replace(self, **kwargs)

  def encode(self, joints, visible):
    """Canvas-pixel joints (B, J, 2) -> normalised targets (B, J, 2), weights (B, J)."""
    return (joints + 0.5) / self.input_size, visible

  def loss(self, outputs, targets, weights):
    return losses.regression_loss(outputs, targets, weights, kind=self.loss_kind)

  def decode(self, output, flipped=None, flip_permutation=None):
    """(B, J, 2) normalised -> joints (B, J, 2) canvas px, confidence ones (B, J), None."""
    size = self.input_size
    joints = output.astype(jnp.float32) * size - 0.5
    if flipped is not None:
      back = flipped.astype(jnp.float32) * size - 0.5
      back = back.at[..., 0].set(size - 1 - back[..., 0])[:, flip_permutation]
      joints = 0.5 * (joints + back)
    return joints, jnp.ones(joints.shape[:2], jnp.float32), None


def make_codec(model, config):
  """The codec of `model` (its `output_kind`) with the run's settings from `config`."""
  if model.output_kind == "regression":
    return RegressionCodec(config.input_size, loss_kind=config.regression_loss)
  return HeatmapCodec(config.input_size, model.output_stride, config.sigma,
                      decode_method=config.decode, background=model.background_channel)
