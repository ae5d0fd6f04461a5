r"""Emotion predictions for image files and folders, with optional attention maps.

  python -m uniemox_jax.predict --checkpoint=$WORK/finetune photo.jpg more_photos/
  python -m uniemox_jax.predict --checkpoint=$EXPORT --format=jsonl --top_k=2 photos/
  python -m uniemox_jax.predict --checkpoint=$WORK/finetune --attention_maps=maps/ photos/

`--checkpoint` is a fine-tuning run (its workdir, checkpoints dir or a step dir; a workdir
gives the best-val step) or an inference export (`tools/export.py --format=orbax`). Images get
the evaluation preprocessing (shorter side resized bicubically to the run's `eval_resize`,
centre crop, ImageNet normalisation: `data.pipeline.EvalTransform`), so the predictions are
those the evaluation computes. Batches run on the default device; folders are walked
recursively for image files (by extension) with a progress line on stderr.

Output: a table (file, then the top-k emotions with probabilities) or `--format=jsonl` (one
JSON object per file). `--attention_maps=DIR` writes per image `DIR/<name>.png`: the model's
input crop, the last block's CLS-to-patch attention (heads averaged) and the attention
rollout over all blocks, side by side, with the predicted label.

A file that cannot be read or decoded (missing, empty, truncated, not an image) is reported
by name on stderr (and as an `"error"` row in jsonl) and skipped; the rest are predicted.

Exit status: 0 every image predicted; 2 nothing predicted because of the command itself (a
checkpoint that is not a classifier, e.g. a pre-training run, with what to do; no images
given); 4 some images could not be read (named on stderr), the others were predicted. (1
stays what it is for every command of the project: a bug, with its traceback.)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import IO, Iterable, Iterator, Sequence

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from uniemox_jax import attention_maps as attention_lib
from uniemox_jax import inference, preprocess, visualize
from uniemox_jax.data import pipeline
from uniemox_jax.data.builders import images as image_checks

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".mpo")
FORMATS = ("table", "jsonl")
EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 4


@dataclasses.dataclass(frozen=True)
class Input:
  """One file to predict: `path` as read, `name` as printed, `stem` for its map's PNG."""
  path: str
  name: str
  stem: str


@dataclasses.dataclass
class Prediction:
  """`probs` `[K]` float32; `top` the top-k `(class name, class index, probability)`;
  `last`, `rollout` `[g, g]` attention maps in [0, 1] (when requested)."""
  input: Input
  probs: np.ndarray
  top: list[tuple[str, int, float]]
  last: np.ndarray | None = None
  rollout: np.ndarray | None = None
  pixels: np.ndarray | None = None  # uint8 [S, S, 3]: the model's input crop
  map_path: str | None = None


@dataclasses.dataclass
class Failure:
  input: Input
  reason: str


class BadInputError(ValueError):
  """An input file that cannot be read or decoded as an image."""


def collect_inputs(paths: Sequence[str]) -> tuple[list[Input], list[str]]:
  """The files named and the image files (by extension) under the folders named, in order
  (folders walked sorted, hidden entries skipped); plus notes on files left out."""
  inputs, notes = [], []
  for given in paths:
    if os.path.isdir(given):
      skipped = []
      for dirpath, dirnames, filenames in os.walk(given):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
          if fname.startswith("."):
            continue
          path = os.path.join(dirpath, fname)
          if not fname.lower().endswith(IMAGE_EXTENSIONS):
            skipped.append(path)
            continue
          rel = os.path.relpath(path, given)
          inputs.append(Input(path, path, os.path.splitext(rel)[0].replace(os.sep, "__")))
      if skipped:
        notes.append(f"{given}: left out {len(skipped)} file(s) without an image extension "
                     f"({', '.join(os.path.basename(s) for s in skipped[:5])}"
                     f"{', ...' if len(skipped) > 5 else ''})")
    else:
      inputs.append(Input(given, given, os.path.splitext(os.path.basename(given))[0]))
  return inputs, notes


class Predictor:
  """A classifier on the default device with the evaluation preprocessing.

  `Predictor.from_path(path)` loads a fine-tuning checkpoint or an inference export;
  `predict(inputs)` yields a `Prediction` or a `Failure` per input, in order.
  """

  def __init__(self, module, params, info: dict, *, batch_size: int = 32, top_k: int = 3,
               attention_maps: bool = False):
    if info.get("kind") != "classifier":
      raise inference.NotAClassifierError(f"{info.get('source', {}).get('path')}: not a "
                                          "classifier")
    if attention_maps and getattr(module, "attention_impl", "explicit") != "explicit":
      logging.info("attention maps: using attention_impl='explicit' instead of %r (the same "
                   "function; it computes the weights)", module.attention_impl)
      module = module.clone(attention_impl="explicit")
    self.module, self.info = module, info
    self.params = jax.device_put(params)
    self.class_names = list(info["class_names"])
    self.batch_size = max(1, int(batch_size))
    self.top_k = max(1, min(int(top_k), len(self.class_names)))
    self.attention_maps = attention_maps
    prep = info["preprocessing"]
    self.transform = pipeline.EvalTransform(int(prep["crop"]), int(prep["resize"]))
    self._step = jax.jit(self._maps_fn if attention_maps else self._forward_fn)
    # Decoding and resizing release the GIL: a batch's files are read on a few threads.
    self._pool = concurrent.futures.ThreadPoolExecutor(
        min(8, pipeline.DEFAULT_READ_THREADS), thread_name_prefix="predict-read")

  @classmethod
  def from_path(cls, path: str, **kwargs) -> Predictor:
    module, params, info = inference.load_classifier(path)
    return cls(module, params, info, **kwargs)

  @property
  def image_size(self) -> int:
    return int(self.info["image_size"])

  # ----------------------------------------------------------------------- device side
  def _forward_fn(self, params, pixels_u8):
    logits, _ = self.module.apply({"params": params}, preprocess.student_pixels(pixels_u8))
    return {"logits": logits, "probs": jax.nn.softmax(logits, axis=-1)}

  def _maps_fn(self, params, pixels_u8):
    (logits, _), maps = attention_lib.apply_with_maps(
        self.module, params, preprocess.student_pixels(pixels_u8))
    return {"logits": logits, "probs": jax.nn.softmax(logits, axis=-1), **maps}

  def run_batch(self, pixels_u8: np.ndarray) -> dict:
    """`pixels_u8` `[N, S, S, 3]` → host `{'logits', 'probs'}` `[N, K]` (and `'last'`,
    `'rollout'` `[N, g, g]` with attention maps), padded to whole batches internally."""
    n = len(pixels_u8)
    size = min(self.batch_size, max(n, 1))
    outs = []
    for start in range(0, n, size):
      chunk = pixels_u8[start:start + size]
      pad = size - len(chunk)
      if pad:  # one compiled shape for every batch
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out = jax.device_get(self._step(self.params, chunk))
      outs.append({k: np.asarray(v)[:size - pad] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}

  # ------------------------------------------------------------------------- host side
  def load_pixels(self, path: str) -> np.ndarray:
    """The evaluation crop `uint8 [S, S, 3]` of an image file; `BadInputError` says why not."""
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise BadInputError("missing file") from None
    except OSError as e:
      raise BadInputError(f"cannot read ({e.strerror or e})") from None
    if not data:
      raise BadInputError("zero-byte file")
    try:
      return self.transform((0, {"image": data, "label": 0}))["image"]
    except Exception as e:  # pylint: disable=broad-except
      # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError, ...
      raise BadInputError(image_checks.describe_error(e, path, head=data[:64])) from None

  def _try_load(self, item: Input) -> np.ndarray | BadInputError:
    try:
      return self.load_pixels(item.path)
    except BadInputError as e:
      return e

  def _prediction(self, item: Input, out: dict, i: int, pixels: np.ndarray) -> Prediction:
    probs = out["probs"][i]
    order = np.argsort(-probs, kind="stable")[:self.top_k]
    top = [(self.class_names[j], int(j), float(probs[j])) for j in order]
    pred = Prediction(item, probs, top)
    if self.attention_maps:
      pred.last, pred.rollout, pred.pixels = out["last"][i], out["rollout"][i], pixels
    return pred

  def predict(self, inputs: Sequence[Input], progress: Progress | None = None
              ) -> Iterator[Prediction | Failure]:
    """Predictions and failures for `inputs`, in order, one batch at a time."""
    for start in range(0, len(inputs), self.batch_size):
      chunk = inputs[start:start + self.batch_size]
      loaded: list[tuple[Input, np.ndarray]] = []
      results: list[Prediction | Failure | None] = []
      for item, pixels in zip(chunk, self._pool.map(self._try_load, chunk)):
        if isinstance(pixels, BadInputError):
          results.append(Failure(item, str(pixels)))
        else:
          loaded.append((item, pixels))
          results.append(None)
      out = self.run_batch(np.stack([p for _, p in loaded])) if loaded else {}
      k = 0
      for j, r in enumerate(results):
        if r is None:
          item, pixels = loaded[k]
          results[j] = self._prediction(item, out, k, pixels)
          k += 1
      if progress is not None:
        progress.update(len(chunk))
      yield from results


def write_attention_map(pred: Prediction, directory: str, used: set[str] | None = None) -> str:
  """Writes `pred`'s attention figure to `directory/<stem>.png`; returns the path."""
  os.makedirs(directory, exist_ok=True)
  stem = pred.input.stem or "image"
  if used is not None:
    base, n = stem, 2
    while stem in used:
      stem, n = f"{base}-{n}", n + 1
    used.add(stem)
  path = os.path.join(directory, f"{stem}.png")
  label, _, prob = pred.top[0]
  visualize.attention_figure(pred.pixels, pred.last, pred.rollout,
                             f"{label} {prob:.2f}").save(path)
  return path


class Progress:
  """`predict: N/M images (R images/s)` on stderr, at most every `every_s` seconds."""

  def __init__(self, total: int, stream: IO[str], every_s: float = 2.0):
    self.total, self.done, self.stream, self.every_s = total, 0, stream, every_s
    self.start = self.last = time.perf_counter()
    self.tty = getattr(stream, "isatty", lambda: False)()

  def update(self, n: int):
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      begin = "\r" if self.tty else ""
      end = "\n" if (self.done >= self.total or not self.tty) else ""
      self.stream.write(f"{begin}predict: {self.done}/{self.total} images "
                        f"({rate:.1f} images/s){end}")
      self.stream.flush()


def _table_row(name: str, width: int, cells: Iterable[str]) -> str:
  return f"{name.ljust(width)}  {'  '.join(c.ljust(18) for c in cells)}".rstrip()


def run(checkpoint: str, paths: Sequence[str], *, top_k: int = 3, fmt: str = "table",
        attention_maps: str | None = None, batch_size: int = 32,
        stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
  """The command line's work; returns the exit status (module docstring: 0, 2 when nothing
  could be predicted, 4 when some inputs failed)."""
  stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
  if fmt not in FORMATS:
    stderr.write(f"error: --format={fmt!r}: use one of {', '.join(FORMATS)}\n")
    return EXIT_USAGE
  if not paths:
    stderr.write("error: no images given: pass image files and/or folders after the flags\n")
    return EXIT_USAGE
  try:
    predictor = Predictor.from_path(checkpoint, batch_size=batch_size, top_k=top_k,
                                    attention_maps=bool(attention_maps))
  except (inference.NotAClassifierError, FileNotFoundError, ValueError) as e:
    stderr.write(f"error: --checkpoint={checkpoint}: {e}\n")
    return EXIT_USAGE
  inputs, notes = collect_inputs(paths)
  for note in notes:
    stderr.write(f"note: {note}\n")
  folders = any(os.path.isdir(p) for p in paths)
  progress = Progress(len(inputs), stderr) if folders else None
  width = max([len("file")] + [len(i.name) for i in inputs])
  if fmt == "table":
    header = [f"top-{k + 1}" for k in range(predictor.top_k)]
    stdout.write(_table_row("file", width, header) + "\n")
  failures, count, used = [], 0, set()
  for result in predictor.predict(inputs, progress):
    if isinstance(result, Failure):
      failures.append(result)
      stderr.write(f"error: {result.input.name}: {result.reason} (skipped)\n")
      if fmt == "jsonl":
        stdout.write(json.dumps({"file": result.input.name, "error": result.reason}) + "\n")
      continue
    count += 1
    if attention_maps:
      result.map_path = write_attention_map(result, attention_maps, used)
    if fmt == "table":
      cells = [f"{label} {prob:.3f}" for label, _, prob in result.top]
      stdout.write(_table_row(result.input.name, width, cells) + "\n")
    else:
      row = {"file": result.input.name, "label": result.top[0][0],
             "probability": result.top[0][2],
             "top_k": [{"label": n, "index": i, "probability": p} for n, i, p in result.top]}
      if result.map_path:
        row["attention_map"] = result.map_path
      stdout.write(json.dumps(row) + "\n")
  stdout.flush()
  if failures:
    stderr.write(f"predicted {count} image(s); {len(failures)} could not be read and were "
                 f"skipped: {', '.join(f.input.name for f in failures)}\n")
    return EXIT_SOME_FAILED
  return EXIT_OK


def _define_flags():
  """CLI flags, defined only when run as a program (importing this module defines none)."""
  global _CHECKPOINT, _TOP_K, _FORMAT, _ATTENTION_MAPS, _BATCH_SIZE
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A fine-tuning workdir / checkpoints "
                                    "dir / step dir, or an inference export directory.")
  _TOP_K = flags.DEFINE_integer("top_k", 3, "How many emotions to list per image.")
  _FORMAT = flags.DEFINE_enum("format", "table", list(FORMATS), "Output: a table or JSON lines.")
  _ATTENTION_MAPS = flags.DEFINE_string("attention_maps", None, "Write an attention-map PNG "
                                        "per image into this directory.")
  _BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per device batch.")


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # the table / JSON lines, not library chatter
    logging.set_verbosity(logging.ERROR)
  return run(_CHECKPOINT.value, argv[1:], top_k=_TOP_K.value, fmt=_FORMAT.value,
             attention_maps=_ATTENTION_MAPS.value, batch_size=_BATCH_SIZE.value)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["checkpoint"])
  app.run(main)
