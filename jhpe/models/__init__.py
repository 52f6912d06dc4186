"""The pose models and a registry by name.

Every model maps images float32 (B, H, W, 3) in [0, 1] to a list over stages:
`model.apply(variables, images, train=False)`; heatmap models give (B, h, w, K) per stage
(`output_stride`, `num_output_channels`; CPM's last channel is the background), DeepPose
gives (B, J, 2) normalised coordinates. Train mode needs `mutable=['batch_stats']`
(hourglass, DeepPose with BatchNorm) and DeepPose's `rngs={'perturb': key}`.

  model = get_model('hourglass', num_joints=16, num_stacks=2)
"""

import dataclasses

from jhpe.models.cpm import CPM
from jhpe.models.deeppose import DeepPose
from jhpe.models.hourglass import StackedHourglass

MODELS = {
    "hourglass": StackedHourglass,
    "cpm": CPM,
    "deeppose": DeepPose,
}


def model_fields(name: str) -> tuple:
  """The keyword arguments `get_model(name, ...)` accepts."""
  return tuple(f.name for f in dataclasses.fields(_model_class(name))
               if f.name not in ("parent", "name"))


def model_defaults(name: str) -> dict:
  """{field: default} of model `name`: a workdir written before a field existed holds that
  field at its default."""
  return {f.name: f.default for f in dataclasses.fields(_model_class(name))
          if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}


def _model_class(name: str):
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; allowed: {sorted(MODELS)}.")
  return MODELS[name]


def get_model(name: str, **kwargs):
  """Builds the model `name` ('hourglass', 'cpm', 'deeppose') with its fields `kwargs`.

  Raises a ValueError for an unknown name, an unknown field (listing the allowed ones) or
  a bad value (naming the field and what is allowed).
  """
  cls = _model_class(name)
  allowed = model_fields(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"Unknown argument(s) {unknown} for model {name!r}; allowed: "
                     f"{list(allowed)}.")
  return cls(**kwargs)


__all__ = ["MODELS", "CPM", "DeepPose", "StackedHourglass", "get_model", "model_defaults", "model_fields"]
