"""Image decoding at prepare time: high bit depths are scaled (not clipped) to 8 bits, and a
bad file's reason reads as a sentence, without the path or PIL's exception names."""
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.data import builders
from uniemox_jax.data import demo
from uniemox_jax.data.builders import images


def _png16(samples: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): samples ``[H, W(, C)]``
  uint16; colour type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
  h, w = samples.shape[:2]
  raw = b''.join(b'\0' + samples[y].astype('>u2').tobytes() for y in range(h))

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data)))
  return (b'\x89PNG\r\n\x1a\n'
          + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def _ramp16(w: int = 64, h: int = 16) -> np.ndarray:
  """A horizontal ramp over the full 16-bit range."""
  return np.tile(np.round(np.linspace(0, 65535, w)).astype(np.uint16), (h, 1))


def _stored_rgb(path: Path) -> np.ndarray:
  check = images.check_image(str(path))
  assert check.ok and check.reencode, check
  with Image.open(io.BytesIO(images.stored_bytes(str(path), check))) as im:
    assert (im.format, im.mode) == ('JPEG', 'RGB')
    return np.asarray(im, np.float32)


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
  ramp = _ramp16()
  path = tmp_path / 'gray16.png'
  path.write_bytes(_png16(ramp, 0))
  with Image.open(path) as im:
    assert im.mode == 'I;16'
    # What PIL alone does: everything above 255 of 65535 becomes white.
    assert np.asarray(im.convert('RGB'))[:, 1:].min() == 255
  rgb = _stored_rgb(path)
  want = ramp / 257.0
  assert np.abs(rgb - want[..., None]).mean() < 2.0       # JPEG error only
  assert rgb[:, :4].mean() < 12 and rgb[:, -4:].mean() > 243
  assert abs(rgb.std() - want.std()) < 2.0                 # the contrast is intact


@pytest.mark.parametrize('color_type,channels', [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_pngs_keep_their_contrast(tmp_path, color_type, channels):
  ramp = _ramp16()
  planes = [ramp, ramp[:, ::-1], np.full_like(ramp, 32768)][:min(channels, 3)]
  if channels == 2:
    planes = [ramp]
  if channels in (2, 4):
    planes.append(np.full_like(ramp, 65535))                # opaque alpha
  path = tmp_path / f'c{color_type}.png'
  path.write_bytes(_png16(np.stack(planes, -1), color_type))
  rgb = _stored_rgb(path)
  want = np.stack(planes[:3] if channels >= 3 else planes[:1] * 3, -1)[..., :3] / 257.0
  assert np.abs(rgb - want).mean() < 3.0
  assert rgb[..., 0].std() > 60                             # a ramp, not a flat white


def test_high_depth_modes_scale_by_their_bit_depth():
  ramp = _ramp16().astype(np.float64)
  cases = {
      # mode: (samples, the value meant as white)
      'I;16': (ramp, 65535), 'I;16B': (ramp, 65535),
      'I': (ramp, 65535),                      # 32-bit ints holding 16-bit data
      'F': (ramp / 65535, 1.0),                # floats in [0, 1]
  }
  for mode, (values, white) in cases.items():
    dtype = {'I;16': '<u2', 'I;16B': '>u2', 'I': '<i4', 'F': '<f4'}[mode]
    im = Image.frombytes(mode, (values.shape[1], values.shape[0]),
                         values.astype(dtype).tobytes())
    got = np.asarray(images.to_rgb(im), np.float64)
    assert got.shape == values.shape + (3,), mode
    np.testing.assert_allclose(got[..., 0], np.round(values * 255 / white), atol=1,
                               err_msg=mode)
  # 8-bit data kept in a 32-bit mode is left as it is; negatives and NaN become 0.
  small = np.array([[0, 100, 255]], np.int32)
  assert np.asarray(images.to_rgb(Image.frombytes('I', (3, 1), small.tobytes())))[0, :, 0] \
      .tolist() == [0, 100, 255]
  odd = np.array([[-5.0, np.nan, 0.5, 1.0]], np.float32)
  assert np.asarray(images.to_rgb(Image.frombytes('F', (4, 1), odd.tobytes())))[0, :, 0] \
      .tolist() == [0, 0, 128, 255]


def test_tiff_16bit_uses_its_bits_per_sample(tmp_path):
  ramp = _ramp16()
  path = tmp_path / 'x.tif'
  Image.frombytes('I;16', (ramp.shape[1], ramp.shape[0]),
                  ramp.astype('<u2').tobytes()).save(path)
  rgb = _stored_rgb(path)
  assert np.abs(rgb[..., 0] - ramp / 257.0).mean() < 2.0


def test_8bit_modes_convert_as_before():
  rng = np.random.default_rng(0)
  rgba = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8))
  for im in (rgba, rgba.convert('P'), rgba.convert('LA'), rgba.convert('L'),
             rgba.convert('CMYK'), rgba.convert('1')):
    assert np.array_equal(np.asarray(images.to_rgb(im)), np.asarray(im.convert('RGB'))), \
        im.mode


def test_16bit_png_is_stored_with_its_contrast_by_prepare(tmp_path):
  root = tmp_path / 'benchmarks'
  demo.write_benchmark(root, 'emo8', per_class=(1, 1, 1), image_size=(32, 24))
  (root / 'emo8' / 'val' / 'awe' / 'scan16.png').write_bytes(_png16(_ramp16(), 0))
  builders.prepare('emotion_folder/emo8', root, tmp_path / 'tfds')
  source = builders.load_source('emo8', 'val', tmp_path / 'tfds')
  rec = next(source[i] for i in range(len(source))
             if source[i]['image_id'] == 'val/awe/scan16.png')
  with Image.open(io.BytesIO(rec['image'])) as im:
    gray = np.asarray(im.convert('L'), np.float32)
  assert gray[:, :4].mean() < 12 and gray[:, -4:].mean() > 243
  assert abs(gray.std() - (_ramp16() / 257.0).std()) < 2.0


def _write(path: Path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


def test_bad_image_reasons_read_cleanly(tmp_path):
  rng = np.random.default_rng(0)
  im = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
  enc = {}
  for fmt in ('JPEG', 'PNG'):
    buf = io.BytesIO()
    im.save(buf, fmt)
    enc[fmt] = buf.getvalue()
  zero, truncated, text = demo.write_bad_images(tmp_path / 'demo')
  cases = {
      zero: 'zero-byte file',
      truncated: 'truncated JPEG file (the image data ends early)',
      text: 'not an image (PIL cannot identify it; the file holds text)',
      _write(tmp_path / 'page.jpg', b'<!DOCTYPE html><html><body>404 Not Found</body></html>'):
          'not an image (PIL cannot identify it; the file holds an HTML/XML page)',
      _write(tmp_path / 'noise.jpg', bytes(range(1, 200)) * 2):
          'not an image (PIL cannot identify it)',
      _write(tmp_path / 'half.png', enc['PNG'][:len(enc['PNG']) // 2]):
          'truncated PNG file (the image data ends early)',
      _write(tmp_path / 'header.png', enc['PNG'][:30]):
          'damaged PNG header (PIL cannot identify it)',
      _write(tmp_path / 'header.jpg', enc['JPEG'][:50]):
          'truncated JPEG file (the image data ends early)',
      str(tmp_path / 'missing.jpg'): 'missing file',
  }
  for path, reason in cases.items():
    got = images.check_image(path).reason
    assert got == reason, (path, got)
    assert path not in got and 'file file' not in got and 'Error' not in got


def test_bad_reasons_in_the_prepare_report(tmp_path):
  root = tmp_path / 'benchmarks'
  demo.write_benchmark(root, 'emo8', per_class=(1, 1, 1), image_size=(32, 24))
  bad = demo.write_bad_images(root / 'emo8' / 'train' / 'anger')
  b = builders.prepare('emo8', root, tmp_path / 'tfds', skip_bad_images=True)
  report = json.loads((Path(b.data_dir) / builders.REPORT_NAME).read_text())
  reasons = {Path(r['path']).name: r['reason'] for r in report['bad_images']}
  assert sorted(reasons) == sorted(Path(p).name for p in bad)
  assert reasons['not_an_image.jpg'].startswith('not an image (PIL cannot identify it')
  assert reasons['truncated.jpg'].startswith('truncated JPEG file')
