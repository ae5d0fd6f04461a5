"""Pictures for people, drawn with PIL and numpy only (no plotting library is a dependency):
attention overlays, panels of images with titles, boxes, MAE masks and line charts.

Images are `uint8 [H, W, 3]` arrays or `PIL.Image`s; functions return `PIL.Image`s, which
notebooks display as they are and scripts `.save(path)`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Anchor colours of a perceptually ordered map (dark blue → teal → yellow, like viridis).
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], np.float64)
SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                 (148, 103, 189), (140, 86, 75))


def to_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
  return Image.fromarray(arr)


def colormap(values) -> np.ndarray:
  """`[...]` values in [0, 1] → `uint8 [..., 3]` colours."""
  v = np.clip(np.asarray(values, np.float64), 0.0, 1.0) * (len(_ANCHORS) - 1)
  lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
  t = (v - lo)[..., None]
  return np.rint(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def overlay(image, heat, alpha: float = 0.55) -> Image.Image:
  """`heat` `[gh, gw]` in [0, 1] upsampled (bilinear) onto `image` and blended."""
  base = to_pil(image)
  heat = np.asarray(heat, np.float32)
  up = Image.fromarray(heat).resize(base.size, Image.Resampling.BILINEAR)
  colours = Image.fromarray(colormap(np.asarray(up)))
  return Image.blend(base, colours, alpha)


def upscale(image, size: int) -> Image.Image:
  """The image scaled (nearest: pixels stay visible) so that its longer side is `size`."""
  img = to_pil(image)
  factor = size / max(img.size)
  return img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))),
                    Image.Resampling.NEAREST)


def panels(images: Sequence, titles: Sequence[str] = (), caption: str = "",
           size: int = 160, pad: int = 6) -> Image.Image:
  """Images side by side (each scaled to `size` on its longer side) with a title above each
  and a caption line below."""
  tiles = [upscale(im, size) for im in images]
  line = 14
  width = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
  height = max(t.height for t in tiles) + 2 * pad + line * (2 if caption else 1)
  out = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(out)
  x = pad
  for i, tile in enumerate(tiles):
    if i < len(titles):
      draw.text((x, pad // 2), titles[i], fill="black")
    out.paste(tile, (x, pad + line))
    x += tile.width + pad
  if caption:
    draw.text((pad, height - line - pad // 2), caption, fill="black")
  return out


def grid(rows: Sequence[Image.Image], pad: int = 4) -> Image.Image:
  """Stacks images vertically (e.g. one `panels` row per example)."""
  width = max(r.width for r in rows)
  out = Image.new("RGB", (width, sum(r.height for r in rows) + pad * (len(rows) - 1)), "white")
  y = 0
  for r in rows:
    out.paste(r, (0, y))
    y += r.height + pad
  return out


def attention_figure(image, last, rollout_map, label: str, size: int = 192) -> Image.Image:
  """The image, its last-block CLS attention overlay and its rollout overlay, side by side,
  with `label` (e.g. "awe 0.81") below."""
  big = upscale(image, size)
  return panels([big, overlay(big, last), overlay(big, rollout_map)],
                ["image", "last block CLS attention", "attention rollout"], caption=label,
                size=size)


def draw_box(image, box, color=(255, 40, 40), width: int = 2) -> Image.Image:
  """A copy of `image` with the pixel box `(x0, y0, x1, y1)` outlined (None: unchanged)."""
  img = to_pil(image).copy()
  if box is not None:
    ImageDraw.Draw(img).rectangle(list(box), outline=color, width=width)
  return img


def masked(image, mask, patch_size: int, fill: int = 128) -> Image.Image:
  """`image` `[S, S, 3]` with the patches where `mask` `[L]` is 1 (MAE: removed) greyed."""
  arr = np.array(to_pil(image))
  g = arr.shape[0] // patch_size
  m = np.asarray(mask).reshape(g, g) > 0.5
  keep = np.kron(~m, np.ones((patch_size, patch_size), bool))[..., None]
  return Image.fromarray(np.where(keep, arr, np.uint8(fill)))


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
               size: tuple[int, int] = (360, 220), log_y: bool = False) -> Image.Image:
  """A small line chart: `series` maps a name to `(x values, y values)`; axes with min/max
  labels and a legend."""
  w, h = size
  left, right, top, bottom = 52, 10, 22, 30
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  draw.text((left, 4), title, fill="black")
  pts = {k: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for k, (x, y) in
         series.items() if len(x)}
  if log_y:
    pts = {k: (x, np.log10(np.maximum(y, 1e-12))) for k, (x, y) in pts.items()}
  draw.rectangle([left, top, w - right, h - bottom], outline="gray")
  if not pts:
    draw.text((left + 8, top + 8), "no data", fill="gray")
    return img
  xs = np.concatenate([x for x, _ in pts.values()])
  ys = np.concatenate([y for _, y in pts.values()])
  x0, x1 = float(xs.min()), float(xs.max())
  y0, y1 = float(ys.min()), float(ys.max())
  x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

  def to_px(x, y):
    return (left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

  fmt = (lambda v: f"1e{v:.1f}") if log_y else (lambda v: f"{v:.3g}")
  draw.text((2, top), fmt(y1), fill="black")
  draw.text((2, h - bottom - 10), fmt(y0), fill="black")
  draw.text((left, h - bottom + 4), f"{x0:g}", fill="black")
  draw.text((w - right - 40, h - bottom + 4), f"{x1:g}", fill="black")
  for i, (name, (x, y)) in enumerate(pts.items()):
    colour = SERIES_COLORS[i % len(SERIES_COLORS)]
    line = [to_px(a, b) for a, b in zip(x, y)]
    if len(line) > 1:
      draw.line(line, fill=colour, width=2)
    for px, py in line if len(line) < 40 else line[-1:]:
      draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    draw.text((left + 6 + 90 * i, top + 4), name, fill=colour)
  return img


def metric_series(rows: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
  """`(steps, values)` of `key` in `metrics.read_metrics` rows (the last value per step: a
  resumed run re-logs the steps it redoes)."""
  by_step = {}
  for row in rows:
    if key in row and row[key] is not None:
      by_step[int(row["step"])] = float(row[key])
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


TRAINING_CURVES = (("train/loss", "training loss"), ("train/lr", "learning rate"),
                   ("val/top1", "val top-1"))


def training_curves(rows: Sequence[Mapping], keys=TRAINING_CURVES,
                    size: tuple[int, int] = (300, 200)) -> Image.Image:
  """One small chart per `(metric key, title)` of a run's `metrics.jsonl` rows, side by side."""
  charts = [line_chart({title: metric_series(rows, key)}, title=title, size=size)
            for key, title in keys]
  out = Image.new("RGB", (sum(c.width for c in charts), size[1]), "white")
  x = 0
  for chart in charts:
    out.paste(chart, (x, 0))
    x += chart.width
  return out
