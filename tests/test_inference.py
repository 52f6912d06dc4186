"""Tests of jhpe.inference's host side: reading real image files, and THE crop.

The device side (`predict_canvas`: flip test, multi-scale, decoding) is tested in
test_train_steps.py with stand-in models; the predictor against the evaluation in
test_predict.py.
"""

import io
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jhpe import inference


def _exif_file(tmp_path, upright, orientation, fmt='PNG'):
  """Writes `upright` stored as a camera would with EXIF `orientation` (6: rotated CW)."""
  raw = {1: upright, 3: np.rot90(upright, 2), 6: np.rot90(upright, 1),
         8: np.rot90(upright, -1)}[orientation]
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = tmp_path / f'exif{orientation}.{fmt.lower()}'
  Image.fromarray(np.ascontiguousarray(raw)).save(path, fmt, exif=exif.tobytes(),
                                                   **({'quality': 100} if fmt == 'JPEG'
                                                      else {}))
  return path


def _pattern(h=40, w=60):
  """An asymmetric RGB picture: any wrong rotation or flip changes it."""
  image = np.zeros((h, w, 3), np.uint8)
  image[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
  image[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
  image[3:9, 5:20, 2] = 255
  return image


@pytest.mark.parametrize('orientation', [1, 3, 6, 8])
def test_exif_orientation_makes_photos_upright(tmp_path, orientation):
  upright = _pattern()
  path = _exif_file(tmp_path, upright, orientation)
  np.testing.assert_array_equal(inference.read_image(str(path)), upright)
  data = path.read_bytes()
  assert inference.encoded_size(data, 'x', exif_transpose=True) == (60, 40)
  # The datasets' path keeps the stored pixel order (their annotations are in it).
  stored, _ = inference.decode_image(data, 'x')
  assert stored.size == ((40, 60) if orientation in (6, 8) else (60, 40))


def test_exif_with_jpeg_draft_reports_the_upright_factor(tmp_path):
  upright = np.kron(_pattern(), np.ones((8, 8, 1), np.uint8))  # 320 x 480.
  path = _exif_file(tmp_path, upright, 6, fmt='JPEG')
  # min_size is in the stored orientation (320 wide, 480 high): 1/8 fits.
  image, factor = inference.decode_image(path.read_bytes(), 'x', min_size=(40, 60),
                                         exif_transpose=True)
  # Upright: 480 wide, 320 high, decoded at 1/8 in the DCT domain.
  assert image.size == (60, 40)
  np.testing.assert_allclose(factor, (8.0, 8.0))


def test_image_modes_become_8_bit_rgb(tmp_path):
  grey16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
  Image.fromarray(grey16).save(tmp_path / 'grey16.png')
  rgb = inference.read_image(str(tmp_path / 'grey16.png'))
  assert rgb.dtype == np.uint8 and rgb.shape == (12, 10, 3)
  # 16 -> 8 bits is a scaling, not a clip at 255 (PIL's own convert('RGB') clips).
  np.testing.assert_array_equal(rgb[..., 0], np.round(grey16 / 257).astype(np.uint8))
  assert len(np.unique(rgb)) > 50
  cmyk = Image.new('CMYK', (8, 6), (0, 255, 255, 0))  # Red in CMYK.
  cmyk.save(tmp_path / 'cmyk.jpg')
  red = inference.read_image(str(tmp_path / 'cmyk.jpg'))
  assert red.shape == (6, 8, 3) and red[..., 0].mean() > 200 and red[..., 1].mean() < 60
  palette = Image.fromarray(_pattern()).convert('P')
  palette.save(tmp_path / 'palette.gif')
  assert inference.read_image(str(tmp_path / 'palette.gif')).shape == (40, 60, 3)
  rgba = np.dstack([_pattern(), np.full((40, 60), 9, np.uint8)])
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(inference.read_image(str(tmp_path / 'rgba.png')),
                                _pattern())


def test_arrays_are_converted_or_named():
  np.testing.assert_array_equal(inference.as_rgb(np.full((3, 4), 65535, np.uint16)),
                                np.full((3, 4, 3), 255, np.uint8))
  with pytest.raises(ValueError, match=r'photo.*float32'):
    inference.as_rgb(np.zeros((3, 4, 3), np.float32), 'photo')
  with pytest.raises(ValueError, match=r'\(3, 4, 2\)'):
    inference.as_rgb(np.zeros((3, 4, 2), np.uint8))


def test_unreadable_and_missing_files_are_named(tmp_path):
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8 not really a jpeg')
  with pytest.raises(ValueError, match='broken.jpg.*not a readable image'):
    inference.read_image(str(broken))
  with pytest.raises(FileNotFoundError, match='missing.png'):
    inference.read_image(str(tmp_path / 'missing.png'))


def _stripes(size):
  """One-pixel black/white columns: the worst case for aliasing."""
  image = np.zeros((size, size, 3), np.uint8)
  image[:, ::2] = 255
  return image


def test_the_crop_antialiases_large_people():
  # A person 8x the canvas: plain bilinear sampling would pick stripes (0 or 255 per
  # canvas pixel); the crop averages them to grey as a smaller decode would.
  size, canvas_size = 512, 64
  canvas, m = inference.cut_canvas(Image.fromarray(_stripes(size)),
                                   center=(size / 2 - 0.5, size / 2 - 0.5), scale=size,
                                   canvas_size=canvas_size)
  inner = canvas[8:-8, 8:-8].astype(np.float64)
  assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3, (inner.mean(), inner.std())
  # The crop matrix is the geometry's: the image centre maps to the canvas centre.
  np.testing.assert_allclose(m[:2] @ [size / 2 - 0.5, size / 2 - 0.5, 1],
                             [canvas_size / 2 - 0.5] * 2, atol=1e-9)


def test_files_and_arrays_of_large_people_give_nearly_the_same_canvas(tmp_path):
  # A JPEG file goes through the JPEG draft (DCT-domain downscale), an array through the
  # box reduce: two antialiased ways to the same canvas.
  rng = np.random.default_rng(0)
  small = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
  big = np.asarray(Image.fromarray(small).resize((480, 480), Image.BICUBIC))
  buf = io.BytesIO()
  Image.fromarray(big).save(buf, 'JPEG', quality=95)
  decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  center, scale, canvas_size = (239.5, 239.5), 480.0, 64
  from_file, m1 = inference.load_canvas(buf.getvalue(), center, scale, canvas_size, 'x')
  from_array, m2 = inference.cut_canvas(Image.fromarray(decoded), center, scale,
                                        canvas_size)
  np.testing.assert_allclose(m1, m2)
  diff = np.abs(from_file.astype(np.float64) - from_array)[4:-4, 4:-4]
  assert diff.mean() < 4.0, diff.mean()


def test_person_box_defaults_to_the_whole_image():
  center, scale = inference.person_box((60, 40))
  np.testing.assert_allclose(center, (29.5, 19.5))
  assert scale == pytest.approx(1.25 * 60)
  with pytest.raises(ValueError, match='not both'):
    inference.person_box((60, 40), box=(0, 0, 5, 5), center=(1, 1), scale=3)


def test_importing_the_predictor_imports_no_dataset_code():
  code = ('import sys, jhpe.predict, jhpe.inference, jhpe.train.checkpoint; '
          'bad = [m for m in ("tensorflow_datasets", "grain", "tensorflow") '
          'if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


def test_a_box_outside_the_image_warns():
  with pytest.warns(UserWarning, match='outside the 60x40 image'):
    inference.person_box((60, 40), box=(500, 500, 20, 20))
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    inference.person_box((60, 40), box=(50, 30, 20, 20))  # Overlapping: no warning.
