"""A generated demo data set that looks like the real ones (docs/method.md §5), for tests and the demo.

Nothing can be downloaded on our machines, so the data-set builders are exercised on small
look-alikes written here, in the same layouts as the real releases:

``write_emoset(root)`` — EmoSet-118K, official layout (``layout='official'``)::

  root/info.json            {'emotion': {'label2idx': {name: idx}, 'idx2label': {'idx': name}},
                             'brightness': {...}, 'colorfulness': {...}, 'scene': {...},
                             'object': {...}, 'facial_expression': {...}, 'human_action': {...}}
  root/{train,val,test}.json  rows [emotion, image_id, image_path, annotation_path]
  root/image/<emotion>/<image_id>.jpg
  root/annotation/<emotion>/<image_id>.json
  root/person_boxes.json    {image_id: [{'box': [x0, y0, x1, y1], 'score': s, 'label': 'person'}]}

or the 3-field variant the released UniEmoX code reads (``layout='three_field'``): a flat
``info.json`` ``{'label2idx': ..., 'idx2label': ...}`` (emotions only) and rows
``[emotion, image_path, annotation_path]``; images, annotations and ``person_boxes.json``
(keyed by the image file's stem, which is the image id) are the same.

Paths in the rows are relative to ``root``. Emotion indices follow EmoSet's own order
(:data:`~uniemox_jax.data.classes.EMOSET_CLASSES`). An annotation has the keys ``brightness``
and ``colorfulness`` (fractions 0.0–1.0 in steps of 0.1, measured on the drawn pixels),
``scene`` (a name with underscores), ``object`` (a list of names, some multi-word),
``facial_expression`` and ``human_action``; each key is absent in some images (unknown), and
the last two only occur when a person is drawn.

``person_boxes.json`` is what a person detector would write: boxes in pixels of the stored
image, ``x1``/``y1`` exclusive (PIL's crop convention), entries in no particular order. An
image with a person has its exact figure box with score >= 0.8, sometimes with low-score
(0.3–0.79) distractors; an image without a person has either no entry or only low-score boxes.

``write_benchmark(root, name)`` — an ImageFolder look-alike in the authors' processed-split
layout, ``root/<folder>/{train,val,test}/<class>/<class>_<n>.jpg`` (folder and classes from
:data:`~uniemox_jax.data.classes.BENCHMARKS`).

Images are drawn scenes (PIL.ImageDraw only): each emotion has its own palette (the strongest
cue), background brightness, shapes and layout, with per-image randomness; most images hold a
stick-figure person at a random place and size. Everything is deterministic from ``seed``:
the same seed gives byte-identical files (each image has its own RNG keyed by seed, data set,
class and image number, so no file depends on the order things are written in).

CLI::

  python -m uniemox_jax.data.demo --out /tmp/demo [--seed 0] [--size small|tiny]
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import io
import json
import math
import os
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from uniemox_jax.data.classes import BENCHMARKS, EMOSET_CLASSES, SPLITS, get_benchmark

Box = tuple[int, int, int, int]

# Default sizes: per class (train, val, test) and image (W, H) in pixels.
SIZES: dict[str, dict[str, Any]] = {
    'small': dict(emoset=(24, 4, 4), benchmark=(40, 8, 16), image_size=(128, 96),
                  kind='palette'),
    'tiny': dict(emoset=(4, 1, 1), benchmark=(4, 1, 1), image_size=(64, 48), kind='palette'),
    # The embedded demo: shapes and people carry the emotion, colours do not; plenty of
    # captioned pre-training images and few labels per benchmark class (see `draw_cues`).
    'demo': dict(emoset=(100, 12, 12), benchmark=(8, 8, 24), image_size=(96, 96), kind='cues'),
}
KINDS = ('palette', 'cues')
JPEG_QUALITY = 90
PERSON_RATE = 0.75          # fraction of images with a drawn person
PERSON_MIN_SCORE = 0.8      # the paper's YOLOv3 confidence threshold

# ---------------------------------------------------------------------------------------
# Attribute vocabularies. Per class a few values, so captions vary and correlate with the
# class; the union is what info.json lists.
# ---------------------------------------------------------------------------------------

_LEVELS = tuple(f'{i / 10:.1f}' for i in range(11))
FACIAL_EXPRESSIONS = ('anger', 'fear', 'happy', 'neutral', 'sad', 'surprise')

# Per emotion: the scene names, object names, facial expressions and actions its
# annotations draw from (data, in demo_vocabulary.json next to this file).
_VOCAB: dict[str, dict[str, tuple[str, ...]]] = {
    emotion: {key: tuple(values) for key, values in keys.items()}
    for emotion, keys in json.loads(
        (Path(__file__).parent / 'demo_vocabulary.json').read_text()).items()}


def _vocabulary(key: str) -> tuple[str, ...]:
  if key in ('brightness', 'colorfulness'):
    return _LEVELS
  if key == 'facial_expression':
    return FACIAL_EXPRESSIONS
  extra = {'object': DISTRACTOR_OBJECTS, 'human_action': tuple(POSE_ACTIONS.values())}
  return tuple(sorted({v for c in _VOCAB.values() for v in c[key]} | set(extra.get(key, ()))))


# ---------------------------------------------------------------------------------------
# Drawing. Each style draws one emotion's scene; names of other benchmarks map onto the
# 8 Mikels styles so that every benchmark's classes look different from each other.
# ---------------------------------------------------------------------------------------

STYLE_ALIASES: dict[str, str] = {
    'joy': 'amusement', 'happy': 'amusement', 'happiness': 'amusement',
    'surprise': 'awe', 'love': 'contentment', 'peace': 'contentment',
    'neutral': 'contentment', 'sad': 'sadness',
}


def style_of(class_name: str) -> str:
  """The drawing style (one of the 8 Mikels emotions) used for a class name."""
  style = STYLE_ALIASES.get(class_name, class_name)
  if style not in _STYLES:
    raise KeyError(f'No drawing style for class {class_name!r}; add it to STYLE_ALIASES '
                   f'(styles: {sorted(_STYLES)}).')
  return style


@dataclasses.dataclass
class _Canvas:
  w: int
  h: int
  rng: np.random.Generator
  dh: float   # per-image hue jitter, degrees
  dv: float   # per-image value (brightness) jitter

  @property
  def s(self) -> float:   # the short side: shape sizes scale with it
    return min(self.w, self.h)

  def color(self, hue: float, sat: float, val: float, jitter: float = 0.0) -> tuple:
    """RGB from hue (degrees) and saturation/value in [0, 1], with this image's jitter."""
    r = self.rng
    hue = hue + self.dh + (r.uniform(-jitter, jitter) if jitter else 0.0)
    sat = float(np.clip(sat + (r.uniform(-0.06, 0.06) if jitter else 0.0), 0, 1))
    val = float(np.clip(val + self.dv, 0, 1))
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, sat, val)
    return tuple(int(round(255 * c)) for c in rgb)

  def spot(self, r_lo: float, r_hi: float, *region) -> tuple[float, float, float]:
    """A random point (`xy(*region)`) and a radius in [r_lo, r_hi) of the short side."""
    x, y = self.xy(*region)
    return x, y, self.rng.uniform(r_lo, r_hi) * self.s

  def xy(self, x0=0.0, x1=1.0, y0=0.0, y1=1.0) -> tuple[float, float]:
    """A uniform random point in the given fractions of the canvas."""
    return (self.rng.uniform(x0, x1) * self.w, self.rng.uniform(y0, y1) * self.h)


def _gradient(w: int, h: int, top: tuple, bottom: tuple) -> Image.Image:
  t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
  arr = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
  arr = np.broadcast_to(arr, (h, w, 3))
  return Image.fromarray(np.round(arr).astype(np.uint8), 'RGB')


def _star(cx, cy, r_out, r_in, points=5, rot=0.0):
  pts = []
  for i in range(2 * points):
    r = r_out if i % 2 == 0 else r_in
    a = rot + math.pi * i / points
    pts.append((cx + r * math.sin(a), cy - r * math.cos(a)))
  return pts


def _zigzag(c: _Canvas, y_frac=(0.0, 1.0), segments=(4, 8), amp=0.15):
  n = int(c.rng.integers(*segments))
  x = c.rng.uniform(-0.1, 0.3) * c.w
  y = c.rng.uniform(*y_frac) * c.h
  pts = [(x, y)]
  for i in range(n):
    x += c.w / n * c.rng.uniform(0.8, 1.4)
    y += (1 if i % 2 == 0 else -1) * c.rng.uniform(0.5, 1.0) * amp * c.h
    pts.append((x, y))
  return pts


def _amusement(c: _Canvas) -> tuple:
  top, bottom = c.color(50, 0.55, 0.98), c.color(35, 0.7, 0.9)
  shapes = []
  for _ in range(int(c.rng.integers(3, 7))):      # balloons on strings
    x, y, r = c.spot(0.07, 0.14, 0.05, 0.95, 0.05, 0.6)
    col = c.color(c.rng.choice([10, 30, 50, 60]), 0.85, 0.97, jitter=8)
    shapes.append(('line', [(x, y + r), (x + c.rng.uniform(-4, 4), y + 3 * r)], (90, 70, 40), 1))
    shapes.append(('ellipse', [x - r, y - 1.2 * r, x + r, y + r], col))
  for _ in range(int(c.rng.integers(15, 35))):    # confetti
    x, y, r = c.spot(0.01, 0.025)
    shapes.append(('ellipse', [x - r, y - r, x + r, y + r],
                   c.color(c.rng.uniform(0, 360), 0.8, 0.95)))
  return top, bottom, shapes


def _awe(c: _Canvas) -> tuple:
  top, bottom = c.color(215, 0.55, 0.95), c.color(230, 0.8, 0.55)
  shapes = []
  for _ in range(int(c.rng.integers(3, 9))):      # stars in the sky
    x, y, r = c.spot(0.03, 0.06, 0.0, 1.0, 0.03, 0.4)
    shapes.append(('polygon', _star(x, y, r, r * 0.45, rot=c.rng.uniform(0, 1)),
                   c.color(55, 0.15, 1.0)))
  for _ in range(int(c.rng.integers(2, 4))):      # snow-capped mountains
    peak_x, peak_y = c.xy(0.1, 0.9, 0.25, 0.55)
    half = c.rng.uniform(0.25, 0.5) * c.w
    base = c.h * 1.02
    shapes.append(('polygon', [(peak_x - half, base), (peak_x, peak_y), (peak_x + half, base)],
                   c.color(225, 0.4, c.rng.uniform(0.35, 0.6))))
    f = 0.25
    shapes.append(('polygon', [(peak_x - half * f, peak_y + (base - peak_y) * f),
                               (peak_x, peak_y),
                               (peak_x + half * f, peak_y + (base - peak_y) * f)],
                   c.color(210, 0.05, 0.98)))
  return top, bottom, shapes


def _contentment(c: _Canvas) -> tuple:
  top, bottom = c.color(185, 0.25, 0.97), c.color(110, 0.45, 0.8)
  shapes = []
  sx, sy = c.xy(0.1, 0.9, 0.08, 0.3)               # soft sun
  r = c.rng.uniform(0.08, 0.14) * c.s
  shapes.append(('ellipse', [sx - r, sy - r, sx + r, sy + r], c.color(55, 0.45, 1.0)))
  horizon = c.rng.uniform(0.4, 0.62) * c.h         # fields in horizontal stripes
  n = int(c.rng.integers(3, 6))
  for i in range(n):
    y0 = horizon + (c.h - horizon) * i / n
    shapes.append(('rectangle', [0, y0, c.w, c.h],
                   c.color(100, 0.55, 0.62 + 0.1 * (i % 2), jitter=10)))
  for _ in range(int(c.rng.integers(1, 4))):      # round trees on the horizon
    x = c.rng.uniform(0.05, 0.95) * c.w
    r = c.rng.uniform(0.06, 0.1) * c.s
    shapes.append(('rectangle', [x - r * 0.2, horizon - r, x + r * 0.2, horizon + r * 0.5],
                   c.color(30, 0.5, 0.45)))
    shapes.append(('ellipse', [x - r, horizon - 2.6 * r, x + r, horizon - 0.6 * r],
                   c.color(120, 0.6, 0.55, jitter=10)))
  return top, bottom, shapes


def _excitement(c: _Canvas) -> tuple:
  top, bottom = c.color(315, 0.75, 0.9), c.color(290, 0.8, 0.6)
  shapes = []
  for _ in range(int(c.rng.integers(1, 3))):      # bursts of rays
    cx, cy = c.xy(0.2, 0.8, 0.2, 0.8)
    n = int(c.rng.integers(10, 18))
    length = c.rng.uniform(0.3, 0.6) * c.s
    col = c.color(330, 0.35, 1.0, jitter=15)
    for k in range(n):
      a = 2 * math.pi * k / n + c.rng.uniform(-0.1, 0.1)
      shapes.append(('line', [(cx, cy), (cx + length * math.cos(a), cy + length * math.sin(a))],
                     col, max(1, int(0.02 * c.s))))
  for _ in range(int(c.rng.integers(2, 5))):      # stars
    x, y, r = c.spot(0.06, 0.12)
    shapes.append(('polygon', _star(x, y, r, r * 0.4, rot=c.rng.uniform(0, 1)),
                   c.color(c.rng.choice([300, 340]), 0.6, 1.0, jitter=10)))
  for _ in range(int(c.rng.integers(1, 3))):      # bright zig-zags
    shapes.append(('line', _zigzag(c, amp=0.12), c.color(185, 0.5, 1.0),
                   max(1, int(0.03 * c.s))))
  return top, bottom, shapes


def _anger(c: _Canvas) -> tuple:
  top, bottom = c.color(0, 0.85, 0.6), c.color(10, 0.9, 0.38)
  shapes = []
  for _ in range(int(c.rng.integers(2, 5))):      # jagged shards
    x, y, r = c.spot(0.1, 0.25)
    pts = [(x + r * math.cos(a) * c.rng.uniform(0.3, 1.0),
            y + r * math.sin(a) * c.rng.uniform(0.3, 1.0))
           for a in np.sort(c.rng.uniform(0, 2 * math.pi, 5))]
    shapes.append(('polygon', pts, c.color(5, 0.9, 0.25)))
  for _ in range(int(c.rng.integers(3, 6))):      # thick zig-zag cracks
    col = c.color(20, 0.95, 0.95) if c.rng.uniform() < 0.5 else c.color(0, 0.3, 0.08)
    shapes.append(('line', _zigzag(c, amp=0.25), col, max(2, int(0.04 * c.s))))
  return top, bottom, shapes


def _disgust(c: _Canvas) -> tuple:
  top, bottom = c.color(65, 0.5, 0.48), c.color(40, 0.55, 0.3)
  shapes = []
  for _ in range(int(c.rng.integers(4, 9))):      # lumpy blobs
    x, y = c.xy()
    col = c.color(80, 0.6, c.rng.uniform(0.3, 0.5), jitter=15)
    for _ in range(int(c.rng.integers(2, 5))):
      r = c.rng.uniform(0.04, 0.1) * c.s
      ox, oy = c.rng.uniform(-r, r, 2)
      shapes.append(('ellipse', [x + ox - r, y + oy - r * 0.8, x + ox + r, y + oy + r * 0.8],
                     col))
  for _ in range(int(c.rng.integers(10, 25))):    # brown spots
    x, y, r = c.spot(0.01, 0.03)
    shapes.append(('ellipse', [x - r, y - r, x + r, y + r], c.color(30, 0.7, 0.22)))
  return top, bottom, shapes


def _fear(c: _Canvas) -> tuple:
  top, bottom = c.color(270, 0.6, 0.18), c.color(250, 0.5, 0.06)
  shapes = []
  for _ in range(int(c.rng.integers(4, 9))):      # spikes rising from the ground
    x = c.rng.uniform(0, 1) * c.w
    half = c.rng.uniform(0.03, 0.08) * c.w
    tip = c.rng.uniform(0.2, 0.7) * c.h
    shapes.append(('polygon', [(x - half, c.h), (x + c.rng.uniform(-half, half), tip),
                               (x + half, c.h)], c.color(280, 0.5, 0.3)))
  for _ in range(int(c.rng.integers(1, 3))):      # glowing eyes in the dark
    x, y, r = c.spot(0.015, 0.03, 0.1, 0.9, 0.1, 0.5)
    for ex in (x - 3 * r, x + 3 * r):
      shapes.append(('ellipse', [ex - r, y - r * 0.6, ex + r, y + r * 0.6],
                     c.color(60, 0.8, 0.9)))
  return top, bottom, shapes


def _sadness(c: _Canvas) -> tuple:
  top, bottom = c.color(210, 0.12, 0.58), c.color(215, 0.2, 0.36)
  shapes = []
  for _ in range(int(c.rng.integers(1, 4))):      # grey clouds
    x, y = c.xy(0.0, 1.0, 0.0, 0.2)
    rw, rh = c.rng.uniform(0.2, 0.4) * c.w, c.rng.uniform(0.08, 0.15) * c.h
    shapes.append(('ellipse', [x - rw, y - rh, x + rw, y + rh], c.color(215, 0.08, 0.45)))
  for _ in range(int(c.rng.integers(1, 4))):      # dull vertical stripes (walls, poles)
    x = c.rng.uniform(0, 1) * c.w
    half = c.rng.uniform(0.02, 0.08) * c.w
    shapes.append(('rectangle', [x - half, 0, x + half, c.h], c.color(210, 0.1, 0.3)))
  for _ in range(int(c.rng.integers(25, 50))):    # slanted rain
    x, y = c.xy(-0.1, 1.0, -0.1, 1.0)
    ln = c.rng.uniform(0.06, 0.12) * c.h
    shapes.append(('line', [(x, y), (x + 0.3 * ln, y + ln)], c.color(205, 0.1, 0.75), 1))
  return top, bottom, shapes


_STYLES = {
    'amusement': _amusement, 'awe': _awe, 'contentment': _contentment,
    'excitement': _excitement, 'anger': _anger, 'disgust': _disgust, 'fear': _fear,
    'sadness': _sadness,
}


def _paint(draw: ImageDraw.ImageDraw, shape: tuple) -> None:
  kind, geom, col, *rest = shape
  if kind == 'line':
    draw.line(geom, fill=col, width=rest[0], joint='curve')
  elif kind == 'ellipse':
    draw.ellipse(geom, fill=col)
  elif kind == 'polygon':
    draw.polygon(geom, fill=col)
  elif kind == 'rectangle':
    draw.rectangle(geom, fill=col)
  else:
    raise ValueError(kind)


def _place_figure(rng: np.random.Generator, w: int, h: int, fh: float):
  """A figure of height `fh` at a random place: `(width, x0, y0, centre x, skin colour)`."""
  fw = 0.6 * fh
  x0 = rng.uniform(1, max(1.0, w - fw - 1))
  y0 = rng.uniform(1, max(1.0, h - fh - 1))
  skin = [(241, 194, 160), (198, 134, 90), (141, 85, 54), (255, 220, 190)][rng.integers(4)]
  return fw, x0, y0, x0 + fw / 2, skin


def _legs(rng: np.random.Generator, cx: float, hip: float, foot_y: float,
          spread: tuple[float, float], cloth: tuple, lw: int) -> list:
  """Two legs from the hip, each foot a random `spread` (pixels) left and right of centre."""
  return [('line', [(cx, hip), (cx + side * rng.uniform(*spread), foot_y)], cloth, lw)
          for side in (-1, 1)]


def _figure_shapes(rng: np.random.Generator, w: int, h: int, bg_value: float) -> list:
  """A stick figure (head, body, arms, legs) at a random place and size, in pixels."""
  fh = rng.uniform(0.35, 0.85) * h                 # figure height
  fw, x0, y0, cx, skin = _place_figure(rng, w, h, fh)
  lw = max(2, int(round(0.07 * fh)))
  r = 0.11 * fh
  # Clothing contrasts with the background so that the figure stands out.
  val = rng.uniform(0.05, 0.25) if bg_value > 0.5 else rng.uniform(0.8, 1.0)
  cloth = tuple(int(round(255 * v)) for v in
                colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.8), val))
  neck, hip = y0 + 2 * r, y0 + 0.58 * fh
  shoulder = neck + 0.06 * fh
  shapes = _legs(rng, cx, hip, y0 + fh - lw / 2, (0.05 * fw, 0.25 * fw), cloth, lw)
  for side in (-1, 1):                             # arms: hands anywhere from hip to above head
    hand = (cx + side * rng.uniform(0.25, 0.5) * fw, y0 + rng.uniform(0.05, 0.6) * fh)
    shapes.append(('line', [(cx, shoulder), hand], skin, max(1, lw - 1)))
  shapes.append(('rectangle', [cx - 0.1 * fw * 1.5, neck, cx + 0.1 * fw * 1.5, hip], cloth))
  shapes.append(('ellipse', [cx - r, y0, cx + r, y0 + 2 * r], skin))
  return shapes


def draw_image(label: int | str, rng: np.random.Generator,
               size: tuple[int, int] = (128, 96), person: bool = True, *,
               classes: Sequence[str] = EMOSET_CLASSES,
               noise_std: tuple[float, float] = (3.0, 8.0)
               ) -> tuple[Image.Image, Box | None]:
  """Draws one scene of an emotion class.

  Args:
    label: index into ``classes`` (EmoSet order by default), or a class name.
    rng: the image's random generator (consumed).
    size: ``(W, H)`` in pixels.
    person: draw a stick-figure person.
    classes: the class list ``label`` indexes.
    noise_std: range of the per-image Gaussian pixel-noise standard deviation (0–255 scale).

  Returns:
    ``(image, box)``: an RGB ``PIL.Image`` of ``size``, and the figure's exact pixel box
    ``(x0, y0, x1, y1)`` (x1, y1 exclusive) or ``None`` without a person. The random draws
    for the scene and the noise come before the figure's, so the same ``rng`` state with
    ``person=False`` gives the same image with the figure's pixels left out.
  """
  name = classes[label] if not isinstance(label, str) else label
  w, h = size
  c = _Canvas(w, h, rng,
              dh=rng.uniform(-12, 12), dv=rng.uniform(-0.06, 0.06))
  top, bottom, shapes = _STYLES[style_of(name)](c)
  img = _gradient(w, h, top, bottom)
  draw = ImageDraw.Draw(img)
  for shape in shapes:
    _paint(draw, shape)
  noise = rng.normal(0.0, rng.uniform(*noise_std), (h, w, 3)).astype(np.float32)
  box = None
  if person:
    bg_value = float(np.asarray(img, np.float32).mean()) / 255
    mask = Image.new('L', (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for shape in _figure_shapes(rng, w, h, bg_value):
      _paint(draw, shape)
      _paint(mdraw, (shape[0], shape[1], 255, *shape[3:]))
    box = mask.getbbox()
  arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255)
  return Image.fromarray(np.round(arr).astype(np.uint8), 'RGB'), box


# ---------------------------------------------------------------------------------------
# The demo's images ('cues'): colour says nothing about the emotion. Backgrounds, lighting
# and object colours are drawn from one distribution for every class; the emotion is in the
# shapes of the scene's objects and in the drawn person's pose and face — in an image with a
# person, half the time only there — so a model has to look at both views, and the captions
# (which name the objects, the expression and the action) tell a teacher what to look for.
# ---------------------------------------------------------------------------------------

# emotion -> (object name in the captions, how it is drawn)
CUE_OBJECTS: dict[str, str] = {
    'amusement': 'Balloon', 'awe': 'Star', 'contentment': 'Tree', 'excitement': 'Firework',
    'anger': 'Lightning', 'disgust': 'Garbage', 'fear': 'Spider', 'sadness': 'Rain',
}
DISTRACTOR_OBJECTS = ('Box', 'Ring', 'Cross')
# emotion -> (pose, mouth, brows): every combination is one emotion's.
PERSON_CUES: dict[str, tuple[str, str, str]] = {
    'amusement': ('arms_up', 'smile', 'none'), 'awe': ('arms_up', 'open', 'raised'),
    'contentment': ('arms_down', 'smile', 'none'),
    'excitement': ('arms_out', 'smile', 'raised'), 'anger': ('arms_out', 'frown', 'angry'),
    'disgust': ('hands_on_head', 'frown', 'angry'),
    'fear': ('hands_on_head', 'open', 'raised'), 'sadness': ('arms_down', 'frown', 'none'),
}
POSE_ACTIONS = {'arms_up': 'raising both arms', 'arms_out': 'spreading the arms',
                'arms_down': 'standing still', 'hands_on_head': 'holding the head'}
CUE_EXPRESSIONS = {'amusement': 'happy', 'awe': 'surprise', 'contentment': 'happy',
                   'excitement': 'happy', 'anger': 'anger', 'disgust': 'anger', 'fear': 'fear',
                   'sadness': 'sad'}
CUE_ONLY_PERSON_RATE = 0.5  # with a person: the share of images whose objects are distractors
# emotion -> the hue (degrees) of its objects and of its people's clothes. Backgrounds and
# distractor objects take any hue, so a colour alone does not tell the emotion: the cue is
# an object of the emotion's shape *and* hue, or a person of its pose, face and clothes.
CUE_HUES: dict[str, float] = {e: 45.0 * i for i, e in enumerate(
    ('anger', 'excitement', 'amusement', 'contentment', 'sadness', 'awe', 'fear', 'disgust'))}


def _cue_color(rng: np.random.Generator, style: str) -> tuple:
  hue = (CUE_HUES[style] + rng.uniform(-8, 8)) % 360
  rgb = colorsys.hsv_to_rgb(hue / 360, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
  return tuple(int(round(255 * c)) for c in rgb)


def _any_color(rng: np.random.Generator, sat=(0.3, 0.9), val=(0.3, 1.0)) -> tuple:
  rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
  return tuple(int(round(255 * c)) for c in rgb)


def _cue_object(kind: str, rng: np.random.Generator, x: float, y: float, r: float,
                col: tuple | None = None) -> list:
  """One object's shapes (pixels) centred at (x, y) with radius ~r, in `col` (default: a
  random colour)."""
  col = col or _any_color(rng, val=(0.5, 1.0))
  w = max(1, int(round(0.12 * r)))
  if kind == 'Balloon':
    return [('line', [(x, y + r), (x + rng.uniform(-0.3, 0.3) * r, y + 2.4 * r)], col, w),
            ('ellipse', [x - 0.75 * r, y - r, x + 0.75 * r, y + r], col)]
  if kind == 'Star':
    return [('polygon', _star(x, y, r, 0.42 * r, rot=rng.uniform(0, 1)), col)]
  if kind == 'Tree':
    trunk = _any_color(rng, val=(0.2, 0.5))
    return [('rectangle', [x - 0.15 * r, y, x + 0.15 * r, y + 1.1 * r], trunk),
            ('ellipse', [x - 0.8 * r, y - 1.1 * r, x + 0.8 * r, y + 0.3 * r], col)]
  if kind == 'Firework':
    n = int(rng.integers(9, 14))
    return [('line', [(x, y), (x + r * math.cos(2 * math.pi * k / n),
                               y + r * math.sin(2 * math.pi * k / n))], col, w)
            for k in range(n)]
  if kind == 'Lightning':
    s = 1 if rng.uniform() < 0.5 else -1
    pts = [(x - 0.2 * s * r, y - r), (x + 0.35 * s * r, y - r), (x + 0.05 * s * r, y - 0.1 * r),
           (x + 0.4 * s * r, y - 0.1 * r), (x - 0.3 * s * r, y + r), (x - 0.05 * s * r, y + 0.15 * r),
           (x - 0.4 * s * r, y + 0.15 * r)]
    return [('polygon', pts, col)]
  if kind == 'Garbage':
    out = []
    for _ in range(int(rng.integers(3, 6))):
      ox, oy = rng.uniform(-0.6, 0.6, 2) * r
      rr = rng.uniform(0.3, 0.55) * r
      out.append(('ellipse', [x + ox - rr, y + oy - 0.7 * rr, x + ox + rr, y + oy + 0.7 * rr],
                  col))
    return out
  if kind == 'Spider':
    out = []
    for k in range(8):
      a = math.pi * (0.15 + 0.7 * (k % 4) / 3) * (1 if k < 4 else -1)
      kx, ky = x + 0.7 * r * math.cos(a), y + 0.7 * r * math.sin(a)
      out.append(('line', [(x, y), (kx, ky), (kx + 0.3 * r * math.cos(a), ky + 0.45 * r)],
                  col, w))
    out.append(('ellipse', [x - 0.35 * r, y - 0.3 * r, x + 0.35 * r, y + 0.3 * r], col))
    return out
  if kind == 'Rain':
    out = []
    for _ in range(int(rng.integers(4, 7))):
      ox, oy = rng.uniform(-r, r), rng.uniform(-r, 0.3 * r)
      out.append(('polygon', [(x + ox, y + oy - 0.35 * r), (x + ox + 0.14 * r, y + oy),
                              (x + ox, y + oy + 0.12 * r), (x + ox - 0.14 * r, y + oy)], col))
    return out
  if kind == 'Box':
    return [('rectangle', [x - 0.7 * r, y - 0.7 * r, x + 0.7 * r, y + 0.7 * r], col)]
  if kind == 'Ring':
    inner = _any_color(rng)
    return [('ellipse', [x - r, y - r, x + r, y + r], col),
            ('ellipse', [x - 0.55 * r, y - 0.55 * r, x + 0.55 * r, y + 0.55 * r], inner)]
  if kind == 'Cross':
    return [('rectangle', [x - r, y - 0.22 * r, x + r, y + 0.22 * r], col),
            ('rectangle', [x - 0.22 * r, y - r, x + 0.22 * r, y + r], col)]
  raise ValueError(kind)


def _cue_person(rng: np.random.Generator, w: int, h: int, pose: str, mouth: str,
                brows: str, cloth: tuple) -> list:
  """A figure with a readable face (mouth, brows) and pose, at a random place and size."""
  fh = rng.uniform(0.55, 0.9) * h
  fw, x0, y0, cx, skin = _place_figure(rng, w, h, fh)
  lw = max(2, int(round(0.06 * fh)))
  r = 0.14 * fh                                    # head radius: the face must be legible
  ink = (20, 20, 20)
  neck, hip = y0 + 2 * r, y0 + 0.6 * fh
  shoulder = neck + 0.05 * fh
  shapes = _legs(rng, cx, hip, y0 + fh - lw / 2, (0.1 * fw, 0.25 * fw), cloth, lw)
  for side in (-1, 1):                             # arms, by pose
    if pose == 'arms_up':
      hand = (cx + side * 0.35 * fw, y0 - 0.02 * fh)
    elif pose == 'arms_out':
      hand = (cx + side * 0.5 * fw, shoulder + 0.02 * fh)
    elif pose == 'arms_down':
      hand = (cx + side * 0.2 * fw, hip + 0.05 * fh)
    else:  # hands on the head
      hand = (cx + side * 0.9 * r, y0 + 0.6 * r)
    elbow = ((cx + hand[0]) / 2 + side * 0.12 * fw, (shoulder + hand[1]) / 2)
    shapes.append(('line', [(cx, shoulder), elbow, hand], skin, max(1, lw - 1)))
  shapes.append(('rectangle', [cx - 0.24 * fw, neck, cx + 0.24 * fw, hip], cloth))
  shapes.append(('ellipse', [cx - r, y0, cx + r, y0 + 2 * r], skin))
  ey, ex, er = y0 + 0.85 * r, 0.4 * r, max(1.0, 0.13 * r)
  for side in (-1, 1):                             # eyes and brows
    shapes.append(('ellipse', [cx + side * ex - er, ey - er, cx + side * ex + er, ey + er], ink))
    if brows == 'angry':
      shapes.append(('line', [(cx + side * 0.7 * r, ey - 0.45 * r), (cx + side * 0.15 * r,
                                                                     ey - 0.25 * r)], ink, lw // 2 + 1))
    elif brows == 'raised':
      shapes.append(('line', [(cx + side * 0.65 * r, ey - 0.4 * r), (cx + side * 0.2 * r,
                                                                    ey - 0.55 * r)], ink, lw // 2 + 1))
  my = y0 + 1.45 * r
  if mouth == 'smile':
    shapes.append(('line', [(cx - 0.45 * r, my - 0.15 * r), (cx, my + 0.2 * r),
                            (cx + 0.45 * r, my - 0.15 * r)], ink, lw // 2 + 1))
  elif mouth == 'frown':
    shapes.append(('line', [(cx - 0.45 * r, my + 0.2 * r), (cx, my - 0.12 * r),
                            (cx + 0.45 * r, my + 0.2 * r)], ink, lw // 2 + 1))
  else:  # open
    shapes.append(('ellipse', [cx - 0.22 * r, my - 0.2 * r, cx + 0.22 * r, my + 0.25 * r], ink))
  return shapes


def draw_cues(label: int | str, rng: np.random.Generator, size: tuple[int, int] = (96, 96),
              person: bool = True, *, classes: Sequence[str] = EMOSET_CLASSES,
              noise_std: tuple[float, float] = (3.0, 8.0)
              ) -> tuple[Image.Image, Box | None, dict]:
  """Draws one demo scene of an emotion class whose colours carry no information.

  The emotion shows in its object's shape (`CUE_OBJECTS`) and, with a person, in the pose
  and face (`PERSON_CUES`); with a person, the objects are distractors half of the time
  (`CUE_ONLY_PERSON_RATE`), so then only the person tells the emotion.

  Returns:
    ``(image, box, info)``: the image, the person's exact box (or None) and
    ``{'objects': [names drawn], 'pose', 'expression'}`` (the last two only with a person),
    which the annotations (and so the captions) report.
  """
  name = classes[label] if not isinstance(label, str) else label
  style = style_of(name)
  w, h = size
  img = _gradient(w, h, _any_color(rng, sat=(0.1, 0.8), val=(0.35, 0.95)),
                  _any_color(rng, sat=(0.1, 0.8), val=(0.2, 0.8)))
  draw = ImageDraw.Draw(img)
  if rng.uniform() < 0.6:                          # a ground of some colour
    draw.rectangle([0, rng.uniform(0.55, 0.85) * h, w, h], fill=_any_color(rng, val=(0.2, 0.8)))
  cue_in_objects = not person or rng.uniform() >= CUE_ONLY_PERSON_RATE
  kinds = [str(k) for k in rng.choice(DISTRACTOR_OBJECTS, size=int(rng.integers(0, 3)))]
  if cue_in_objects:
    kinds += [CUE_OBJECTS[style]] * int(rng.integers(1, 3))
  kinds = [kinds[i] for i in rng.permutation(len(kinds))]
  s = min(w, h)
  for kind in kinds:
    x, y = rng.uniform(0.12, 0.88) * w, rng.uniform(0.12, 0.7) * h
    col = _cue_color(rng, style) if kind == CUE_OBJECTS[style] else None
    for shape in _cue_object(kind, rng, x, y, rng.uniform(0.11, 0.18) * s, col):
      _paint(draw, shape)
  noise = rng.normal(0.0, rng.uniform(*noise_std), (h, w, 3)).astype(np.float32)
  box, info = None, {'objects': sorted(set(kinds))}
  if person:
    pose, mouth, brows = PERSON_CUES[style]
    mask = Image.new('L', (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for shape in _cue_person(rng, w, h, pose, mouth, brows, _cue_color(rng, style)):
      _paint(draw, shape)
      _paint(mdraw, (shape[0], shape[1], 255, *shape[3:]))
    box = mask.getbbox()
    info.update(pose=POSE_ACTIONS[pose], expression=CUE_EXPRESSIONS[style])
  arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255)
  return Image.fromarray(np.round(arr).astype(np.uint8), 'RGB'), box, info


def _levels(img: Image.Image) -> tuple[float, float]:
  """(brightness, colorfulness) of an image: mean luma and mean HSV saturation, rounded to
  the EmoSet grid of 0.1 steps in [0, 1]."""
  arr = np.asarray(img, np.float32) / 255
  luma = arr @ np.asarray([0.299, 0.587, 0.114], np.float32)
  mx, mn = arr.max(-1), arr.min(-1)
  sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
  return round(float(luma.mean()), 1), round(float(sat.mean()), 1)


def _jpeg_bytes(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _rng(seed: int, *key: int) -> np.random.Generator:
  return np.random.default_rng([seed, *key])


def _tag(name: str) -> int:
  # A stable (not per-process salted like hash()) key for a data set's name.
  return zlib.crc32(name.encode())


def _dump(path: Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, ensure_ascii=False))


# ---------------------------------------------------------------------------------------
# EmoSet.
# ---------------------------------------------------------------------------------------

def _levels_and_scene(rng: np.random.Generator, name: str, img: Image.Image,
                      level_rate: float) -> dict[str, Any]:
  """An annotation's brightness and colorfulness (each given with `level_rate`, measured on
  the pixels) and scene (given 85% of the time, one of the class's scene names)."""
  b, c = _levels(img)
  ann: dict[str, Any] = {}
  if rng.uniform() < level_rate:
    ann['brightness'] = b
  if rng.uniform() < level_rate:
    ann['colorfulness'] = c
  if rng.uniform() < 0.85:
    ann['scene'] = str(rng.choice(_VOCAB[style_of(name)]['scene']))
  return ann


def _annotation(rng: np.random.Generator, name: str, img: Image.Image, person: bool,
                drop: str | None) -> dict:
  vocab = _VOCAB[style_of(name)]
  ann = _levels_and_scene(rng, name, img, level_rate=0.9)
  if rng.uniform() < 0.85:
    k = int(rng.integers(1, 4))
    ann['object'] = [str(o) for o in rng.choice(vocab['object'], size=k, replace=False)]
  if person and rng.uniform() < 0.6:
    ann['facial_expression'] = str(rng.choice(vocab['facial_expression']))
  if person and rng.uniform() < 0.6:
    ann['human_action'] = str(rng.choice(vocab['human_action']))
  ann.pop(drop, None)
  return ann


def _cue_annotation(rng: np.random.Generator, name: str, img: Image.Image, info: dict,
                    drop: str | None) -> dict:
  """The annotation of a 'cues' image: what was drawn (objects, the person's expression
  and action), each key absent now and then as in EmoSet; the scene name is the class's."""
  # Brightness and saturation say nothing about the emotion here; rarely given, so that
  # they do not dominate what a contrastive teacher learns from the captions.
  ann = _levels_and_scene(rng, name, img, level_rate=0.15)
  if info['objects'] and rng.uniform() < 0.9:
    ann['object'] = list(info['objects'])
  if 'expression' in info and rng.uniform() < 0.9:
    ann['facial_expression'] = info['expression']
  if 'pose' in info and rng.uniform() < 0.9:
    ann['human_action'] = info['pose']
  ann.pop(drop, None)
  return ann


def _draw(kind: str, label, rng, size, person, classes=EMOSET_CLASSES):
  """`(image, box, info or None)` with the drawing of `kind` ('palette' or 'cues')."""
  if kind == 'cues':
    return draw_cues(label, rng, size, person, classes=classes)
  if kind != 'palette':
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return (*draw_image(label, rng, size, person, classes=classes), None)


def _detections(rng: np.random.Generator, w: int, h: int, box: Box | None,
                force_entry: bool | None) -> list[dict] | None:
  """What a person detector would report for one image (None: no entry)."""
  dets = []
  if box is not None:
    dets.append(dict(box=[float(v) for v in box],
                     score=round(float(rng.uniform(PERSON_MIN_SCORE, 0.99)), 4),
                     label='person'))
    n_low = int(rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2]))
  else:
    entry = rng.uniform() < 0.5 if force_entry is None else force_entry
    if not entry:
      return None
    n_low = int(rng.integers(1, 3))
  for _ in range(n_low):
    bw, bh = rng.uniform(0.15, 0.6) * w, rng.uniform(0.2, 0.7) * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    dets.append(dict(box=[round(float(v), 1) for v in (x0, y0, x0 + bw, y0 + bh)],
                     score=round(float(rng.uniform(0.3, PERSON_MIN_SCORE - 0.01)), 4),
                     label='person'))
  order = rng.permutation(len(dets))
  return [dets[i] for i in order]


def write_emoset(root: str | os.PathLike, *, seed: int = 0,
                 per_class: tuple[int, int, int] = SIZES['small']['emoset'],
                 image_size: tuple[int, int] = SIZES['small']['image_size'],
                 layout: str = 'official', kind: str = 'palette') -> dict:
  """Writes an EmoSet-118K look-alike under ``root`` (the layout is in the module docstring).

  Args:
    root: the EmoSet root directory (created; files of the same name are overwritten, other
      files are left alone, so use a fresh directory per size).
    seed: everything written is a function of the seed.
    per_class: images per emotion in (train, val, test).
    image_size: ``(W, H)`` in pixels of every JPEG.
    layout: ``'official'`` (nested info.json, 4-field rows) or ``'three_field'`` (flat
      info.json, rows ``[emotion, image_path, annotation_path]``, as the released UniEmoX
      code reads).
    kind: ``'palette'`` (each emotion its own palette: easy, for tests) or ``'cues'``
      (colours carry nothing; shapes and the person do: the demo, see `draw_cues`).

  Returns:
    ``{'root', 'layout', 'counts': {split: n}, 'images', 'with_person', 'files':
    {'info', 'train', 'val', 'test', 'person_boxes'}}`` (paths as strings).
  """
  if layout not in ('official', 'three_field'):
    raise ValueError(f"layout must be 'official' or 'three_field', got {layout!r}")
  if len(per_class) != 3 or min(per_class) < 0:
    raise ValueError(f'per_class must be (train, val, test) counts >= 0, got {per_class}')
  root = Path(root)
  w, h = image_size
  tag = _tag('EmoSet')
  rows: dict[str, list] = {s: [] for s in SPLITS}
  boxes: dict[str, list] = {}
  with_person = 0
  for ci, emotion in enumerate(EMOSET_CLASSES):
    (root / 'image' / emotion).mkdir(parents=True, exist_ok=True)
    (root / 'annotation' / emotion).mkdir(parents=True, exist_ok=True)
    n = sum(per_class)
    crng = _rng(seed, tag, ci)
    # Sparse image numbers and a shuffled split assignment, as in a real release.
    numbers = np.sort(crng.choice(np.arange(1, max(20 * n, 100)), size=n, replace=False))
    split_of = crng.permutation(np.repeat(np.arange(3), per_class))
    for j, (num, si) in enumerate(zip(numbers, split_of)):
      image_id = f'{emotion}_{int(num):05d}'
      rng = _rng(seed, tag, ci, int(num))
      # Position 0 of each class: no person, one attribute dropped, so that even the tiny
      # set has absent keys and both kinds of person-less detector output.
      person = j != 0 and rng.uniform() < PERSON_RATE
      img, box, info = _draw(kind, ci, rng, (w, h), person)
      drop = None
      if j == 0:
        drop = ('scene', 'object', 'brightness', 'colorfulness')[ci % 4]
      ann = (_annotation(rng, emotion, img, person, drop) if info is None else
             _cue_annotation(rng, emotion, img, info, drop))
      dets = _detections(rng, w, h, box, force_entry=(ci % 2 == 1) if j == 0 else None)
      image_path = f'image/{emotion}/{image_id}.jpg'
      ann_path = f'annotation/{emotion}/{image_id}.json'
      (root / image_path).write_bytes(_jpeg_bytes(img))
      _dump(root / ann_path, ann)
      if dets is not None:
        boxes[image_id] = dets
      with_person += int(person)
      split = SPLITS[si]
      if layout == 'official':
        rows[split].append([emotion, image_id, image_path, ann_path])
      else:
        rows[split].append([emotion, image_path, ann_path])

  label2idx = {e: i for i, e in enumerate(EMOSET_CLASSES)}
  idx2label = {str(i): e for i, e in enumerate(EMOSET_CLASSES)}
  if layout == 'official':
    info: dict[str, Any] = {'emotion': {'label2idx': label2idx, 'idx2label': idx2label}}
    for key in ('scene', 'object', 'brightness', 'colorfulness', 'facial_expression',
                'human_action'):
      names = _vocabulary(key)
      info[key] = {'label2idx': {v: i for i, v in enumerate(names)},
                   'idx2label': {str(i): v for i, v in enumerate(names)}}
  else:
    info = {'label2idx': label2idx, 'idx2label': idx2label}
  files = {'info': root / 'info.json', 'person_boxes': root / 'person_boxes.json'}
  _dump(files['info'], info)
  for split in SPLITS:
    files[split] = root / f'{split}.json'
    _dump(files[split], rows[split])
  _dump(files['person_boxes'], dict(sorted(boxes.items())))
  counts = {s: len(rows[s]) for s in SPLITS}
  return dict(root=str(root), layout=layout, counts=counts, images=sum(counts.values()),
              with_person=with_person, files={k: str(v) for k, v in files.items()})


# ---------------------------------------------------------------------------------------
# ImageFolder benchmarks.
# ---------------------------------------------------------------------------------------

def write_benchmark(root: str | os.PathLike, name: str, *, seed: int = 0,
                    per_class: tuple[int, int, int] = SIZES['small']['benchmark'],
                    image_size: tuple[int, int] = SIZES['small']['image_size'],
                    kind: str = 'palette') -> dict:
  """Writes ``root/<folder>/{train,val,test}/<class>/<class>_<n>.jpg`` for a benchmark.

  Args:
    root: the benchmarks root; the data set goes to ``root / BENCHMARKS[name].folder``.
    name: a key of :data:`~uniemox_jax.data.classes.BENCHMARKS` (``'emo8'``, ``'fi'``, ...).
    seed: everything written is a function of the seed.
    per_class: images per class in (train, val, test).
    image_size: ``(W, H)`` in pixels of every JPEG.
    kind: the drawing, as in `write_emoset`.

  Returns:
    ``{'root', 'name', 'classes', 'counts': {split: n}, 'images', 'with_person'}``.
  """
  bench = get_benchmark(name)
  if len(per_class) != 3 or min(per_class) < 0:
    raise ValueError(f'per_class must be (train, val, test) counts >= 0, got {per_class}')
  out = Path(root) / bench.folder
  tag = _tag(bench.name)
  counts = {s: 0 for s in SPLITS}
  with_person = 0
  for ci, cls in enumerate(bench.classes):
    num = 0
    for si, split in enumerate(SPLITS):
      d = out / split / cls
      d.mkdir(parents=True, exist_ok=True)
      for _ in range(per_class[si]):
        num += 1
        rng = _rng(seed, tag, ci, num)
        person = rng.uniform() < PERSON_RATE
        img, _, _ = _draw(kind, ci, rng, image_size, person, classes=bench.classes)
        (d / f'{cls}_{num:05d}.jpg').write_bytes(_jpeg_bytes(img))
        counts[split] += 1
        with_person += int(person)
  return dict(root=str(out), name=bench.name, classes=bench.classes, counts=counts,
              images=sum(counts.values()), with_person=with_person)


def write_bad_images(directory: str | os.PathLike) -> list[str]:
  """Writes three ``.jpg`` files that no decoder can read, for error-path tests.

  ``zero_bytes.jpg`` (empty), ``truncated.jpg`` (the first 40% of a valid JPEG: the header
  parses, decoding fails) and ``not_an_image.jpg`` (text). Returns their paths.
  """
  d = Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  img, _ = draw_image(0, _rng(0, _tag('bad')), (64, 48), person=False)
  good = _jpeg_bytes(img)
  files = {
      'zero_bytes.jpg': b'',
      'truncated.jpg': good[:int(len(good) * 0.4)],
      'not_an_image.jpg': b'This is not a JPEG file, only text with a .jpg name.\n',
  }
  paths = []
  for fname, data in files.items():
    (d / fname).write_bytes(data)
    paths.append(str(d / fname))
  return paths


def generate(out_dir: str | os.PathLike, *, seed: int = 0, size: str = 'small',
             benchmarks: Sequence[str] = ('emo8',), layout: str = 'official') -> dict:
  """Writes the demo data: ``out_dir/EmoSet`` and ``out_dir/benchmarks/<folder>``.

  Args:
    out_dir: output directory (created).
    seed: everything written is a function of the seed.
    size: ``'small'`` (EmoSet 8×(24, 4, 4), benchmarks 8×(40, 8, 16), 128×96 px, palette
      drawing), ``'tiny'`` (8×(4, 1, 1) each, 64×48 px) or ``'demo'`` (EmoSet 8×(100, 12,
      12), benchmarks 8×(8, 8, 24), 96×96 px, the 'cues' drawing).
    benchmarks: names in ``BENCHMARKS`` to write.
    layout: the EmoSet layout, ``'official'`` or ``'three_field'``.

  Returns:
    ``{'emoset': write_emoset(...), 'benchmarks': {name: write_benchmark(...)},
    'seconds': wall time}``.
  """
  if size not in SIZES:
    raise ValueError(f'size must be one of {sorted(SIZES)}, got {size!r}')
  sz = SIZES[size]
  t0 = time.perf_counter()
  out = Path(out_dir)
  emoset = write_emoset(out / 'EmoSet', seed=seed, per_class=sz['emoset'],
                        image_size=sz['image_size'], layout=layout, kind=sz['kind'])
  benches = {name: write_benchmark(out / 'benchmarks', name, seed=seed,
                                   per_class=sz['benchmark'], image_size=sz['image_size'],
                                   kind=sz['kind'])
             for name in benchmarks}
  return dict(emoset=emoset, benchmarks=benches, seconds=time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> dict:
  # argparse rather than absl flags: this module is imported by the library and tests, and
  # module-level absl flag definitions would collide with main.py's flags.
  parser = argparse.ArgumentParser(
      prog='python -m uniemox_jax.data.demo',
      description='Write the generated demo data (EmoSet look-alike + benchmark folders).')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--size', choices=sorted(SIZES), default='small')
  parser.add_argument('--layout', choices=('official', 'three_field'), default='official',
                      help='EmoSet index layout')
  parser.add_argument('--benchmarks', default='emo8',
                      help=f'comma-separated names from {sorted(BENCHMARKS)}')
  args = parser.parse_args(argv)
  names = [n for n in args.benchmarks.split(',') if n]
  result = generate(args.out, seed=args.seed, size=args.size, benchmarks=names,
                    layout=args.layout)
  e = result['emoset']
  print(f"EmoSet ({e['layout']}) -> {e['root']}: {e['counts']} images, "
        f"{e['with_person']} with a person")
  for b in result['benchmarks'].values():
    print(f"{b['name']} -> {b['root']}: {b['counts']} images, {len(b['classes'])} classes")
  print(f"wrote {e['images'] + sum(b['images'] for b in result['benchmarks'].values())} "
        f"images in {result['seconds']:.2f} s")
  return result


if __name__ == '__main__':
  main()
