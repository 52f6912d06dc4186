"""From an image to joints in its own pixels: the one path of evaluation, predictor and export.

  encoded image --decode_image (JPEG draft at reduced size; EXIF for photos)--> PIL RGB
      --cut_canvas (THE crop: antialiasing reduce, bilinear affine)--> canvas (S, S, 3) uint8
      --predict_canvas (model, multi-scale, flip test, codec.decode)--> canvas joints
      --geometry.apply_affine(canvas_to_original)--> original pixels

The evaluation pipeline (`jhpe.data.pipeline`) cuts its canvases with `load_canvas`, the
predictor (`jhpe.predict`) cuts a file's with `load_canvas` too and an in-memory array's with
`cut_canvas`; the eval step and the predictor decode with `predict_canvas`. So a predictor
given an image file returns the evaluation's joints for it, to float rounding.

Host functions take numpy / PIL; `images_to_float` and `predict_canvas` are jittable. This
module imports neither TensorFlow Datasets nor grain.
"""

import functools
import io
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageOps

from jhpe import geometry

# EXIF orientations (tag 0x0112) whose transposition swaps width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)

# ----------------------------------------------------------------------------------------
# Host: images.
# ----------------------------------------------------------------------------------------


def _uint8_from_16bit(values):
  """0..65535 integers -> 0..255 uint8 (the exact 16 -> 8 bit map: round(v / 257))."""
  return np.clip(np.round(np.asarray(values, np.float64) / 257.0), 0, 255).astype(np.uint8)


def as_rgb(image, name='image'):
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/uint16 -> (H, W, 3) uint8 RGB.

  Grey is repeated over the three channels, RGBA drops its alpha channel (no compositing),
  16-bit values are mapped to 8 bits. Anything else is a ValueError naming `name`.
  """
  image = np.asarray(image)
  if image.dtype == np.uint16:
    image = _uint8_from_16bit(image)
  if image.dtype != np.uint8:
    raise ValueError(f'{name} must be uint8 (0..255) or uint16, got dtype {image.dtype}; '
                     'convert a float image in [0, 1] with '
                     '(image * 255).round().astype(np.uint8).')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
    raise ValueError(f'{name} must have shape (H, W, 3) (or grey (H, W), (H, W, 1), or '
                     f'RGBA (H, W, 4)), got {image.shape}.')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def pil_rgb(img):
  """A PIL image of any mode -> RGB: 16-bit and 32-bit grey scaled (not clipped), CMYK and palettes
  converted, alpha dropped."""
  if img.mode in ('RGB',):
    return img
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
    # PIL's convert('RGB') clips these at 255: a 16-bit PNG would come out white.
    return Image.fromarray(np.repeat(_uint8_from_16bit(np.asarray(img))[..., None], 3, -1))
  if img.mode == 'F':
    values = np.asarray(img, np.float64)
    peak = values.max() if values.size and values.max() > 1.0 else 1.0
    grey = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, -1))
  return img.convert('RGB')


def _unreadable(where, error):
  return ValueError(f'{where}: cannot decode the image, not a readable image '
                    f'({type(error).__name__}: {error}).')


def encoded_size(data, where, exif_transpose=False):
  """(width, height) of an encoded image from its header, as `decode_image` will show it."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      size = img.size
      if exif_transpose and img.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES:
        size = size[::-1]
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
    raise _unreadable(where, e) from e
  return size


def decode_image(data, where, min_size=None, exif_transpose=False):
  """Encoded bytes -> PIL RGB image, optionally JPEG-downscaled (draft) to >= min_size.

  Args:
    data: the file's bytes (JPEG, PNG, ...).
    where: names the image in errors.
    min_size: (w, h) in the stored orientation: let the JPEG decoder scale down by 1/2,
      1/4 or 1/8 while the image stays at least this large (decoding in the DCT domain:
      fast and antialiased).
    exif_transpose: apply the EXIF orientation (photos from phones and cameras). The
      datasets' annotations are in the stored pixel order, so their path leaves it off.

  Returns:
    (image, factor): `factor` (fx, fy) original pixels per decoded pixel (1 without draft),
    in the orientation of the returned image.
  """
  try:
    img = Image.open(io.BytesIO(data))
    full = img.size
    if min_size is not None:
      img.draft('RGB', (max(1, int(min_size[0])), max(1, int(min_size[1]))))
    if exif_transpose:
      if img.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES:
        full = full[::-1]
      img = ImageOps.exif_transpose(img)
    img = pil_rgb(img)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
    raise _unreadable(where, e) from e
  return img, (full[0] / img.size[0], full[1] / img.size[1])


def read_image(path, exif_transpose=True):
  """An image file -> (H, W, 3) uint8 RGB, upright (EXIF applied), any PIL mode converted.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a readable image (the message names it).
  """
  image, _ = decode_image(read_bytes(path), f'image {path!r}', exif_transpose=exif_transpose)
  return np.asarray(image)


def read_bytes(path):
  """The bytes of an image file (FileNotFoundError naming a missing one)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image {path!r} does not exist (or is not a file).')
  with open(path, 'rb') as f:
    return f.read()


def _pixel_scale(fx, fy):
  """Decoded-pixel -> original-pixel map of a downscale by (fx, fy), pixel centres."""
  return np.array([[fx, 0., 0.5 * fx - 0.5], [0., fy, 0.5 * fy - 0.5], [0., 0., 1.]])


def cut_canvas(image, center, scale, canvas_size, factor=(1., 1.)):
  """THE crop: the S x S canvas around a person, antialiased, bilinear.

  Where the image still has 2 or more pixels per canvas pixel (an image decoded at full
  size, a PNG, a person over 8x the canvas where the JPEG draft stops) it is first
  box-filtered down by the power of two the JPEG draft would have taken (the largest that
  keeps >= 1 pixel per canvas pixel), so arrays and files are sampled alike: a bilinear
  sample of a much larger image aliases.

  Args:
    image: PIL RGB image (possibly decoded at 1/factor of the original size).
    center: (2,) person centre, original pixels.
    scale: person size, original pixels: mapped onto the canvas side.
    canvas_size: S.
    factor: original pixels per decoded pixel (fx, fy).

  Returns:
    canvas uint8 (S, S, 3) and original_to_canvas (3, 3) float64.
  """
  pixels_per_canvas_pixel = min(scale / canvas_size / factor[0],
                                scale / canvas_size / factor[1])
  if pixels_per_canvas_pixel >= 2:
    reduce_by = 2 ** int(math.log2(pixels_per_canvas_pixel))
    # A box filter over the whole extent (not Image.reduce, which anchors its boxes at
    # the left edge): a mirrored image gives the mirrored result, as the flip test needs.
    width, height = image.size
    size = (max(1, round(width / reduce_by)), max(1, round(height / reduce_by)))
    image = image.resize(size, Image.BOX)
    factor = (factor[0] * width / size[0], factor[1] * height / size[1])
  m = np.asarray(geometry.crop_matrix(np.asarray(center, np.float64),
                                      np.float64(scale), canvas_size), np.float64)
  canvas_to_decoded = np.linalg.inv(m @ _pixel_scale(*factor))
  # PIL samples in pixel-corner coordinates (pixel i covers [i, i+1]); ours put pixel
  # centres at integers, hence the half-pixel shifts on both sides.
  shift = np.array([[1., 0., 0.5], [0., 1., 0.5], [0., 0., 1.]])
  unshift = np.array([[1., 0., -0.5], [0., 1., -0.5], [0., 0., 1.]])
  pil = shift @ canvas_to_decoded @ unshift
  out = image.transform((canvas_size, canvas_size), Image.AFFINE,
                        tuple(pil[:2].reshape(-1)), resample=Image.BILINEAR)
  return np.asarray(out, np.uint8), m


def load_canvas(data, center, scale, canvas_size, where, exif_transpose=False):
  """Encoded image -> canvas (S, S, 3) uint8 and original_to_canvas (3, 3).

  Decodes at the smallest JPEG scale that still gives >= 1 pixel per canvas pixel, then
  `cut_canvas`. The evaluation's and the predictor's way from a file to a canvas.
  """
  min_size = None
  if scale / canvas_size >= 2:
    ratio = canvas_size / scale
    width, height = encoded_size(data, where)
    min_size = (math.ceil(width * ratio), math.ceil(height * ratio))
  image, factor = decode_image(data, where, min_size=min_size, exif_transpose=exif_transpose)
  return cut_canvas(image, center, scale, canvas_size, factor)


def person_box(image_size, box=None, center=None, scale=None):
  """The person's centre (2,) and size () in original pixels, as the datasets store them.

  Args:
    image_size: (width, height) of the image.
    box: optional person box (x, y, w, h) in pixels (COCO's convention: (0, 0, W, H) is
      the whole image); its longest side times the margin becomes the canvas side.
    center, scale: alternatively the person's centre (x, y) and size in pixels (`scale`
      pixels map to the canvas side, as the stored examples' `scale`).
    With neither, the whole image is the person box.

  Returns:
    center (2,) float32 and scale () float32.
  """
  if box is not None and (center is not None or scale is not None):
    raise ValueError('give either box=(x, y, w, h) or center=(x, y) and scale, not both.')
  if (center is None) != (scale is None):
    raise ValueError(f'center and scale go together; got center={center!r}, '
                     f'scale={scale!r}.')
  if center is not None:
    center = np.asarray(center, np.float32)
    if center.shape != (2,) or not np.all(np.isfinite(center)):
      raise ValueError(f'center must be a finite (x, y) pair, got {center!r}.')
    scale = np.float32(scale)
    if not np.isfinite(scale) or scale <= 0:
      raise ValueError(f'scale must be a positive number of pixels, got {scale!r}.')
    return _warn_if_outside(image_size, center, scale)
  if box is None:
    box = (0.0, 0.0, float(image_size[0]), float(image_size[1]))
  box = np.asarray(box, np.float32)
  if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
    raise ValueError(f'box must be (x, y, w, h) with w, h > 0, got {box!r}.')
  return _warn_if_outside(image_size, *geometry.box_center_scale(box))


def _warn_if_outside(image_size, center, scale):
  """Warns when the canvas around the person does not overlap the image: its joints
  would be a guess on black padding."""
  lo, hi = np.asarray(center) - scale / 2, np.asarray(center) + scale / 2
  if np.any(hi < -0.5) or np.any(lo > np.asarray(image_size) - 0.5):
    warnings.warn(f'the person box (centre {np.round(center, 1).tolist()}, size '
                  f'{float(scale):.1f} px) lies outside the {image_size[0]}x{image_size[1]} '
                  'image: its joints are meaningless.', stacklevel=3)
  return center, scale


# ----------------------------------------------------------------------------------------
# Device: canvases -> joints.
# ----------------------------------------------------------------------------------------


def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float images -> float32 in [0, 1], the models' input."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def predict_canvas(variables: dict, images: jax.Array, *, model, codec, flip_permutation,
                   flip_test: bool = True, test_scales=(1.0,), all_stages: bool = False):
  """Joints in canvas pixels from canvases (B, S, S, 3), uint8 or float in [0, 1].

  Args:
    variables: {'params', 'batch_stats'?}.
    model: the flax module; `codec` its codec (`jhpe.codecs.make_codec`), whose decoding
      method is used.
    flip_permutation: (J,) `Skeleton.flip_permutation`.
    flip_test: average with the mirrored canvas's output (the papers' test protocol).
    test_scales: multi-scale test factors ((1.0,) = the canvas as is).
    all_stages: decode every stage's output, not only the last (stage-wise PCK).

  Returns:
    joints (B, J, 2) canvas pixels of the last stage, or (B, T, J, 2) over the T stages
    with `all_stages`; confidence (B, J) or (B, T, J); the last stage's heatmaps
    (B, h, w, J) (None for regression).
  """
  images = images_to_float(images)
  apply = functools.partial(_multiscale_outputs, variables, model=model,
                            scales=tuple(test_scales))
  outputs = apply(images)
  flipped = apply(images[:, :, ::-1]) if flip_test else [None] * len(outputs)
  stages = range(len(outputs)) if all_stages else [len(outputs) - 1]
  decoded = [codec.decode(outputs[t], flipped[t], flip_permutation) for t in stages]
  if not all_stages:
    return decoded[-1]
  joints, confidence = (jnp.stack([d[i] for d in decoded], axis=1) for i in (0, 1))
  return joints, confidence, decoded[-1][2]


def _multiscale_outputs(variables: dict, images: jax.Array, *, model,
                        scales=(1.0,)) -> list:
  """The model's outputs (eval mode), each stage averaged over the canvas resized by
  every factor of `scales` (the CPM benchmark's scale search).

  Args:
    variables: {'params', 'batch_stats'}.
    images: (B, S, S, 3) float canvases.
    scales: resize factors; (1.0,) is `model.apply` (any model), others need a heatmap
      model (a fully convolutional one).

  Returns:
    list over stages of (B, S / stride, S / stride, K) heatmaps on the grid of the canvas
    as given (or the regression outputs).
  """
  per_scale = [_outputs_at_scale(variables, images, float(s), model=model) for s in scales]
  if len(per_scale) == 1:
    return per_scale[0]
  return [sum(stage) / len(per_scale) for stage in zip(*per_scale)]


def _outputs_at_scale(variables, images, scale, *, model):
  """Heatmaps of the canvas resized by `scale`, resampled onto the unresized grid.

  The resized canvas (round(S x scale) px) is padded with zeros on the bottom and right to
  the model's input multiple. In continuous pixel coordinates heatmap point u is image
  point u x stride, so the resized canvas's heatmaps map onto the original grid by the
  exact ratio r = round(S x scale) / S alone, with no shift.
  """
  if scale == 1.0:
    return model.apply(variables, images, train=False)
  size = images.shape[2]
  resized = max(int(round(size * scale)), 1)
  padded = -(-resized // model.input_multiple) * model.input_multiple
  ratio = resized / size

  def resample(x, side, factor, antialias):
    # Input point x goes to x * factor; output pixels with no input under them stay zero
    # (the padding).
    return jax.image.scale_and_translate(
        x.astype(jnp.float32), (x.shape[0], side, side, x.shape[3]), (1, 2),
        jnp.array([factor, factor]), jnp.zeros(2), method="linear", antialias=antialias)

  outputs = model.apply(variables, resample(images, padded, ratio, True), train=False)
  grid = size // model.output_stride
  return [resample(out, grid, 1 / ratio, False) for out in outputs]
