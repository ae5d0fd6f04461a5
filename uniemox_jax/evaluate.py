"""Classification metrics: top-1/top-3, per-class accuracy, confusion matrix (JSON and PNG).

The accumulator receives host copies of each evaluation batch's top-k predictions, labels and
`valid` mask (padding rows are ignored), so every example counts exactly once.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


class Accumulator:
  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.confusion = np.zeros((num_classes, num_classes), np.int64)  # [true, predicted]
    self.top3_hits = 0
    self.count = 0

  def add(self, topk: np.ndarray, labels: np.ndarray, valid: np.ndarray):
    """`topk` `[B, k]` class ids by decreasing score, `labels` `[B]`, `valid` `[B]` bool."""
    topk, labels, valid = np.asarray(topk), np.asarray(labels), np.asarray(valid, bool)
    topk, labels = topk[valid], labels[valid]
    np.add.at(self.confusion, (labels, topk[:, 0]), 1)
    self.top3_hits += int((topk[:, :3] == labels[:, None]).any(axis=1).sum())
    self.count += int(valid.sum())

  def result(self, class_names: Sequence[str] | None = None) -> dict:
    n = max(self.count, 1)
    per_class_total = self.confusion.sum(axis=1)
    per_class = np.divide(np.diag(self.confusion), per_class_total,
                          out=np.zeros(self.num_classes), where=per_class_total > 0)
    names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
    return {
        "top1": float(np.trace(self.confusion) / n),
        "top3": float(self.top3_hits / n),
        "num_examples": int(self.count),
        "per_class_accuracy": {name: float(a) for name, a in zip(names, per_class)},
        "confusion_matrix": self.confusion.tolist(),
        "class_names": names,
    }


def write_confusion(result: dict, path_prefix: str):
  """Writes `<prefix>.json` (the whole result) and `<prefix>.png` (a row-normalised heat map)."""
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  with open(path_prefix + ".json", "w") as f:
    json.dump(result, f, indent=1)
  confusion_png(np.asarray(result["confusion_matrix"]), result["class_names"],
                path_prefix + ".png")


def confusion_png(confusion: np.ndarray, names: Sequence[str], path: str, cell: int = 36):
  """A plain confusion-matrix image: rows = true class, columns = predicted, darker = more."""
  k = confusion.shape[0]
  margin = 8 + 7 * max(len(n) for n in names)
  size = (margin + k * cell + 8, margin + k * cell + 8)
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  rows = confusion.sum(axis=1, keepdims=True)
  frac = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
  for i in range(k):
    draw.text((4, margin + i * cell + cell // 3), names[i], fill="black")
    draw.text((margin + i * cell + 2, 4), names[i][:cell // 7], fill="black")
    for j in range(k):
      shade = int(255 * (1 - frac[i, j]))
      x0, y0 = margin + j * cell, margin + i * cell
      draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255),
                     outline="gray")
      draw.text((x0 + 4, y0 + cell // 3), str(int(confusion[i, j])),
                fill="white" if frac[i, j] > 0.5 else "black")
  img.save(path)
