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
    reason: what is wrong ('zero-byte file', 'missing file', the decoder's error, ...).
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


def check_image(path: str) -> ImageCheck:
  """Opens and fully decodes one file (draft mode for JPEGs); never raises."""
  try:
    if os.path.getsize(path) == 0:
      return ImageCheck(False, reason='zero-byte file')
  except FileNotFoundError:
    return ImageCheck(False, reason='missing file')
  except OSError as e:
    return ImageCheck(False, reason=f'cannot stat: {e}')
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
    return ImageCheck(False, reason=f'{type(e).__name__}: {e}'.replace(repr(path), 'file'))
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


def stored_bytes(path: str, check: ImageCheck) -> bytes:
  """The bytes to store: the file itself when it is an RGB JPEG, else an RGB JPEG of it."""
  with open(path, 'rb') as f:
    data = f.read()
  if not check.reencode:
    return data
  with Image.open(io.BytesIO(data)) as im:
    rgb = im.convert('RGB')   # what torchvision's loader does, so the pixels match theirs
  buf = io.BytesIO()
  rgb.save(buf, format='JPEG', quality=REENCODE_QUALITY)
  return buf.getvalue()


def default_num_workers() -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(16, cpus))
