"""A faithful PyTorch port of the stacked hourglass, written for the side-by-side benchmark.

It follows the authors' released Torch7 code (umich-vl/pose-hg-train, `src/models/hg.lua` and
`Residual.lua`) and is meant to be the same network as `jhpe.models.hourglass`: the same
layers, in the same order, with the same parameter count (checked by `check_param_count`
and by tests/test_benchmarks.py):

- stem: conv 7x7 / 2 (64) + BN + ReLU, residual (64 -> 128), max-pool 2, residual (128 ->
  128), residual (128 -> features): 256x256 -> 64x64.
- per stack: an hourglass of `depth` levels built from pre-activation bottleneck residuals
  (BN-ReLU-1x1 (C/2), BN-ReLU-3x3 (C/2), BN-ReLU-1x1 (C); a 1x1 projection on the skip only
  where channels change), max-pool down, nearest-neighbour up, the skip branch added; then
  `num_modules` residuals, a 1x1 conv + BN + ReLU, and a 1x1 conv to the heatmaps; between
  stacks the features and the heatmaps are mapped back by 1x1 convs and added.

Images are NCHW (PyTorch's convention) in [0, 1], zero-centred as jhpe's are; `forward` returns a list over stacks of
(B, J, H/4, W/4) heatmaps.
"""

import torch
from torch import nn


class Residual(nn.Module):
  """Pre-activation bottleneck residual module (Newell et al., Residual.lua)."""

  def __init__(self, in_channels, out_channels, conv_bias=True):
    super().__init__()
    mid = out_channels // 2
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=conv_bias)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=conv_bias)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=conv_bias)
    self.relu = nn.ReLU(inplace=True)
    # A projection only where the number of channels changes, as in the released code.
    self.skip = (nn.Conv2d(in_channels, out_channels, 1, bias=conv_bias)
                 if in_channels != out_channels else None)

  def forward(self, x):
    y = self.conv1(self.relu(self.bn1(x)))
    y = self.conv2(self.relu(self.bn2(y)))
    y = self.conv3(self.relu(self.bn3(y)))
    return y + (x if self.skip is None else self.skip(x))


class Hourglass(nn.Module):
  """One hourglass of `depth` levels (recursive, as `hourglass(n, f, inp)` in hg.lua)."""

  def __init__(self, depth, features, num_modules, conv_bias=True):
    super().__init__()
    res = lambda: Residual(features, features, conv_bias)
    self.up1 = nn.Sequential(*[res() for _ in range(num_modules)])
    self.pool = nn.MaxPool2d(2, 2)
    self.low1 = nn.Sequential(*[res() for _ in range(num_modules)])
    if depth > 1:
      self.low2 = Hourglass(depth - 1, features, num_modules, conv_bias)
    else:
      self.low2 = nn.Sequential(*[res() for _ in range(num_modules)])
    self.low3 = nn.Sequential(*[res() for _ in range(num_modules)])
    self.up = nn.Upsample(scale_factor=2, mode='nearest')

  def forward(self, x):
    up1 = self.up1(x)
    low = self.low3(self.low2(self.low1(self.pool(x))))
    return up1 + self.up(low)


class StackedHourglass(nn.Module):
  """Stacked hourglass network (Newell et al., ECCV 2016), NCHW."""

  def __init__(self, num_stacks=8, features=256, depth=4, num_modules=1,
               num_joints=16, stem_features=64, conv_bias=True):
    super().__init__()
    self.num_stacks = num_stacks
    self.stem = nn.Sequential(
        nn.Conv2d(3, stem_features, 7, stride=2, padding=3, bias=conv_bias),
        nn.BatchNorm2d(stem_features),
        nn.ReLU(inplace=True),
        Residual(stem_features, 2 * stem_features, conv_bias),
        nn.MaxPool2d(2, 2),
        Residual(2 * stem_features, 2 * stem_features, conv_bias),
        Residual(2 * stem_features, features, conv_bias),
    )
    self.hourglasses = nn.ModuleList()
    self.heads = nn.ModuleList()
    self.outputs = nn.ModuleList()
    self.merge_features = nn.ModuleList()
    self.merge_outputs = nn.ModuleList()
    for i in range(num_stacks):
      self.hourglasses.append(
          Hourglass(depth, features, num_modules, conv_bias))
      self.heads.append(nn.Sequential(
          *[Residual(features, features, conv_bias) for _ in range(num_modules)],
          nn.Conv2d(features, features, 1, bias=conv_bias),
          nn.BatchNorm2d(features),
          nn.ReLU(inplace=True)))
      self.outputs.append(nn.Conv2d(features, num_joints, 1, bias=conv_bias))
      if i < num_stacks - 1:
        self.merge_features.append(nn.Conv2d(features, features, 1, bias=conv_bias))
        self.merge_outputs.append(nn.Conv2d(num_joints, features, 1, bias=conv_bias))

  def forward(self, images):
    """images (B, 3, H, W) in [0, 1] -> list over stacks of heatmaps (B, J, H/4, W/4)."""
    x = self.stem(images - 0.5)  # Zero-centred, as jhpe.models.layers.normalise_images.
    outputs = []
    for i in range(self.num_stacks):
      y = self.heads[i](self.hourglasses[i](x))
      heatmaps = self.outputs[i](y)
      outputs.append(heatmaps)
      if i < self.num_stacks - 1:
        x = x + self.merge_features[i](y) + self.merge_outputs[i](heatmaps)
    return outputs


def num_params(model):
  """Number of trainable parameters (BN running statistics are buffers, not counted)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stagewise_mse(outputs, targets):
  """The stage-wise heatmap loss: sum over stacks of the mean squared error."""
  return sum(torch.mean((o - targets) ** 2) for o in outputs)
