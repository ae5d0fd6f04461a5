"""Host-side input preparation for the person detector: decode, then letterbox or squash.

Two ways to bring an image to the detector's ``W × H`` input (416 × 416 for YOLOv3):

* ``letterbox`` (default; what Darknet's detector does): the image is scaled to fit, aspect
  kept, with Darknet's integer arithmetic (the limiting side becomes ``W`` or ``H``, the other
  ``(side · W) // width``), and centred at ``((W − w) // 2, (H − h) // 2)`` on a grey canvas;
* ``squash`` (what the released UniEmoX code's YOLO wrapper does): a plain resize to
  ``W × H``, aspect not kept.

Both resize bilinearly with PIL (antialiased when shrinking; Darknet's own resize is not).
The result is a uint8 canvas plus ``region`` ``(x0, y0, w, h)``, where the image sits on it:
bytes travel to the device 4× smaller than floats, and the device sets the exact Darknet grey
0.5 (127.5/255) outside ``region`` (:func:`uniemox_jax.detection.network_input`), which also
maps boxes back to original pixels from ``region`` and the original ``size``.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 size in the DCT domain when that still leaves at
least the resized size (PIL's ``draft``), which makes decoding several times cheaper and
changes nothing but the resampling path. Sizes and boxes always refer to the image as stored
(EXIF orientation is not applied, as everywhere in our data code).
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np
from PIL import Image

from uniemox_jax.data.builders import images

MODES = ('letterbox', 'squash')
# Host-side fill of the canvas outside the image; the device replaces it by exactly 0.5.
CANVAS_FILL = 128


def letterbox_region(width: int, height: int, net_width: int, net_height: int
                     ) -> tuple[int, int, int, int]:
  """``(x0, y0, w, h)`` of a ``width × height`` image letterboxed into the network input,
  computed as Darknet's ``letterbox_image`` does (integer division)."""
  if width <= 0 or height <= 0:
    raise ValueError(f'letterbox_region: image size {width}x{height} must be positive')
  if net_width * height < net_height * width:      # Darknet: w/im.w < h/im.h
    new_w, new_h = net_width, (height * net_width) // width
  else:
    new_w, new_h = (width * net_height) // height, net_height
  new_w, new_h = max(1, new_w), max(1, new_h)
  return (net_width - new_w) // 2, (net_height - new_h) // 2, new_w, new_h


def region_of(mode: str, width: int, height: int, net_width: int, net_height: int
              ) -> tuple[int, int, int, int]:
  """Where the image goes on the canvas for ``mode`` (``'letterbox'`` or ``'squash'``)."""
  if mode == 'letterbox':
    return letterbox_region(width, height, net_width, net_height)
  if mode == 'squash':
    return 0, 0, net_width, net_height
  raise ValueError(f'unknown detector input mode {mode!r}; use one of {MODES}')


def decode(data: bytes, target: tuple[int, int] | None = None
           ) -> tuple[Image.Image, tuple[int, int]]:
  """Encoded bytes → ``(RGB image, (width, height) as stored)``.

  With ``target`` ``(w, h)`` a JPEG may be decoded reduced (DCT scaling), never below
  ``target`` on either side.
  """
  img = Image.open(io.BytesIO(data))
  size = img.size
  if target is not None:
    img.draft('RGB', (max(1, target[0]), max(1, target[1])))
  if img.mode == 'P' and 'transparency' in img.info:
    img = img.convert('RGBA')   # straight to RGB warns about palette transparency
  if img.mode != 'RGB':
    # The conversion preparation stores non-RGB files with (high bit depths scaled, not
    # clipped), so detections are made on the pixels that are stored.
    img = images.to_rgb(img)
  img.load()
  return img, size


def place(img: Image.Image, region: tuple[int, int, int, int],
          net_size: tuple[int, int]) -> np.ndarray:
  """``img`` resized to ``region``'s size and put at its place on a ``CANVAS_FILL`` canvas.

  Returns uint8 ``[H, W, 3]`` (``net_size`` is ``(W, H)``).
  """
  x0, y0, w, h = region
  if img.size != (w, h):
    img = img.resize((w, h), Image.BILINEAR)
  pixels = np.asarray(img, dtype=np.uint8)
  if (x0, y0, w, h) == (0, 0, *net_size):
    return np.ascontiguousarray(pixels)
  canvas = np.full((net_size[1], net_size[0], 3), CANVAS_FILL, np.uint8)
  canvas[y0:y0 + h, x0:x0 + w] = pixels
  return canvas


def prepare(data: bytes, net_size: tuple[int, int], mode: str = 'letterbox'
            ) -> dict[str, np.ndarray]:
  """One encoded image → the detector's host-side input.

  Args:
    data: the encoded file (JPEG, PNG, ...).
    net_size: ``(W, H)`` of the network input.
    mode: ``'letterbox'`` or ``'squash'``.

  Returns:
    ``image`` uint8 ``[H, W, 3]``; ``region`` int32 ``[4]`` ``x0, y0, w, h`` on the canvas;
    ``size`` int32 ``[2]`` ``(width, height)`` of the image as stored.
  """
  with Image.open(io.BytesIO(data)) as probe:
    width, height = probe.size
  region = region_of(mode, width, height, *net_size)
  img, size = decode(data, region[2:])
  return {'image': place(img, region, net_size), 'region': np.asarray(region, np.int32),
          'size': np.asarray(size, np.int32)}


def failed(net_size: tuple[int, int]) -> dict[str, np.ndarray]:
  """The input for an image that could not be read: a grey canvas (its results are ignored)."""
  w, h = net_size
  return {'image': np.full((h, w, 3), CANVAS_FILL, np.uint8),
          'region': np.asarray((0, 0, w, h), np.int32), 'size': np.asarray((w, h), np.int32)}


@dataclasses.dataclass(frozen=True)
class DetectorInput:
  """Grain map transform: ``(index, path)`` → the host-side input of one image file.

  Adds ``index`` int64 (the position in the image list) and ``ok`` bool (False, with a grey
  canvas, for a missing or undecodable file: it gets no detections, and preparation's own
  image check reports it). Picklable, for Grain worker processes.
  """
  width: int
  height: int
  mode: str = 'letterbox'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'unknown detector input mode {self.mode!r}; use one of {MODES}')

  def __call__(self, item: tuple[int, str | os.PathLike]) -> dict[str, Any]:
    index, path = item
    net_size = (self.width, self.height)
    try:
      with open(path, 'rb') as f:
        out = prepare(f.read(), net_size, self.mode)
      ok = True
    except Exception:  # pylint: disable=broad-except
      # Any reader error (missing, truncated, not an image) means "no detections here".
      out, ok = failed(net_size), False
    out['index'] = np.int64(index)
    out['ok'] = np.bool_(ok)
    return out
