"""Classification evaluation: one implementation for fine-tuning's validation and test, the
`eval` task and the linear probe.

`Evaluator` runs a compiled eval step over a split (`make_eval_step`: per-batch confusion
counts and top-3 hits on the device, padding rows ignored, so every example counts exactly
once on any number of devices and hosts); `evaluate_logits` does the same for logits already
on the host (the linear probe's cached features). Both give `Accumulator.result`: top-1/top-3,
per-class accuracy and the confusion matrix, written as JSON + PNG by `write_confusion`.
With the per-example softmax probabilities (which both paths now collect) the result also
holds `metrics`, the full `evaluators.metrics.classification_report` (macro-F1, ECE,
reliability bins, Mikels metrics); `write_metrics` adds the reliability diagram PNG and
`results_metrics` gives the flat `test_*` keys every `results.json` carries.
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
from uniemox_jax.evaluators import metrics as metrics_lib


class Accumulator:
  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.confusion = np.zeros((num_classes, num_classes), np.int64)  # [true, predicted]
    self.top3_hits = 0
    self.count = 0
    self._probs: list[np.ndarray] = []   # [B_valid, K] softmax probabilities, when given
    self._labels: list[np.ndarray] = []

  def add(self, topk: np.ndarray, labels: np.ndarray, valid: np.ndarray,
          probs: np.ndarray | None = None):
    """`topk` `[B, k]` class ids by decreasing score, `labels` `[B]`, `valid` `[B]` bool,
    optionally `probs` `[B, K]` (softmax) of the same rows, kept for the ECE."""
    topk, labels, valid = np.asarray(topk), np.asarray(labels), np.asarray(valid, bool)
    if probs is not None:
      self.add_probs(probs, labels, valid)
    topk, labels = topk[valid], labels[valid]
    np.add.at(self.confusion, (labels, topk[:, 0]), 1)
    self.top3_hits += int((topk[:, :3] == labels[:, None]).any(axis=1).sum())
    self.count += int(valid.sum())

  def add_probs(self, probs: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None):
    """Keeps `probs` `[B, K]` and `labels` `[B]` of the rows where `valid` `[B]` is True (all
    rows when None). The confusion counts are not touched."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if valid is not None:
      keep = np.asarray(valid, bool)
      probs, labels = probs[keep], labels[keep]
    self._probs.append(probs)
    self._labels.append(labels.astype(np.int64))

  def probabilities(self) -> tuple[np.ndarray, np.ndarray] | None:
    """`(probs [N, K], labels [N])` of every example added with probabilities, or None."""
    if not self._probs:
      return None
    return np.concatenate(self._probs), np.concatenate(self._labels)

  def result(self, class_names: Sequence[str] | None = None) -> dict:
    n = max(self.count, 1)
    per_class_total = self.confusion.sum(axis=1)
    per_class = np.divide(np.diag(self.confusion), per_class_total,
                          out=np.zeros(self.num_classes), where=per_class_total > 0)
    names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
    out = {
        "top1": float(np.trace(self.confusion) / n),
        "top3": float(self.top3_hits / n),
        "num_examples": int(self.count),
        "per_class_accuracy": {name: float(a) for name, a in zip(names, per_class)},
        "confusion_matrix": self.confusion.tolist(),
        "class_names": names,
    }
    kept = self.probabilities()
    if self.count:
      probs, labels = kept if kept is not None and len(kept[1]) == self.count else (None, None)
      out["metrics"] = metrics_lib.classification_report(self.confusion, names, probs, labels)
    return out


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


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax of host `logits` `[N, K]` in float64."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str]) -> dict:
  """`Accumulator.result` for host `logits` `[N, K]` and `labels` `[N]` (with `metrics`
  from the softmax probabilities)."""
  acc = Accumulator(len(class_names))
  valid = np.ones(len(labels), bool)
  acc.add(np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :3], labels, valid,
          probs=softmax(logits))
  return acc.result(class_names)


def evaluate_probs(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
  """`Accumulator.result` for host probabilities (or any non-negative scores normalised to
  sum 1 per row) `probs` `[N, K]` and `labels` `[N]`; ties go to the lower class id."""
  acc = Accumulator(len(class_names))
  probs = np.asarray(probs, np.float64)
  acc.add(np.argsort(-probs, axis=1, kind="stable")[:, :3], labels, np.ones(len(labels), bool),
          probs=probs)
  return acc.result(class_names)


def write_metrics(result: dict, path_prefix: str,
                  probabilities: tuple[np.ndarray, np.ndarray] | None = None,
                  title: str | None = None) -> None:
  """`write_confusion` (`<prefix>.json`, `<prefix>.png`) and, with `probabilities`
  `(probs [N, K], labels [N])`, the reliability diagram `<prefix>_reliability.png`."""
  write_confusion(result, path_prefix)
  if probabilities is not None and len(probabilities[1]):
    metrics_lib.reliability_diagram_png(probabilities[0], probabilities[1],
                                        path_prefix + "_reliability.png", title=title)


# The keys of a classification report that every results.json carries (with a prefix).
RESULT_METRICS = ("macro_f1", "per_class_recall", "per_class_precision", "per_class_f1",
                  "ece", "polarity_accuracy", "wheel_weighted_error")


def results_metrics(result: dict, prefix: str = "test_") -> dict:
  """The flat metric keys of a results.json from an evaluation `result`:
  `<prefix>macro_f1`, `<prefix>per_class_recall` (dict), `<prefix>ece` (when probabilities
  were kept), `<prefix>polarity_accuracy` / `<prefix>wheel_weighted_error` (Mikels data sets
  only), plus `<prefix>metrics`, the whole `classification_report`."""
  report = result.get("metrics")
  if not report:
    return {}
  out = {f"{prefix}{k}": report[k] for k in RESULT_METRICS if k in report}
  out[f"{prefix}metrics"] = report
  return out


def make_eval_step(apply_logits: Callable, num_classes: int):
  """`(params, batch) -> {'confusion' [K, K], 'top3_hits', 'count'}` (replicated outputs, so
  every host can read them; padding rows have `valid = False` and count nothing).

  `apply_logits(params, images)` maps ImageNet-normalised float images to logits `[B, K]`.
  The step also returns `probs` `[B, K]` (softmax, float32), `labels` and `valid` `[B]`, so
  the host can compute the calibration error."""
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
            "count": jnp.sum(valid).astype(jnp.int32),
            "probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
            "labels": labels, "valid": batch["valid"]}

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
    # `(probs [N, K], labels [N])` of the last call, for the reliability diagram.
    self.last_probabilities: tuple[np.ndarray, np.ndarray] | None = None

  def __call__(self, params) -> dict:
    start = time.perf_counter()
    acc = Accumulator(self.num_classes)
    for local in pipeline.to_iter(self.dataset, self.num_workers):
      self.preemption.check("evaluation")
      out = jax.device_get(self.step(params, self.to_global(local)))
      acc.confusion += out["confusion"]
      acc.top3_hits += int(out["top3_hits"])
      acc.count += int(out["count"])
      acc.add_probs(out["probs"], out["labels"], out["valid"])
    if acc.count != len(self.source):
      raise AssertionError(f"evaluation saw {acc.count} examples of {len(self.source)}")
    self.last_probabilities = acc.probabilities()
    result = acc.result(self.class_names)
    result["eval_seconds"] = time.perf_counter() - start
    return result


def summary(result: dict) -> dict:
  """The headline numbers of a result: top-1, top-3 and the number of examples."""
  return {"top1": result["top1"], "top3": result["top3"], "num_examples": result["num_examples"]}
