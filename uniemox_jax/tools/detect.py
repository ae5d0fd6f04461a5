r"""The prepare-time person detection pass (SPEC §2 "Person boxes"): YOLOv3 once per data set.

  python -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir=/data/EmoSet-118K \
      --data_dir=/data/tfds --person_boxes=yolov3 --yolo_weights=/models/yolov3.weights \
      [--yolo_cfg=/models/yolov3.cfg] [--detector_batch=64] [--detector_input=letterbox]

runs :func:`detect_dataset` before the data set is written, then prepares it with the boxes
file it wrote (``<data_dir>/person_boxes/<dataset>.yolov3.json``, the format
``--person_boxes=FILE`` reads, so it can be inspected, edited and reused). The paper's
settings are the defaults: 416 px, confidence >= 0.8 (``--min_person_score``), NMS IoU 0.4,
class ``person``; the builder keeps each image's best box.

How it runs: the builder's image list (nothing is written yet) → a Grain ``MapDataset`` that
reads, decodes and letterboxes on host threads (:class:`~uniemox_jax.data.letterbox.
DetectorInput`) → batches of ``--detector_batch`` (the last one padded, so one compiled
shape) → one jitted function on the default JAX device: network, decoding, person NMS and
the mapping back to original pixels (:class:`PersonDetector`). The next batch is dispatched
before the previous one is fetched, so host and device overlap. A progress line (images/s,
ETA) is logged every 10 s, and a summary at the end.

Resuming: detections are written in chunks of ``chunk_batches`` batches
(``<boxes file>.parts/chunk_<start>_<end>.json``, each written to a temporary file and
renamed, so a chunk is either complete or absent). Killed at any point, the same command
continues after the last complete chunk, with the same batch boundaries, and ends with a
boxes file byte-identical to an uninterrupted pass. ``run.json`` there records what the
detections depend on (weights and cfg contents, input mode and size, thresholds, the image
list); if any of it changed, the old chunks are discarded. When done the parts are removed
and ``<boxes file>.run.json`` keeps that record and the summary; a later run with the same
record reuses the boxes file without running the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax import detection
from uniemox_jax.data import letterbox
from uniemox_jax.data import pipeline
from uniemox_jax.data.builders import canonical_name
from uniemox_jax.data.builders import get_builder
from uniemox_jax.data.builders.emoset import Emoset
from uniemox_jax.data.builders.emotion_folder import EmotionFolder
from uniemox_jax.data.builders.person_boxes import DEFAULT_MIN_SCORE, PERSON_LABEL
from uniemox_jax.data.classes import SPLITS
from uniemox_jax.models import yolo
from uniemox_jax.weights import darknet

DEFAULT_BATCH = 64
DEFAULT_SIZE = 416          # the paper's input size (Darknet's yolov3.cfg says 608)
DEFAULT_IOU = 0.4           # the paper's NMS IoU
DEFAULT_MAX_BOXES = 8       # person boxes kept per image in the file (best first)
DEFAULT_CHUNK_BATCHES = 16  # batches per resumable chunk
PROGRESS_EVERY_S = 10.0
BOXES_DIR = 'person_boxes'
FORMAT_VERSION = 1          # of the chunk / run.json layout
_CHUNK = re.compile(r'^chunk_(\d{9})_(\d{9})\.json$')


@dataclasses.dataclass(frozen=True)
class ImageRef:
  """One image of a data set: the id its record gets, and the file it is read from."""
  image_id: str
  path: str


class PersonDetector:
  """YOLOv3 + person decoding/NMS as one jitted function of a host batch.

  Call with ``image`` uint8 ``[B, H, W, 3]``, ``region`` int32 ``[B, 4]`` and ``size`` int32
  ``[B, 2]`` (what :class:`~uniemox_jax.data.letterbox.DetectorInput` makes, batched);
  returns :class:`~uniemox_jax.detection.Detections` in original pixels, on the device
  (dispatch is asynchronous; ``jax.device_get`` fetches).
  """

  def __init__(self, arch: yolo.Architecture, params: Mapping[str, Any], *,
               mode: str = 'letterbox', score_threshold: float = DEFAULT_MIN_SCORE,
               iou_threshold: float = DEFAULT_IOU, max_boxes: int = DEFAULT_MAX_BOXES,
               classes: Sequence[int] = (yolo.PERSON_CLASS,), dtype: Any = jnp.float32):
    if mode not in letterbox.MODES:
      raise ValueError(f'detector input mode must be one of {letterbox.MODES}, got {mode!r}')
    heads = arch.heads()
    bad = [c for c in classes if not 0 <= c < arch.classes]
    if bad:
      raise ValueError(f'classes {bad} are not among the network\'s {arch.classes} classes')
    self.arch, self.mode = arch, mode
    self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
    self.max_boxes, self.classes = int(max_boxes), tuple(int(c) for c in classes)
    self.model = yolo.YOLOv3(arch, dtype=dtype)
    self.params = jax.device_put(params)
    anchors = [h.anchors for h in heads]
    input_size = (arch.width, arch.height)

    def detect(params, image, region, size):
      raws, _ = self.model.apply({'params': params}, detection.network_input(image, region))
      return detection.postprocess(
          raws, anchors, input_size, region, size, score_threshold=self.score_threshold,
          iou_threshold=self.iou_threshold, max_boxes=self.max_boxes, classes=self.classes)

    self._detect = jax.jit(detect)

  @classmethod
  def from_files(cls, weights: str | os.PathLike, cfg: str | os.PathLike | None = None,
                 size: int | None = None, **kwargs) -> 'PersonDetector':
    """Loads Darknet files (:func:`uniemox_jax.weights.darknet.load`); ``size``
    overrides the cfg's input size."""
    loaded = darknet.load(weights, cfg, size=size)
    return cls(loaded.arch, loaded.params, **kwargs)

  def input_transform(self) -> letterbox.DetectorInput:
    return letterbox.DetectorInput(self.arch.width, self.arch.height, self.mode)

  def __call__(self, image: np.ndarray, region: np.ndarray,
               size: np.ndarray) -> detection.Detections:
    return self._detect(self.params, image, region, size)

  def describe(self) -> dict[str, Any]:
    return {'input_size': [self.arch.width, self.arch.height], 'mode': self.mode,
            'score_threshold': self.score_threshold, 'iou_threshold': self.iou_threshold,
            'max_boxes': self.max_boxes, 'classes': list(self.classes)}


# ------------------------------------------------------------------------------ image lists

def dataset_images(builder: Any) -> list[ImageRef]:
  """Every image a builder would prepare, in its order, read from its manual directory's
  index files or folders only (no image is opened; bad ones are the builder's to report)."""
  if isinstance(builder, EmotionFolder):
    pairs = builder.list_images()
  elif isinstance(builder, Emoset):
    root = builder.validate_manual_dir()
    # The builder's own index reader, so the ids and paths are exactly those it prepares.
    pairs = [(it.key, it.path) for split in SPLITS
             for it in builder._read_split(root, split)]  # pylint: disable=protected-access
  else:
    raise TypeError(f'no image list for builder {type(builder).__name__}')
  seen: dict[str, str] = {}
  for image_id, path in pairs:
    if image_id in seen and seen[image_id] != path:
      logging.warning('Image id %s names two files (%s, %s): detecting on the first.',
                      image_id, seen[image_id], path)
    seen.setdefault(image_id, path)
  return [ImageRef(i, p) for i, p in seen.items()]


def default_boxes_path(data_dir: str | os.PathLike, dataset: str) -> Path:
  """``<data_dir>/person_boxes/<dataset>.yolov3.json`` (``emotion_folder/emo8`` →
  ``emotion_folder_emo8``)."""
  return (Path(os.path.expanduser(os.fspath(data_dir))) / BOXES_DIR
          / f'{canonical_name(dataset).replace("/", "_")}.yolov3.json')


# ------------------------------------------------------------------------------ the pass

def file_sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def fingerprint(images: Sequence[ImageRef], detector: PersonDetector, weights: str | os.PathLike,
                cfg: str | os.PathLike | None) -> dict[str, Any]:
  """What the detections depend on; a resumed or reused pass must match it exactly."""
  listing = hashlib.sha256('\n'.join(f'{r.image_id}\t{r.path}' for r in images).encode())
  return {
      'format': FORMAT_VERSION,
      'weights_sha256': file_sha256(weights),
      'cfg_sha256': file_sha256(cfg) if cfg else 'built-in yolov3',
      **detector.describe(),
      'images': len(images),
      'images_sha256': listing.hexdigest(),
  }


def _entries(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             count: int) -> list[dict[str, Any]]:
  """One image's detections in the boxes-file format; boxes empty after clipping (all in
  the letterbox padding) are left out."""
  out = []
  for k in range(int(count)):
    box = [round(float(v), 2) for v in boxes[k]]
    if box[2] <= box[0] or box[3] <= box[1]:
      continue
    label = PERSON_LABEL if int(classes[k]) == yolo.PERSON_CLASS else f'class_{int(classes[k])}'
    out.append({'box': box, 'score': round(float(scores[k]), 6), 'label': label})
  return out


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
  tmp.write_text(text, encoding='utf-8')
  os.replace(tmp, path)


def _load_chunks(parts: Path, images: Sequence[ImageRef]) -> list[dict[str, Any]]:
  """The records of the complete chunks, contiguous from image 0 (leftovers of a killed
  write and chunks past a gap are removed)."""
  for stray in parts.glob('*.tmp*'):
    stray.unlink()
  chunks = sorted((int(m[1]), int(m[2]), p) for p in parts.iterdir()
                  if (m := _CHUNK.match(p.name)))
  records: list[dict[str, Any]] = []
  for start, end, path in chunks:
    if start != len(records):
      logging.warning('Detection chunk %s does not continue at image %d; dropping it.', path,
                      len(records))
      path.unlink()
      continue
    data = json.loads(path.read_text(encoding='utf-8'))
    ids = [r['image_id'] for r in data['images']]
    if len(ids) != end - start or ids != [r.image_id for r in images[start:end]]:
      logging.warning('Detection chunk %s does not hold images %d..%d; dropping it.', path,
                      start, end)
      path.unlink()
      continue
    records += data['images']
  return records


def summarise(records: Sequence[Mapping[str, Any]], min_score: float) -> dict[str, Any]:
  """Counts and the distribution of each image's best person score."""
  best = np.asarray([max(d['score'] for d in r['detections']) for r in records
                     if r['detections']], np.float64)
  edges = np.linspace(min_score, 1.0, 6)
  hist, _ = np.histogram(best, edges) if best.size else (np.zeros(5, int), None)
  out = {
      'images': len(records),
      'with_person': int(best.size),
      'unreadable': sum(not r['ok'] for r in records),
      'more_than_max_boxes': sum(bool(r['more']) for r in records),
      'detections': sum(len(r['detections']) for r in records),
      'min_score': min_score,
      'best_score_quantiles': ({k: round(float(np.quantile(best, q)), 4) for k, q in
                                (('min', 0), ('p10', .1), ('p50', .5), ('p90', .9),
                                 ('max', 1))} if best.size else {}),
      'best_score_histogram': {f'{lo:.2f}-{hi:.2f}': int(n)
                               for lo, hi, n in zip(edges[:-1], edges[1:], hist)},
  }
  return out


def format_summary(summary: Mapping[str, Any]) -> str:
  n = max(summary['images'], 1)
  lines = [f'images: {summary["images"]}, with a person (score >= {summary["min_score"]}): '
           f'{summary["with_person"]} ({100 * summary["with_person"] / n:.1f}%), '
           f'detections kept: {summary["detections"]}, unreadable: {summary["unreadable"]}']
  q = summary['best_score_quantiles']
  if q:
    lines.append('best person score per image: ' + ', '.join(f'{k} {v:.3f}' for k, v in q.items()))
    lines.append('histogram: ' + ', '.join(f'{k}: {v}' for k, v in
                                           summary['best_score_histogram'].items()))
  if summary['more_than_max_boxes']:
    lines.append(f'{summary["more_than_max_boxes"]} images had more person boxes than the '
                 'file keeps (the best are kept)')
  return '\n'.join(lines)


def _eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  s = int(seconds)
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads a short last batch to ``size`` with copies of its first example (results ignored)."""
  n = len(batch['index'])
  if n == size:
    return batch
  return {k: np.concatenate([v, np.repeat(v[:1], size - n, axis=0)]) for k, v in batch.items()}


def run_detection(images: Sequence[ImageRef], boxes_path: str | os.PathLike,
                  detector: PersonDetector, *, batch: int = DEFAULT_BATCH,
                  run_key: Mapping[str, Any] | None = None,
                  chunk_batches: int = DEFAULT_CHUNK_BATCHES,
                  read_threads: int | None = None, num_workers: int = 0,
                  desc: str = 'person detection',
                  on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Detects persons in ``images`` and writes the boxes file; resumable (module docstring).

  Args:
    images: what to detect on, in order (the file lists every one, with ``[]`` when none).
    boxes_path: the JSON boxes file to write.
    detector: the network and its thresholds.
    batch: images per device call.
    run_key: what the results depend on (:func:`fingerprint`); chunks of another key are
      discarded, and a finished file of the same key is reused as is.
    chunk_batches: batches per chunk file.
    read_threads, num_workers: Grain host parallelism (:func:`pipeline.to_iter`).
    desc: the name in the progress log.
    on_chunk: called with the end index after each chunk is written (tests stop here).

  Returns:
    The summary (:func:`summarise`).
  """
  if batch < 1 or chunk_batches < 1:
    raise ValueError(f'batch ({batch}) and chunk_batches ({chunk_batches}) must be >= 1')
  boxes_path = Path(boxes_path)
  sidecar = boxes_path.with_name(boxes_path.name + '.run.json')
  parts = boxes_path.with_name(boxes_path.name + '.parts')
  key = dict(run_key or {'images': len(images)})
  if boxes_path.is_file() and sidecar.is_file():
    done = json.loads(sidecar.read_text(encoding='utf-8'))
    if done.get('run') == key:
      logging.info('%s: reusing %s (made with the same weights, settings and images).', desc,
                   boxes_path)
      return done['summary']
    logging.warning('%s: %s was made with other weights, settings or images; detecting '
                    'again.', desc, boxes_path)
  parts.mkdir(parents=True, exist_ok=True)
  run_file = parts / 'run.json'
  if run_file.is_file() and json.loads(run_file.read_text(encoding='utf-8')) != key:
    logging.warning('%s: the partial detections in %s were made with other weights, settings '
                    'or images; starting over.', desc, parts)
    shutil.rmtree(parts)
    parts.mkdir(parents=True)
  _write_atomic(run_file, json.dumps(key, indent=1))
  records = _load_chunks(parts, images)
  start, total = len(records), len(images)
  if start:
    logging.info('%s: resuming after %d of %d images (%s).', desc, start, total, parts)
  chunk_size = batch * chunk_batches
  pending: list[dict[str, Any]] = []
  with_person = sum(bool(r['detections']) for r in records)

  def flush(final: bool = False) -> None:
    nonlocal pending
    while len(pending) >= chunk_size or (final and pending):
      part, pending = pending[:chunk_size], pending[chunk_size:]
      lo = len(records)
      hi = lo + len(part)
      _write_atomic(parts / f'chunk_{lo:09d}_{hi:09d}.json',
                    json.dumps({'start': lo, 'end': hi, 'images': part}))
      records.extend(part)
      if on_chunk is not None:
        on_chunk(hi)

  def collect(out: detection.Detections, index: np.ndarray, ok: np.ndarray) -> None:
    nonlocal with_person
    out = jax.device_get(out)
    for j, i in enumerate(index):
      dets = (_entries(out.boxes[j], out.scores[j], out.classes[j], out.count[j])
              if ok[j] else [])
      with_person += bool(dets)
      pending.append({'image_id': images[int(i)].image_id, 'detections': dets,
                      'ok': bool(ok[j]), 'more': bool(out.more[j]) and bool(ok[j])})
    flush()

  if start < total:
    source = [(i, images[i].path) for i in range(start, total)]
    ds = grain.MapDataset.source(source).map(detector.input_transform())
    it = pipeline.to_iter(ds.batch(batch, drop_remainder=False), num_workers=num_workers,
                          read_threads=read_threads)
    t_start = time.perf_counter()
    t_first = last_log = None
    first_done = 0
    in_flight = None
    for host in it:
      padded = _pad(host, batch)
      out = detector(padded['image'], padded['region'], padded['size'])
      if in_flight is not None:
        collect(*in_flight)
      in_flight = (out, host['index'], host['ok'])
      now = time.perf_counter()
      done = len(records) + len(pending)
      if t_first is None and done > start:
        t_first, first_done, last_log = now, done, now
        logging.info('%s: first batch done in %.1f s (compilation included).', desc,
                     now - t_start)
      elif t_first is not None and now - last_log >= PROGRESS_EVERY_S:
        last_log = now
        rate = (done - first_done) / max(now - t_first, 1e-9)
        logging.info('%s: %d/%d images (%.1f%%), %.1f images/s, ETA %s; %d with a person',
                     desc, done, total, 100 * done / total, rate,
                     _eta((total - done) / rate if rate > 0 else math.inf), with_person)
    if in_flight is not None:
      collect(*in_flight)
    flush(final=True)
    seconds = time.perf_counter() - t_start
    logging.info('%s: %d images in %.1f s (%.1f images/s).', desc, total - start, seconds,
                 (total - start) / max(seconds, 1e-9))
  summary = summarise(records, detector.score_threshold)
  body = ',\n'.join(f'{json.dumps(r["image_id"])}: {json.dumps(r["detections"])}'
                    for r in records)
  boxes_path.parent.mkdir(parents=True, exist_ok=True)
  _write_atomic(boxes_path, '{\n' + body + '\n}\n' if records else '{}\n')
  _write_atomic(sidecar, json.dumps({'run': key, 'summary': summary}, indent=1))
  shutil.rmtree(parts)
  logging.info('%s: wrote %s\n%s', desc, boxes_path, format_summary(summary))
  return summary


def detect_dataset(dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike,
                   *, weights: str | os.PathLike, cfg: str | os.PathLike | None = None,
                   size: int | None = DEFAULT_SIZE, batch: int = DEFAULT_BATCH,
                   mode: str = 'letterbox',
                   min_score: float = DEFAULT_MIN_SCORE, iou_threshold: float = DEFAULT_IOU,
                   max_boxes: int = DEFAULT_MAX_BOXES,
                   boxes_path: str | os.PathLike | None = None,
                   chunk_batches: int = DEFAULT_CHUNK_BATCHES,
                   read_threads: int | None = None,
                   on_chunk: Callable[[int], None] | None = None
                   ) -> tuple[Path, dict[str, Any]]:
  """The detection pass over a data set's manual directory, before it is prepared.

  Args:
    dataset: a name of :data:`~uniemox_jax.data.builders.DATASETS`.
    manual_dir: the downloaded data (what ``prepare`` reads).
    data_dir: the TFDS data directory; the boxes go to :func:`default_boxes_path` unless
      ``boxes_path`` is given.
    weights, cfg: the Darknet files (``cfg`` None: our YOLOv3, the yolov3.cfg network).
    size: the network input size in pixels, a multiple of 32 (default 416, the paper's);
      None keeps the cfg's ``width``/``height``.
    batch: images per device call (``--detector_batch``).
    mode: ``'letterbox'`` or ``'squash'``.
    min_score, iou_threshold, max_boxes: kept person boxes need confidence >= ``min_score``;
      NMS IoU; at most ``max_boxes`` per image.
    chunk_batches, read_threads, on_chunk: see :func:`run_detection`.

  Returns:
    ``(boxes file, summary)``.
  """
  builder = get_builder(dataset, data_dir, manual_dir=manual_dir)
  images = dataset_images(builder)
  if not images:
    raise ValueError(f'{canonical_name(dataset)}: no images listed in {manual_dir}.')
  path = Path(boxes_path) if boxes_path else default_boxes_path(data_dir, dataset)
  detector = PersonDetector.from_files(weights, cfg, size=size, mode=mode,
                                       score_threshold=min_score,
                                       iou_threshold=iou_threshold, max_boxes=max_boxes)
  logging.info('Detecting persons in %d images of %s with YOLOv3 (%s, %dx%d, batch %d) on %s.',
               len(images), canonical_name(dataset), mode, detector.arch.width,
               detector.arch.height, batch, jax.devices()[0])
  summary = run_detection(images, path, detector, batch=batch,
                          run_key=fingerprint(images, detector, weights, cfg),
                          chunk_batches=chunk_batches, read_threads=read_threads,
                          desc=f'{canonical_name(dataset)} person detection', on_chunk=on_chunk)
  return path, summary
