"""Image checks at prepare time: every file is opened and decoded once, bad ones are listed.

A data set of 118K web images always holds a few files that break training hours in: empty
downloads, truncated JPEGs, HTML error pages saved as ``.jpg``. Preparation finds all of them
up front (not just the first), so a user fixes or skips them in one go.

Decoding is the cost of the check. JPEGs are decoded in PIL's draft mode (libjpeg's DCT
scaling to 1/8 size), which still reads the whole entropy-coded stream, so a truncated file is
caught while the work is a fraction of a full decode. PIL holds the GIL while it decodes, so
large data sets are checked in a process pool. The pool uses ``spawn`` (``fork`` is unsafe
next to JAX's threads), so, as always with ``spawn``, a script that prepares data must keep
its top-level work under ``if __name__ == '__main__':`` (absl apps and the prepare tool do);
if the pool cannot start, checking goes on in one process with a warning.

Images that are not RGB JPEGs are stored re-encoded as RGB JPEGs (:func:`to_rgb`).
High-bit-depth images (16-bit grayscale PNG/TIFF/PGM, 32-bit integer and float TIFF) are
*scaled* to 8 bits by their bit depth, not clipped: PIL's own ``convert('RGB')`` clips every
value above 255, which turns a 16-bit photograph almost white.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

# JPEG quality for files that are not RGB JPEGs and are therefore re-encoded for storage.
REENCODE_QUALITY = 95
# Below this many images a process pool costs more (worker start-up) than it saves.
MIN_IMAGES_FOR_POOL = 2000
PROGRESS_EVERY_S = 10.0
# MPO (camera multi-picture files) starts with a plain JPEG that every decoder reads.
_JPEG_FORMATS = ('JPEG', 'MPO')


@dataclasses.dataclass(frozen=True)
class ImageCheck:
  """The result of checking one file.

  Attributes:
    ok: the file decoded completely.
    width, height: the image size in pixels (0 when not ok).
    reencode: ok, but not an RGB JPEG (PNG, grayscale or CMYK JPEG, ...): it is stored
      re-encoded as an RGB JPEG, so every stored image decodes to ``[H, W, 3]``.
    reason: why the file is bad ('' when ok).
  """
  ok: bool
  width: int = 0
  height: int = 0
  reencode: bool = False
  reason: str = ''


@dataclasses.dataclass(frozen=True)
class BadImage:
  """One example left out of (or blocking) preparation.

  Attributes:
    split: the split the file belongs to.
    path: the file's path as found on disk (absolute).
    reason: what is wrong ('zero-byte file', 'missing file', 'truncated JPEG file (...)',
      'not an image (PIL cannot identify it) ...', see :func:`describe_error`).
    row: the index row that referenced the file (EmoSet), or None.
  """
  split: str
  path: str
  reason: str
  row: Any = None

  def line(self) -> str:
    row = f'  (row {json.dumps(self.row)})' if self.row is not None else ''
    return f'[{self.split}] {self.path}: {self.reason}{row}'


class BadImagesError(ValueError):
  """Raised when preparation finds bad images and ``skip_bad_images`` is off."""

  def __init__(self, bad: Sequence[BadImage], where: str, report_path: str):
    self.bad = list(bad)
    lines = '\n'.join('  ' + b.line() for b in self.bad)
    super().__init__(
        f'{len(self.bad)} bad image(s) in {where} (missing, zero-byte, truncated or not '
        f'decodable):\n{lines}\n'
        'Fix or remove these files, or prepare with skip_bad_images=True '
        '(`python -m uniemox_jax.tools.prepare ... --skip_bad_images`) to leave them out; '
        f'the list is then written to {report_path}.')


# Leading bytes of the formats a data set of web images holds, to tell a damaged image from
# a file that never was one when PIL cannot identify it.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'GIF87a', 'GIF'),
    (b'GIF89a', 'GIF'), (b'BM', 'BMP'), (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'),
)


def _sniff_format(head: bytes) -> str | None:
  """The image format a file's first bytes announce, or None."""
  for magic, fmt in _SIGNATURES:
    if head.startswith(magic):
      return fmt
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WEBP'
  return None


def _sniff_content(head: bytes) -> str:
  """What a file that is not an image holds, from its first bytes ('' when unclear)."""
  text = head.lstrip().lower()
  if text.startswith((b'<!doctype html', b'<html', b'<?xml', b'<head', b'<body')):
    return 'an HTML/XML page'
  if text.startswith((b'{', b'[')):
    return 'JSON or other text'
  printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
  if head and printable / len(head) > 0.95:
    return 'text'
  if head and not head.strip(b'\x00'):
    return 'only zero bytes'
  return ''


def describe_error(error: Exception, path: str, fmt: str | None = None,
                   head: bytes = b'') -> str:
  """A short reason, for people, for a file PIL failed to open or decode.

  Args:
    error: what PIL raised.
    path: the file (removed from PIL's messages, which the report already names).
    fmt: the format PIL identified before decoding failed (None when it did not).
    head: the file's first bytes, to say what an unidentifiable file is.
  """
  msg = str(error)
  for p in (repr(os.fspath(path)), os.fspath(path)):   # the quoted form first
    msg = msg.replace(p, '')
  msg = ' '.join(msg.split())
  if isinstance(error, Image.DecompressionBombError):
    return (f'too large to decode safely ({msg.split(",")[0].lower()}; raise '
            'PIL.Image.MAX_IMAGE_PIXELS to accept it)')
  fmt = fmt or _sniff_format(head)
  kind = f'{fmt} ' if fmt else ''
  if isinstance(error, Image.UnidentifiedImageError) or 'cannot identify' in msg:
    if fmt:
      return f'damaged {fmt} header (PIL cannot identify it)'
    what = _sniff_content(head)
    return 'not an image (PIL cannot identify it' + (f'; the file holds {what})' if what
                                                      else ')')
  low = msg.lower()
  if 'truncated' in low:
    return f'truncated {kind}file (the image data ends early)'
  if 'broken data stream' in low:
    return f'corrupt {kind}data (broken data stream)'
  if 'decoder' in low or 'decoding' in low:
    return f'corrupt {kind}data (cannot decode: {msg})'
  return f'cannot decode {kind}file ({type(error).__name__}: {msg})'


def check_image(path: str) -> ImageCheck:
  """Opens and fully decodes one file (draft mode for JPEGs); never raises."""
  try:
    if os.path.getsize(path) == 0:
      return ImageCheck(False, reason='zero-byte file')
  except FileNotFoundError:
    return ImageCheck(False, reason='missing file')
  except OSError as e:
    return ImageCheck(False, reason=f'cannot stat: {e}')
  fmt = None
  try:
    with Image.open(path) as im:
      width, height = im.size
      fmt, mode = im.format, im.mode
      if fmt in _JPEG_FORMATS:
        # DCT scaling: decodes at about 1/8 size, still reading every byte of the stream.
        im.draft(None, (max(1, width // 8), max(1, height // 8)))
      im.load()
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises UnidentifiedImageError, OSError ("image file is truncated"), SyntaxError,
    # ValueError, DecompressionBombError, ... depending on the format: all mean "bad file".
    try:
      with open(path, 'rb') as f:
        head = f.read(64)
    except OSError:
      head = b''
    return ImageCheck(False, reason=describe_error(e, path, fmt, head))
  if width <= 0 or height <= 0:
    return ImageCheck(False, reason=f'empty image ({width}x{height})')
  return ImageCheck(True, width, height,
                    reencode=not (fmt in _JPEG_FORMATS and mode == 'RGB'))


def scan_images(paths: Sequence[str], *, num_workers: int = 1,
                desc: str = 'images') -> list[ImageCheck]:
  """Checks every file; results in the order of ``paths``. Logs progress every 10 s.

  Args:
    paths: files to check.
    num_workers: processes to decode with; 1 (or fewer than ``MIN_IMAGES_FOR_POOL`` files)
      checks in this process.
    desc: what is being checked, for the log.
  """
  n = len(paths)
  t0 = last = time.perf_counter()
  results: list[ImageCheck] = []
  bad = 0

  def progress(final: bool = False) -> None:
    dt = time.perf_counter() - t0
    logging.info('%s %s: checked %d/%d images in %.1f s (%.0f img/s), %d bad so far',
                 'done,' if final else 'checking', desc, len(results), n, dt,
                 len(results) / max(dt, 1e-9), bad)

  def consume(it) -> None:
    nonlocal last, bad
    for r in it:
      results.append(r)
      bad += not r.ok
      if time.perf_counter() - last > PROGRESS_EVERY_S:
        last = time.perf_counter()
        progress()

  if num_workers > 1 and n >= MIN_IMAGES_FOR_POOL:
    logging.info('Checking %d %s with %d processes.', n, desc, num_workers)
    try:
      with concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        consume(pool.map(check_image, paths, chunksize=64))
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning(
          'The image-checking process pool failed (%s); checking in this process instead. '
          "A script that prepares data must run it under `if __name__ == '__main__':` "
          '(worker processes re-import the main module).', e)
      results.clear()
      bad = 0
      consume(map(check_image, paths))
  else:
    consume(map(check_image, paths))
  progress(final=True)
  return results


# Modes that hold more than 8 bits per sample; PIL's convert('RGB') clips them at 255.
_HIGH_DEPTH_MODES = ('I', 'F', 'I;16', 'I;16L', 'I;16B', 'I;16N')


def bit_depth_max(im: Image.Image, values: np.ndarray) -> float:
  """The sample value that means full white in a high-bit-depth image.

  The file's own declaration when it has one: ``2**16 - 1`` for 16-bit modes and for PNG
  and PGM (PNG scales every sample to the full range of its bit depth; PIL rescales a PGM's
  ``maxval`` to 16 bits), ``2**BitsPerSample - 1`` for TIFF (12-bit scanners write 16-bit
  containers). Otherwise the smallest of 1 (floats in [0, 1]), ``2**8 - 1`` and
  ``2**16 - 1`` that holds the largest value, else the largest value itself.

  Args:
    im: the opened image (its mode, format and TIFF tags are read).
    values: its samples as a float array.
  """
  if im.format == 'TIFF':
    bits = getattr(im, 'tag_v2', {}).get(258)   # BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) else bits
    if im.mode != 'F' and isinstance(bits, int) and 8 < bits <= 16:
      return float(2 ** bits - 1)
  if im.mode.startswith('I;16') or (im.format in ('PNG', 'PPM') and im.mode == 'I'):
    return float(2 ** 16 - 1)
  top = float(values.max()) if values.size else 0.0
  candidates = ((1.0,) if im.mode == 'F' else ()) + (255.0, 65535.0)
  return next((c for c in candidates if top <= c), top)


def to_rgb(im: Image.Image) -> Image.Image:
  """An 8-bit RGB copy of ``im``, high bit depths scaled by :func:`bit_depth_max`.

  Palette, grayscale, CMYK and alpha modes convert as PIL's ``convert('RGB')`` does (what
  torchvision's loader does, so the pixels match theirs; alpha is dropped). 16-bit RGB(A)
  PNGs arrive here as 8-bit RGB(A) already (PIL keeps the high byte of each sample, which is
  the scaling). Single-channel modes with more than 8 bits (``I;16*``, ``I``, ``F``) are
  scaled linearly so that their full-white value maps to 255; negative and non-finite
  values become 0. A float image whose values exceed 65535 is stretched from its minimum to
  its maximum (it has no bit depth to go by).
  """
  if im.mode not in _HIGH_DEPTH_MODES:
    return im.convert('RGB')
  values = np.asarray(im, dtype=np.float64)
  values = np.where(np.isfinite(values), values, 0.0)
  white = bit_depth_max(im, values)
  low = 0.0
  if im.mode == 'F' and white > 65535.0:
    low = float(values.min())
  scaled = (values - low) * (255.0 / max(white - low, 1e-12))
  gray = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
  return gray.convert('RGB')


def stored_bytes(path: str, check: ImageCheck) -> bytes:
  """The bytes to store: the file itself when it is an RGB JPEG, else an RGB JPEG of it."""
  with open(path, 'rb') as f:
    data = f.read()
  if not check.reencode:
    return data
  with Image.open(io.BytesIO(data)) as im:
    rgb = to_rgb(im)
  buf = io.BytesIO()
  rgb.save(buf, format='JPEG', quality=REENCODE_QUALITY)
  return buf.getvalue()


def default_num_workers() -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(16, cpus))
