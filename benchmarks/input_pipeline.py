r"""Host input-pipeline speed: images/s of the Grain pipelines that feed training and evaluation.

Measures, for each pipeline and each number of Grain worker processes, what the host can feed:

  pretrain  two views at 224 px (RandomResizedCrop 0.2–1 + flip; the person view cropped from
            the detector box) and the caption's 77 token ids (a tiny real BPE vocabulary)
  finetune  RandomResizedCrop 0.08–1 + flip + RandAugment rand-m9-mstd0.5-inc1 + erasing 0.25
  eval      resize 256 bicubic + centre crop 224

Data: by default N generated 500×375 JPEGs (quality 90, EmoSet's typical geometry; scenes drawn
by `uniemox_jax.data.demo`, 75% with a person box) written in EmoSet's layout to a temporary
directory and prepared with the real builder, so records are read exactly as in training
(array_record → JPEG bytes → decode in the transform). `--data_dir` reads an EmoSet already
prepared there instead (with `--tokenizer`, a CLIP tokenizer directory, or a tiny vocabulary is
learnt from its captions).

Prints one JSON line per configuration on stdout and a table on stderr. Fields: pipeline,
workers, read_threads, batch, images_per_s, images_per_s_per_worker (÷ max(1, workers)),
images_per_s_per_core (÷ the machine's cores), images_per_cpu_s (images per CPU-second used by
this process and its workers, from psutil: the cost per core whatever the parallelism),
cpu_util (CPU-seconds per second), ms_per_batch, startup_s (iterator creation to first batch:
worker start-up included), timed_batches, timed_s, other_cpu_util (CPU-seconds per second
that *other* processes used meanwhile: on a shared machine they lower every figure but
images_per_cpu_s; trust rows where it is near 0), load_avg_before.

  .venv312/bin/python benchmarks/input_pipeline.py                   # ~2–3 min on 2 cores
  .venv312/bin/python benchmarks/input_pipeline.py --workers=0 --pipelines=pretrain --profile

`--profile` also runs each selected transform serially under cProfile (no threads, no workers)
and prints where the time goes. Run from anywhere; the repository root is put on sys.path.

Measured (2-core AMD EPYC VM, Python 3.12, Pillow 13 with libjpeg-turbo, Grain 0.2.18; 512
generated 500×375 JPEGs of 46 KB; batch 32; 4 read threads, the default on 2 cores; no other
load; run-to-run spread about ±10%):

  pipeline  workers   img/s  img/s/worker  img/s/core  img/CPU-s
  pretrain        0     386           386         193        208
  pretrain        1     366           366         183        197
  pretrain        2     413           207         207        208
  finetune        0     505           505         252        265
  finetune        1     455           455         227        240
  finetune        2     437           218         218        219
  eval            0     635           635         317        338
  eval            1     608           608         304        319
  eval            2     628           314         314        316

Where a pre-training image's time goes (serially, one core, ~3.9 ms ≈ 258 images/s): two
bicubic RandomResizedCrop resizes 2.0 ms, JPEG decode 0.8 ms, record read + TFDS parse 0.4 ms,
Grain (index shuffle, per-example RNG, batch stacking) 0.3 ms, tokenising 0.1–0.3 ms, to_array
0.1 ms. With both cores busy a further ~20% goes to GIL contention (threads) or shared-memory
transfer (workers). For images much larger than needed (e.g. 2048×1536), `transforms.decode(...,
min_size=...)` (JPEG DCT-domain reduction) cuts decode + resize 2–2.6×; at 500×375 it reduces
nothing.
"""
from __future__ import annotations

import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python benchmarks/input_pipeline.py` from anywhere
  sys.path.insert(0, _REPO)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

try:  # CPU-time figures (images_per_cpu_s, cpu_util, other_cpu_util); optional
  import psutil  # noqa: E402
except ImportError:
  psutil = None

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A TFDS data_dir with EmoSet prepared "
                                "(default: generate --num_images into a temporary directory).")
_SPLIT = flags.DEFINE_string("split", "train", "Split read from --data_dir.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "CLIP tokenizer directory (default: a tiny "
                                 "vocabulary learnt from the captions).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "Generated training images.")
_WIDTH = flags.DEFINE_integer("width", 500, "Generated image width.")
_HEIGHT = flags.DEFINE_integer("height", 375, "Generated image height.")
_KEEP = flags.DEFINE_string("keep_data", None, "Generate into this directory and keep it "
                            "(reused when already there).")
_PIPELINES = flags.DEFINE_list("pipelines", ["pretrain", "finetune", "eval"],
                               "Pipelines to measure.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker-process counts.")
_READ_THREADS = flags.DEFINE_list("read_threads", ["0"], "Read threads per process "
                                  "(0: the pipeline's default).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output views, pixels.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch per process.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches after the first (plus 2 per "
                               "worker, so that every worker has started).")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 8.0, "Time each configuration at least this "
                                  "long...")
_MIN_BATCHES = flags.DEFINE_integer("min_batches", 10, "...and over at least this many batches.")
_PROFILE = flags.DEFINE_bool("profile", False, "cProfile each transform serially.")
_PROFILE_IMAGES = flags.DEFINE_integer("profile_images", 300, "Images per profile.")
_OUTPUT = flags.DEFINE_string("output", None, "Also append the JSON lines to this file.")


class _Repeated:
  """`times` passes over a random-access source, so the finite eval split can be timed as long
  as the training ones. Picklable (Grain workers)."""

  def __init__(self, source, times: int):
    self._source, self._n, self._times = source, len(source), times

  def __len__(self):
    return self._n * self._times

  def __getitem__(self, index):
    return self._source[int(index) % self._n]


def _generate(root: str, num_images: int, size: tuple[int, int]) -> str:
  """EmoSet layout with `num_images` training images of `size`, prepared; returns data_dir."""
  from uniemox_jax.data import builders, demo
  data_dir = os.path.join(root, "tfds")
  raw = os.path.join(root, "EmoSet")
  stamp = os.path.join(root, "generated.json")
  wanted = {"num_images": num_images, "size": list(size)}
  if os.path.exists(os.path.join(raw, "train.json")):
    had = None
    if os.path.exists(stamp):
      with open(stamp) as f:
        had = json.load(f)
    if had != wanted:  # never time a different data set than the flags ask for
      raise SystemExit(f"error: --keep_data={root} holds data generated with {had or 'unknown'}"
                       f" settings, not {wanted}; name another directory or delete this one.")
  else:
    t0 = time.perf_counter()
    per_class = max(1, math.ceil(num_images / 8))
    demo.write_emoset(raw, per_class=(per_class, 1, 1), image_size=size)
    logging.info("wrote %d %dx%d JPEGs in %.1f s", 8 * (per_class + 2), *size,
                 time.perf_counter() - t0)
    with open(stamp, "w") as f:
      json.dump(wanted, f)
  t0 = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):   # TFDS prints; stdout is for the JSON lines
    builders.prepare("emoset", raw, data_dir,
                     person_boxes=os.path.join(raw, "person_boxes.json"))
  logging.info("prepared in %.1f s", time.perf_counter() - t0)
  return data_dir


def _cpu_seconds(proc) -> float:
  """CPU time of `proc` and its live children (Grain workers), seconds (0 without psutil)."""
  if proc is None:
    return 0.0
  total = 0.0
  for p in [proc] + proc.children(recursive=True):
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except Exception:  # a child that just exited
      pass
  return total


def _busy_seconds() -> float:
  """CPU-seconds the whole machine spent busy (every process), from /proc/stat via psutil."""
  if psutil is None:
    return 0.0
  t = psutil.cpu_times()
  return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _make(name: str, source, tokenizer: str, image_size: int, batch: int):
  from uniemox_jax.data import pipeline
  if name == "pretrain":
    transform = pipeline.PretrainTransform(image_size, tokenizer)
    return transform, pipeline.train_dataset(source, transform, global_batch=batch, seed=0)
  if name == "finetune":
    transform = pipeline.FinetuneTransform(image_size)
    return transform, pipeline.train_dataset(source, transform, global_batch=batch, seed=0)
  if name == "eval":
    transform = pipeline.EvalTransform(image_size, 256 if image_size == 224 else None)
    return transform, pipeline.eval_dataset(_Repeated(source, 1000), transform,
                                            global_batch=batch)
  raise ValueError(f"--pipelines: unknown pipeline {name!r} (pretrain, finetune, eval)")


def measure(name: str, source, tokenizer: str, workers: int, read_threads: int) -> dict:
  from uniemox_jax.data import pipeline
  batch = _BATCH.value
  _, ds = _make(name, source, tokenizer, _IMAGE_SIZE.value, batch)
  proc = psutil.Process() if psutil is not None else None
  load = os.getloadavg()[0]   # other work on the machine makes every figure here lower
  t0 = time.perf_counter()
  it = pipeline.to_iter(ds, workers, read_threads or None)
  first = next(it)
  startup = time.perf_counter() - t0
  for _ in range(_WARMUP.value + 2 * workers):
    next(it)
  cpu0, busy0, t0 = _cpu_seconds(proc), _busy_seconds(), time.perf_counter()
  n = 0
  while True:
    next(it)
    n += 1
    elapsed = time.perf_counter() - t0
    if n >= _MIN_BATCHES.value and elapsed >= _MIN_SECONDS.value:
      break
  cpu = _cpu_seconds(proc) - cpu0
  other = max(0.0, _busy_seconds() - busy0 - cpu)
  if hasattr(it, "close"):
    it.close()
  del it
  images = n * batch
  cores = os.cpu_count() or 1
  views = {k: list(v.shape[1:]) for k, v in first.items() if getattr(v, "ndim", 0) == 4}
  return dict(
      pipeline=name, workers=workers,
      read_threads=read_threads or pipeline.DEFAULT_READ_THREADS, batch=batch,
      images_per_s=round(images / elapsed, 1),
      images_per_s_per_worker=round(images / elapsed / max(1, workers), 1),
      images_per_s_per_core=round(images / elapsed / cores, 1),
      images_per_cpu_s=round(images / cpu, 1) if cpu > 0 else None,
      cpu_util=round(cpu / elapsed, 2) if proc else None, ms_per_batch=round(1e3 * elapsed / n, 1),
      startup_s=round(startup, 2), timed_batches=n, timed_s=round(elapsed, 2), views=views,
      cores=cores, other_cpu_util=round(other / elapsed, 2) if proc else None, load_avg_before=round(load, 2))


def profile(name: str, source, tokenizer: str) -> str:
  """cProfile of the transform alone, serially (what one worker thread does per image)."""
  transform, _ = _make(name, source, tokenizer, _IMAGE_SIZE.value, _BATCH.value)
  records = [(i, source[i % len(source)]) for i in range(_PROFILE_IMAGES.value)]
  call = ((lambda item, rng: transform(item)) if name == "eval" else transform)
  call(records[0], np.random.default_rng(0))   # loads the tokenizer, warms caches
  profiler = cProfile.Profile()
  t0 = time.perf_counter()
  profiler.enable()
  for item in records:
    call(item, np.random.default_rng(item[0]))
  profiler.disable()
  dt = time.perf_counter() - t0
  out = io.StringIO()
  out.write(f"\n== {name}: {len(records)} images serially, {1e3 * dt / len(records):.2f} ms "
            f"per image ({len(records) / dt:.0f} images/s on one thread, profiler on)\n")
  pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
  return out.getvalue()


def _table(rows: list[dict]) -> str:
  head = ("pipeline", "workers", "threads", "img/s", "img/s/worker", "img/s/core",
          "img/cpu-s", "cpu util", "others' cpu", "ms/batch", "startup s")
  lines = ["  ".join(f"{h:>12}" for h in head)]
  for r in rows:
    vals = (r["pipeline"], r["workers"], r["read_threads"], r["images_per_s"],
            r["images_per_s_per_worker"], r["images_per_s_per_core"], r["images_per_cpu_s"],
            r["cpu_util"], r["other_cpu_util"], r["ms_per_batch"], r["startup_s"])
    lines.append("  ".join(f"{str(v):>12}" for v in vals))
  return "\n".join(lines)


def main(argv):
  del argv
  import grain
  import PIL
  import tensorflow_datasets as tfds
  from uniemox_jax.data import builders
  from uniemox_jax.data import tokenizer as tokenizer_lib
  tfds.disable_progress_bar()
  tmp = None
  try:
    if _DATA_DIR.value:
      data_dir = _DATA_DIR.value
    else:
      root = _KEEP.value or tempfile.mkdtemp(prefix="input_pipeline_")
      tmp = None if _KEEP.value else root
      data_dir = _generate(root, _NUM_IMAGES.value, (_WIDTH.value, _HEIGHT.value))
    source = builders.load_source("emoset", _SPLIT.value, data_dir)
    tokenizer = _TOKENIZER.value
    if tokenizer is None:
      tokenizer = os.path.join(tmp or data_dir, "tiny_vocab")
      if not os.path.exists(os.path.join(tokenizer, "vocab.json")):
        tokenizer_lib.write_tiny_vocab(tokenizer, source.column("caption"))
    sizes = [len(source[i]["image"]) for i in range(min(len(source), 64))]
    first = source[0]
    logging.info("%d records, %dx%d JPEGs of %.0f KB on average", len(source), first["width"],
                 first["height"], np.mean(sizes) / 1e3)
    common = dict(python=platform.python_version(), grain=grain.__version__,
                  pillow=PIL.__version__, machine=platform.processor() or platform.machine(),
                  records=len(source), jpeg_kb=round(float(np.mean(sizes)) / 1e3, 1),
                  source_size=[int(first["width"]), int(first["height"])])
    if _PROFILE.value:
      for name in _PIPELINES.value:
        print(profile(name, source, tokenizer), file=sys.stderr)
    rows = []
    for name in _PIPELINES.value:
      for workers in (int(w) for w in _WORKERS.value):
        for threads in (int(t) for t in _READ_THREADS.value):
          row = dict(measure(name, source, tokenizer, workers, threads), **common)
          rows.append(row)
          line = json.dumps(row)
          print(line, flush=True)
          if _OUTPUT.value:
            with open(_OUTPUT.value, "a") as f:
              f.write(line + "\n")
          logging.info("%s workers=%d threads=%d: %.0f images/s (%.0f per CPU-second)", name,
                       workers, row["read_threads"], row["images_per_s"],
                       row["images_per_cpu_s"] or 0)
    print("\n" + _table(rows), file=sys.stderr)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
