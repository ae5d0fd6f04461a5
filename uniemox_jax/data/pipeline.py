"""Grain input pipelines: records → augmented uint8 batches → global sharded `jax.Array`s.

Three pipelines share one shape:

  source (random access, e.g. `tools.prepare.load_source`)
    → shuffle(seed) → repeat            (training only; every epoch reshuffled)
    → this process's shard [i::n]       (multi-host: each process reads its own examples)
    → random_map(transform)             (per-example RNG derived from the seed and position)
    → batch(global_batch / n)
    → worker processes (mp_prefetch)    → `BatchIterator`: global arrays on the mesh

Pixels leave the pipeline as uint8 and are normalised on the device (ImageNet statistics for
the student, CLIP's for the teacher: docs/method.md §3 #3), which keeps host→device traffic 4× smaller
and the host free of float work.

Everything is deterministic given the seed: element `k` of the shuffled stream always gets the
same augmentation, so the iterator state (how far the stream was read) restores to exactly
the next batch. Evaluation visits every example exactly once: each process's shard is padded
to a whole number of batches and a `valid` mask marks the padding.
"""
from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.data.builders import ensure_absl_flags
from uniemox_jax.data import transforms

PERSON_VIEWS = ("detector_crop", "second_view")
# The released code's second view starts from the image squashed to YOLO's input size
# (bilinear, aspect not kept) before the same RandomResizedCrop (docs/method.md §3 #2).
RELEASED_SECOND_VIEW_SIZE = 416
CAPTION_FIELDS = ("caption", "caption_no_emotion")

# Grain calls a transform from several read threads at once. The first calls in a fresh worker
# process would each load the tokenizer, and concurrent first imports of `transformers` fail
# ("cannot import name 'CLIPTokenizerFast'"), so loading is serialised. Tokenising itself is
# thread-safe.
_TOKENIZER_LOCK = threading.Lock()


def _worker_init(worker_index: int, worker_count: int):
  # Worker processes run absl-logging code outside an absl app.
  del worker_index, worker_count
  ensure_absl_flags()


# --------------------------------------------------------------------------------------
# Per-example transforms (picklable: they run in Grain worker processes).


@dataclasses.dataclass
class PretrainTransform:
  """Two views and the caption's token ids of one EmoSet record (docs/method.md §1, §3 #2).

  Output: `scene`, `person` uint8 `[S, S, 3]`; `caption_ids` int32 `[T]`;
  `caption_truncated` bool; `index` int64 (record index in the source, for caches);
  `label` int32.
  """
  image_size: int
  tokenizer_path: str | None
  scale: tuple[float, float] = (0.2, 1.0)
  person_view: str = "detector_crop"
  caption_field: str = "caption"
  context_length: int = 77

  def __post_init__(self):
    if self.person_view not in PERSON_VIEWS:
      raise ValueError(f"data.person_view must be one of {PERSON_VIEWS}, got {self.person_view!r}")
    if self.caption_field not in CAPTION_FIELDS:
      raise ValueError(f"data.caption_field must be one of {CAPTION_FIELDS}, "
                       f"got {self.caption_field!r}")
    self._tokenizer = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_tokenizer"] = None  # reloaded lazily in each worker
    return state

  def _tokenize(self, text: str) -> tuple[np.ndarray, bool]:
    if self._tokenizer is None:
      with _TOKENIZER_LOCK:
        if self._tokenizer is None:
          self._tokenizer = tokenizer_lib.load_tokenizer(self.tokenizer_path)
    ids, truncated = tokenizer_lib.tokenize(self._tokenizer, [text], self.context_length)
    return ids[0], bool(truncated)

  def view(self, image, rng: np.random.Generator, region=None) -> np.ndarray:
    crop = transforms.random_resized_crop(image, rng, self.image_size, scale=self.scale,
                                          region=region)
    return transforms.to_array(transforms.random_hflip(crop, rng))

  def __call__(self, item: tuple[int, Mapping[str, Any]], rng: np.random.Generator) -> dict:
    index, record = item
    image = transforms.decode(record["image"])
    out = {"scene": self.view(image, rng), "index": np.int64(index),
           "label": np.int32(record["label"])}
    if self.person_view == "detector_crop":
      region = person_region(record, image.width, image.height)
      out["person"] = self.view(image, rng, region=region)
    else:  # the released code: an independent second view of the whole image, squashed first
      squashed = image.resize((RELEASED_SECOND_VIEW_SIZE,) * 2, transforms.BILINEAR)
      out["person"] = self.view(squashed, rng)
    if self.tokenizer_path is not None:
      out["caption_ids"], out["caption_truncated"] = self._tokenize(record[self.caption_field])
    return out


def person_region(record: Mapping[str, Any], width: int, height: int):
  """Pixel box `(x0, y0, x1, y1)` of the record's person, or None (→ the whole image).

  Boxes are stored normalised `[y0, x0, y1, x1]`; degenerate boxes (under 2 px) are ignored.
  """
  if not bool(record.get("has_person", False)):
    return None
  y0, x0, y1, x1 = (float(v) for v in record["person_box"])
  box = (int(math.floor(x0 * width)), int(math.floor(y0 * height)),
         int(math.ceil(x1 * width)), int(math.ceil(y1 * height)))
  box = (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))
  if box[2] - box[0] < 2 or box[3] - box[1] < 2:
    return None
  return box


@dataclasses.dataclass
class FinetuneTransform:
  """Fine-tuning augmentation (docs/method.md §4): RRC(0.08–1) + flip + RandAugment + random erasing.

  Mixup/CutMix and label smoothing run on the device (`data/mixup.py`).
  """
  image_size: int
  scale: tuple[float, float] = (0.08, 1.0)
  rand_augment: str | None = "rand-m9-mstd0.5-inc1"
  erase_prob: float = 0.25

  def __post_init__(self):
    self._augment = (transforms.RandAugment(self.rand_augment, image_size=self.image_size)
                     if self.rand_augment else None)

  def __call__(self, item: tuple[int, Mapping[str, Any]], rng: np.random.Generator) -> dict:
    index, record = item
    image = transforms.decode(record["image"])
    image = transforms.random_resized_crop(image, rng, self.image_size, scale=self.scale)
    image = transforms.random_hflip(image, rng)
    if self._augment is not None:
      image = self._augment(image, rng)
    pixels = transforms.random_erasing(transforms.to_array(image), rng, prob=self.erase_prob)
    return {"image": pixels, "label": np.int32(record["label"]), "index": np.int64(index)}


@dataclasses.dataclass
class EvalTransform:
  """Evaluation: resize the shorter side to `resize_size` (bicubic), centre-crop `image_size`."""
  image_size: int
  resize_size: int | None = None

  def __call__(self, item: tuple[int, Mapping[str, Any]]) -> dict:
    index, record = item
    resize = self.resize_size or int(round(self.image_size / 0.875))
    image = transforms.resize_center_crop(transforms.decode(record["image"]), resize,
                                          self.image_size)
    return {"image": transforms.to_array(image), "label": np.int32(record["label"]),
            "index": np.int64(index)}


# --------------------------------------------------------------------------------------
# Datasets.


class _Indexed:
  """Random-access source whose items are `(index, record)`."""

  def __init__(self, source: Sequence):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    return int(index), self._source[int(index)]


@dataclasses.dataclass(frozen=True)
class Sharding:
  """Which slice of the global batch this process feeds."""
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def from_jax(cls) -> "Sharding":
    import jax
    return cls(jax.process_index(), jax.process_count())


def local_batch_size(global_batch: int, shard: Sharding) -> int:
  if global_batch % shard.process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by the "
                     f"{shard.process_count} processes")
  return global_batch // shard.process_count


def train_dataset(source: Sequence, transform: Callable, *, global_batch: int, seed: int,
                  shard: Sharding = Sharding(), num_epochs: int | None = None) -> grain.MapDataset:
  """Shuffled, repeated, augmented and batched training data for this process.

  Batches are dicts of numpy arrays with a leading dimension of `global_batch / processes`.
  The union over processes of their b-th batches is the b-th global batch of the one
  shuffled stream, whatever the number of processes.
  """
  if len(source) < global_batch:
    raise ValueError(f"the training split has {len(source)} examples, fewer than one global "
                     f"batch of {global_batch}; lower config.batch_size")
  ds = grain.MapDataset.source(_Indexed(source)).shuffle(seed=seed).repeat(num_epochs)
  # Augment before sharding, so an example's randomness depends on its global position only
  # (a MapDataset is lazy: each process transforms just its own elements).
  ds = ds.random_map(transform, seed=seed)
  if shard.process_count > 1:
    ds = ds[shard.process_index::shard.process_count]
  return ds.batch(local_batch_size(global_batch, shard), drop_remainder=True)


class _Padded:
  """This process's shard of the evaluation split, padded with copies of its first example
  marked `valid = False` so every process runs the same number of whole batches."""

  def __init__(self, source: Sequence, shard: Sharding, length: int):
    self._source = source
    self._indices = list(range(shard.process_index, len(source), shard.process_count))
    self._length = length

  def __len__(self):
    return self._length

  def __getitem__(self, i: int):
    i = int(i)
    valid = i < len(self._indices)
    index = self._indices[i] if valid else self._indices[0] if self._indices else 0
    return valid, (index, self._source[index])


def eval_num_batches(num_examples: int, global_batch: int, shard: Sharding = Sharding()) -> int:
  per_process = -(-num_examples // shard.process_count)
  return -(-per_process // local_batch_size(global_batch, shard))


def eval_dataset(source: Sequence, transform: Callable, *, global_batch: int,
                 shard: Sharding = Sharding()) -> grain.MapDataset:
  """Every example exactly once, in order, padded to whole batches (`valid` marks real ones)."""
  local = local_batch_size(global_batch, shard)
  length = eval_num_batches(len(source), global_batch, shard) * local

  def apply(item):
    valid, pair = item
    out = transform(pair)
    out["valid"] = np.bool_(valid)
    return out

  ds = grain.MapDataset.source(_Padded(source, shard, length)).map(apply)
  return ds.batch(local, drop_remainder=True)


# Threads per process when `read_threads` is 0/None. The work is CPU-bound (JPEG decode and
# resampling release the GIL; record parsing and tokenising do not), so threads beyond ~2 per
# core only add GIL contention: on 2 cores, 4 threads fed 10–15% more images/s than Grain's
# default of 16 (benchmarks/input_pipeline.py). Large hosts keep Grain's 16.
DEFAULT_READ_THREADS = min(16, 2 * (os.cpu_count() or 1))


def to_iter(ds: grain.MapDataset, num_workers: int = 0, read_threads: int | None = None,
            buffer_size: int = 2) -> grain.DatasetIterator:
  """A checkpointable iterator; `num_workers > 0` runs the transforms in worker processes.

  Each process (the main one, or each worker) computes whole batches on `read_threads`
  threads (default `DEFAULT_READ_THREADS`) and holds at most `read_threads + buffer_size`
  batches. (Grain's default read-ahead
  of 500 elements would be 500 *batches* here: tens of GB of host memory at 224 px, and
  minutes of wasted work on every restart.)
  """
  threads = read_threads or DEFAULT_READ_THREADS
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=threads + buffer_size))
  if num_workers > 0:
    ensure_absl_flags()  # Grain reads its absl flags in this process too, when starting workers
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=buffer_size),
        worker_init_fn=_worker_init)
  return iter(it_ds)


# --------------------------------------------------------------------------------------
# Host → device.


class BatchIterator:
  """Turns a Grain iterator's local batches into global `jax.Array`s, `prefetch` batches ahead.

  `get_state()` is the Grain state right after the last batch *returned* (not the one the
  background thread has read ahead), so a checkpoint resumes at exactly the next batch.
  `extra_fn(batch)` runs on the host batch first (e.g. to attach cached text embeddings).
  """

  def __init__(self, grain_iter, to_global: Callable[[dict], dict], prefetch: int = 2,
               extra_fn: Callable[[dict], dict] | None = None):
    self._it = grain_iter
    self._to_global = to_global
    self._extra_fn = extra_fn
    self._state = grain_iter.get_state()
    self._peeked = None
    # Time the consumer spent blocked waiting for the next batch: an input-bound run shows
    # up as a large fraction of the step time (logged as `data_wait_frac`).
    self.wait_seconds = 0.0
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, daemon=True, name="batch-prefetch")
    self._thread.start()

  def _work(self):
    try:
      while not self._stop.is_set():
        try:
          batch = next(self._it)
        except StopIteration:
          self._queue.put(("end", None, None))
          return
        state = self._it.get_state()
        if self._extra_fn is not None:
          batch = self._extra_fn(batch)
        item = ("batch", self._to_global(batch), state)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # surfaced in the consumer's thread
      self._queue.put(("error", e, None))

  def __iter__(self):
    return self

  def _get(self):
    if self._peeked is not None:
      item, self._peeked = self._peeked, None
      return item
    start = time.perf_counter()
    item = self._queue.get()
    self.wait_seconds += time.perf_counter() - start
    return item

  def peek(self) -> dict:
    """The next batch, without consuming it (the state does not move)."""
    if self._peeked is None:
      self._peeked = self._queue.get()
    kind, value, _ = self._peeked
    if kind == "end":
      raise StopIteration
    if kind == "error":
      raise value
    return value

  def __next__(self) -> dict:
    kind, value, state = self._get()
    if kind != "batch":
      # The worker thread has stopped: keep answering the same way instead of blocking on
      # the empty queue.
      self._peeked = (kind, value, state)
      if kind == "end":
        raise StopIteration
      raise value
    self._state = state
    return value

  def get_state(self) -> Any:
    return self._state

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


def make_global_fn(mesh, batch_axes: Sequence[str]) -> Callable[[dict], dict]:
  """Local numpy batch → global arrays sharded over `batch_axes` on their leading dimension."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  def to_global(batch: dict) -> dict:
    def one(x):
      x = np.asarray(x)
      spec = PartitionSpec(tuple(batch_axes), *([None] * (x.ndim - 1)))
      return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)
    return jax.tree.map(one, batch)

  return to_global
