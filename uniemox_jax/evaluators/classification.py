"""Classification evaluation: one implementation for fine-tuning's validation and test, the
`eval` task and the linear probe.

`Evaluator` runs a compiled eval step over a split (`make_eval_step`: per-batch confusion
counts and top-3 hits on the device, padding rows ignored, so every example counts exactly
once on any number of devices and hosts); `evaluate_logits` does the same for logits already
on the host (the linear probe's cached features). Both give `Accumulator.result`: top-1/top-3,
per-class accuracy and the confusion matrix, written as JSON + PNG by `write_confusion`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from uniemox_jax import preprocess, sharding
from uniemox_jax.data import builders, pipeline


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


def evaluate_logits(logits: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str]) -> dict:
  """`Accumulator.result` for host `logits` `[N, K]` and `labels` `[N]`."""
  acc = Accumulator(len(class_names))
  acc.add(np.argsort(-np.asarray(logits), axis=1)[:, :3], labels, np.ones(len(labels), bool))
  return acc.result(class_names)


def make_eval_step(apply_logits: Callable, num_classes: int):
  """`(params, batch) -> {'confusion' [K, K], 'top3_hits', 'count'}` (replicated outputs, so
  every host can read them; padding rows have `valid = False` and count nothing).

  `apply_logits(params, images)` maps ImageNet-normalised float images to logits `[B, K]`."""
  k = min(3, num_classes)

  def step(params, batch):
    logits = apply_logits(params, preprocess.student_pixels(batch["image"]))
    valid = batch["valid"].astype(jnp.float32)
    labels = batch["label"]
    top = jax.lax.top_k(logits, k)[1]
    truth = jax.nn.one_hot(labels, num_classes) * valid[:, None]
    pred = jax.nn.one_hot(top[:, 0], num_classes)
    hits = jnp.sum(jnp.any(top == labels[:, None], axis=1) * valid)
    return {"confusion": (truth.T @ pred).astype(jnp.int32), "top3_hits": hits.astype(jnp.int32),
            "count": jnp.sum(valid).astype(jnp.int32)}

  return step


class Evaluator:
  """Runs the compiled eval step over a split; each example counted exactly once."""

  def __init__(self, config, mesh, apply_logits: Callable, split: str, preemption,
               class_names: Sequence[str]):
    self.split = split
    self.source = builders.load_source(config.data.name, split, config.data.data_dir)
    self.class_names = list(class_names)
    self.num_classes = len(class_names)
    self.preemption = preemption
    self.batch = config.eval.batch_size
    if self.batch % sharding.num_batch_shards(mesh):
      raise ValueError(f"config.eval.batch_size={self.batch} must be a multiple of the "
                       f"{sharding.num_batch_shards(mesh)} batch shards")
    transform = pipeline.EvalTransform(config.model.image_size, config.data.eval_resize)
    self.shard = pipeline.Sharding.from_jax()
    self.dataset = pipeline.eval_dataset(self.source, transform, global_batch=self.batch,
                                         shard=self.shard)
    self.num_workers = config.data.num_workers
    self.to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
    self.step = jax.jit(make_eval_step(apply_logits, self.num_classes),
                        out_shardings=sharding.replicated(mesh))

  def __call__(self, params) -> dict:
    start = time.perf_counter()
    acc = Accumulator(self.num_classes)
    for local in pipeline.to_iter(self.dataset, self.num_workers):
      self.preemption.check("evaluation")
      out = jax.device_get(self.step(params, self.to_global(local)))
      acc.confusion += out["confusion"]
      acc.top3_hits += int(out["top3_hits"])
      acc.count += int(out["count"])
    if acc.count != len(self.source):
      raise AssertionError(f"evaluation saw {acc.count} examples of {len(self.source)}")
    result = acc.result(self.class_names)
    result["eval_seconds"] = time.perf_counter() - start
    return result


def summary(result: dict) -> dict:
  """The headline numbers of a result: top-1, top-3 and the number of examples."""
  return {"top1": result["top1"], "top3": result["top3"], "num_examples": result["num_examples"]}
