r"""Near-duplicate images between the pre-training data and the benchmarks' test splits.

  python -m uniemox_jax.tools.leakage --pretrain=emoset --benchmarks=emo8,fi,emotion6 \
      --data_dir=/data/tfds --out=/tmp/leakage [--threshold=12] [--max_residual=6]

reads the prepared TFDS data (what ``tools.prepare`` wrote into ``--data_dir``) and compares
every test image of each benchmark with every pre-training image (EmoSet train+val by
default). Inside each benchmark it also lists byte-identical images in different splits and
near-duplicates between its test split and its train/val splits. Writes into ``--out``:

* ``leakage.json``: the settings, counts per data set and every pair found;
* ``pairs.csv``: the same pairs, one a line;
* ``closest_pairs.png``: the closest pairs side by side with their distances and verdicts;
* ``hashes/``: the hashes of each split, reused by the next run on the same data.

How a pair is found, in two stages:

1. **Perceptual hash** (a DCT pHash, 64 bits): the image is decoded (JPEGs at reduced size),
   squashed to a 64×64 canvas, converted to luma and box-resampled to 32×32; the bits say
   which of the 8×8 lowest 2-D DCT coefficients exceed their median. Resizing and
   re-encoding change few bits. To survive slight crops each image also gets the hashes of
   ten crops of itself (3 % and 6 % off every side; 5 % off one side; 4 % off two adjacent
   sides), and two images' distance is the smallest Hamming distance between one's
   full-image hash and any hash of the other (either way round). Pairs within
   ``--threshold`` bits are candidates.
2. **Verification**: the pHash only sees coarse luma layout, so distinct photographs with a
   similar layout (and the demo data's look-alike drawings) can be close. Each candidate is
   decoded again and compared pixel by pixel: 16×16 RGB thumbnails of one image's crops (0,
   2, 4 or 6 % off each side, 256 crops) against the other's whole-image thumbnail, either
   way round; the residual is the smallest mean absolute difference (0–255 scale). A pair
   is a near-duplicate when the residual is at most ``--max_residual``.

Both stages tolerate crops of up to about 6 % per side of one image relative to the other,
rescaling to any size, and JPEG re-encoding down to quality 30 or so. Measured on the demo
drawings (8 classes x 24 look-alikes, 128x96; tests/test_leakage.py): copies that were
resized, re-encoded at quality 30 or cropped 4-5 % are at most 8 bits and residual 4.4 from
their original; distinct drawings have hash distances down to 6 bits (so the hash alone
would pair them) but residuals of at least 11 (7.4 at 256x192, two dark, nearly empty
scenes). Dark, low-contrast images are the hardest case for the residual.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from uniemox_jax import errors
from uniemox_jax.data import builders
from uniemox_jax.data.builders import images as images_lib
from uniemox_jax.data.classes import SPLITS

FLAGS = flags.FLAGS

HASH_VERSION = 'phash64-crops11-canvas64/1'   # stored with cached hashes
CANVAS = 64          # images are squashed to CANVAS x CANVAS before anything else
HASH_GRID = 32       # the pHash's luma grid
HASH_FREQS = 8       # 8x8 lowest DCT frequencies -> 64 bits
# Crops (left, top, right, bottom, as fractions of the side) hashed besides the full image.
HASH_CROPS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    (0.03, 0.03, 0.03, 0.03), (0.06, 0.06, 0.06, 0.06),
    (0.05, 0.0, 0.0, 0.0), (0.0, 0.05, 0.0, 0.0), (0.0, 0.0, 0.05, 0.0), (0.0, 0.0, 0.0, 0.05),
    (0.04, 0.04, 0.0, 0.0), (0.0, 0.04, 0.04, 0.0), (0.0, 0.0, 0.04, 0.04), (0.04, 0.0, 0.0, 0.04),
)
VERIFY_CUTS = (0.0, 0.02, 0.04, 0.06)   # per side, for the verification's crop search
THUMB = 16
DEFAULT_THRESHOLD = 12
DEFAULT_MAX_RESIDUAL = 6.0
MIN_IMAGES_FOR_POOL = 2000
CHUNK = 512          # records per worker task
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


class LeakageError(ValueError):
  """A wrong argument (the message names it)."""


# ----------------------------------------------------------------------------- hashing

def _box_matrix(n_out: int, n_in: int, lo: float, hi: float) -> np.ndarray:
  """Box-filter resampling of the interval [lo, hi] (fractions of n_in samples) to n_out.

  Returns ``[n_out, n_in]`` weights; output ``j`` averages the input over
  ``[lo + (hi - lo) * j / n_out, lo + (hi - lo) * (j + 1) / n_out]`` (times ``n_in``).
  """
  edges = (lo + (hi - lo) * np.arange(n_out + 1) / n_out) * n_in
  left, right = edges[:-1, None], edges[1:, None]
  pix = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(right, pix + 1) - np.maximum(left, pix), 0.0, None)
  return (overlap / (right - left)).astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix ``[n, n]`` (rows are frequencies)."""
  k = np.arange(n)[:, None]
  x = np.arange(n)[None, :]
  m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m


def _hash_matrices() -> tuple[np.ndarray, np.ndarray]:
  """Per hash crop, the row and column maps from the canvas to the low DCT frequencies:
  ``[K, 8, CANVAS]`` each, so coefficients are ``rows[k] @ luma @ cols[k].T``."""
  dct = _dct_matrix(HASH_GRID)[:HASH_FREQS].astype(np.float64)
  rows, cols = [], []
  for left, top, right, bottom in HASH_CROPS:
    rows.append(dct @ _box_matrix(HASH_GRID, CANVAS, top, 1.0 - bottom))
    cols.append(dct @ _box_matrix(HASH_GRID, CANVAS, left, 1.0 - right))
  return np.stack(rows).astype(np.float32), np.stack(cols).astype(np.float32)


_HASH_ROWS, _HASH_COLS = _hash_matrices()
_CUT_PAIRS = list(itertools.product(VERIFY_CUTS, VERIFY_CUTS))   # (start cut, end cut)


def _cut_edges() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cell edges of every verification crop on a canvas axis: integer parts ``[P, T+1]``,
  fractional parts ``[P, T+1]`` and cell widths ``[P, T]`` (pixels)."""
  edges = np.stack([(a + (1.0 - b - a) * np.arange(THUMB + 1) / THUMB) * CANVAS
                    for a, b in _CUT_PAIRS])
  whole = np.minimum(np.floor(edges), CANVAS - 1).astype(np.int64)
  return whole, (edges - whole).astype(np.float32), np.diff(edges, axis=1).astype(np.float32)


_EDGE_INT, _EDGE_FRAC, _CELL_WIDTH = _cut_edges()


def canvas(data: bytes) -> np.ndarray:
  """An encoded image as a ``[CANVAS, CANVAS, 3]`` float32 RGB array (0–255), squashed.

  JPEGs are decoded at the smallest DCT scale that still covers the canvas (fast); other
  formats in full, high bit depths scaled to 8 bits (:func:`images.to_rgb`).
  """
  with Image.open(io.BytesIO(data)) as im:
    if im.format in ('JPEG', 'MPO'):
      im.draft('RGB', (CANVAS, CANVAS))
    rgb = images_lib.to_rgb(im)
  small = rgb.resize((CANVAS, CANVAS), Image.Resampling.BOX)
  return np.asarray(small, dtype=np.float32)


def phashes(image: np.ndarray) -> np.ndarray:
  """The pHashes of a canvas and of its :data:`HASH_CROPS` crops: ``[K]`` uint64.

  Bit ``i`` (least significant first) is coefficient ``i`` of the row-major 8×8 block of
  lowest DCT frequencies compared with the block's median.
  """
  luma = image @ _LUMA
  coeffs = np.einsum('kir,rc,kjc->kij', _HASH_ROWS, luma, _HASH_COLS)
  flat = coeffs.reshape(len(HASH_CROPS), -1)
  bits = flat > np.median(flat, axis=1, keepdims=True)
  return np.packbits(bits, axis=1, bitorder='little').view('<u8')[:, 0].astype(np.uint64)


def image_hashes(data: bytes) -> np.ndarray:
  """:func:`phashes` of an encoded image."""
  return phashes(canvas(data))


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
  """The crop-tolerant distance of two images' hash rows (``[K]`` each): the smallest
  Hamming distance between one's full-image hash and any of the other's hashes."""
  return int(min(np.bitwise_count(a[0] ^ b).min(), np.bitwise_count(b[0] ^ a).min()))


def _box_average(x: np.ndarray, axis: int) -> np.ndarray:
  """Box-filtered cells of every verification crop along ``axis`` of ``x``.

  A pixel row is piecewise constant, so its integral up to a fractional position is the
  cumulative sum up to the pixel plus the fraction of that pixel; a cell's average is the
  difference of two integrals over its width. Exact (the same weights as a box filter on
  fractional boundaries) and free of BLAS (whose threads stall on such tiny products).
  The new axes ``[P, THUMB]`` replace ``axis``.
  """
  x = np.moveaxis(x, axis, 0)
  cum = np.concatenate([np.zeros_like(x[:1]), np.cumsum(x, axis=0)])    # [CANVAS+1, ...]
  extra = (slice(None), slice(None)) + (None,) * (x.ndim - 1)
  integral = cum[_EDGE_INT] + _EDGE_FRAC[extra] * x[_EDGE_INT]          # [P, T+1, ...]
  cells = np.diff(integral, axis=1) / _CELL_WIDTH[extra]                 # [P, T, ...]
  return np.moveaxis(cells, (0, 1), (axis, axis + 1))


def _thumbnails(image: np.ndarray) -> np.ndarray:
  """16×16 RGB thumbnails of every verification crop: ``[P, P, THUMB, THUMB, 3]`` with
  ``P = len(VERIFY_CUTS) ** 2`` (row-cut pair, column-cut pair); ``[0, 0]`` is the whole
  image."""
  rows = _box_average(image.astype(np.float32), 0)        # [P, T, CANVAS, 3]
  both = _box_average(rows, 2)                            # [P, T, Q, T, 3]
  return both.transpose(0, 2, 1, 3, 4)


def residual(a: np.ndarray, b: np.ndarray) -> float:
  """How far apart two canvases are after the best slight crop of either: the smallest
  mean absolute RGB difference (0–255) between one's cropped thumbnails and the other's
  whole-image thumbnail."""
  ta, tb = _thumbnails(a), _thumbnails(b)
  da = np.abs(ta - tb[0, 0]).mean(axis=(2, 3, 4)).min()
  db = np.abs(tb - ta[0, 0]).mean(axis=(2, 3, 4)).min()
  return float(min(da, db))


def match(query: np.ndarray, ref: np.ndarray, threshold: int, *, desc: str = ''
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every (query, ref) pair within ``threshold``, and each query's nearest ref.

  Args:
    query: ``[Nq, K]`` uint64 hash rows.
    ref: ``[Nr, K]`` uint64 hash rows.
    threshold: the largest distance (bits) of a candidate.
    desc: for the progress log.

  Returns:
    ``pairs`` ``[P, 3]`` int64 (query index, ref index, distance), sorted; ``nearest``
    ``[Nq]`` (ref index, -1 when ref is empty) and ``nearest_d`` ``[Nq]`` (65 then).
  """
  nq, nr = len(query), len(ref)
  nearest = np.full(nq, -1, np.int64)
  nearest_d = np.full(nq, 65, np.int64)
  found = []
  if nq == 0 or nr == 0:
    return np.zeros((0, 3), np.int64), nearest, nearest_d
  rows = max(1, (1 << 22) // nr)     # ~4M distances per step
  t0 = last = time.perf_counter()
  k = query.shape[1]
  for start in range(0, nq, rows):
    q = query[start:start + rows]
    dist = np.full((len(q), nr), 255, np.uint8)
    for c in range(k):
      np.minimum(dist, np.bitwise_count(q[:, :1] ^ ref[None, :, c]).astype(np.uint8), out=dist)
      if c:
        np.minimum(dist, np.bitwise_count(q[:, c:c + 1] ^ ref[None, :, 0]).astype(np.uint8),
                   out=dist)
    j = dist.argmin(axis=1)
    nearest[start:start + len(q)] = j
    nearest_d[start:start + len(q)] = dist[np.arange(len(q)), j]
    qi, rj = np.nonzero(dist <= threshold)
    if len(qi):
      found.append(np.stack([qi + start, rj, dist[qi, rj]], axis=1).astype(np.int64))
    if time.perf_counter() - last > images_lib.PROGRESS_EVERY_S:
      last = time.perf_counter()
      done = start + len(q)
      logging.info('matching %s: %d/%d images, %.0f s left', desc, done, nq,
                   (last - t0) / done * (nq - done))
  pairs = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
  return pairs, nearest, nearest_d


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class HashedSplit:
  """One split of a prepared data set, hashed.

  Attributes:
    dataset: the canonical name (``'emoset'``, ``'emotion_folder/fi'``).
    split: ``'train'``, ``'val'`` or ``'test'``.
    ids: the records' ``image_id``, in source order.
    hashes: ``[N, K]`` uint64 (:func:`phashes`).
    sha256: hex digests of the stored image bytes (exact duplicates).
    data_dir: the TFDS data directory.
  """
  dataset: str
  split: str
  ids: list[str]
  hashes: np.ndarray
  sha256: list[str]
  data_dir: str
  _source: Any = None

  @property
  def short(self) -> str:
    return self.dataset.split('/', 1)[-1]

  def image_bytes(self, index: int) -> bytes:
    if self._source is None:
      self._source = builders.load_source(self.dataset, self.split, self.data_dir)
    return bytes(self._source[int(index)]['image'])


def _hash_records(dataset: str, split: str, data_dir: str, start: int, stop: int
                  ) -> tuple[list[str], np.ndarray, list[str]]:
  """Hashes records [start, stop) of a split (runs in worker processes too)."""
  source = builders.load_source(dataset, split, data_dir)
  ids, hashes, shas = [], [], []
  for begin in range(start, stop, 64):
    for record in source.__getitems__(list(range(begin, min(stop, begin + 64)))):
      data = bytes(record['image'])
      ids.append(str(record['image_id']))
      shas.append(hashlib.sha256(data).hexdigest())
      try:
        hashes.append(image_hashes(data))
      except Exception as e:  # pylint: disable=broad-except
        # Prepared data decodes by construction; say which record if it does not.
        raise RuntimeError(f'{dataset} {split} record {record["image_id"]}: cannot decode '
                           f'the stored image ({e})') from e
  return ids, np.asarray(hashes, np.uint64).reshape(-1, len(HASH_CROPS)), shas


def _hash_task(args: tuple[str, str, str, int, int]):
  builders.ensure_absl_flags()
  return _hash_records(*args)


def hash_split(dataset: str, split: str, data_dir: str | os.PathLike, *,
               cache_dir: str | os.PathLike | None = None,
               num_workers: int = 1) -> HashedSplit:
  """Hashes every image of a prepared split (reusing ``cache_dir`` when it matches).

  Args:
    dataset: a name :func:`builders.load_source` accepts.
    split: ``'train'``, ``'val'`` or ``'test'``.
    data_dir: the TFDS data directory.
    cache_dir: where hashes are kept between runs (None: not kept).
    num_workers: processes to decode with (used from ``MIN_IMAGES_FOR_POOL`` images on).

  Raises:
    builders.DatasetNotPreparedError: the data set is not prepared in ``data_dir``.
  """
  name = builders.canonical_name(dataset)
  data_dir = os.fspath(data_dir)
  source = builders.load_source(name, split, data_dir)
  n = len(source)
  cache = None
  if cache_dir is not None:
    cache = os.path.join(os.fspath(cache_dir), f'{name.replace("/", "-")}-{split}.npz')
    # The prepared data's own directory (it names the builder version) and the time it was
    # written: data prepared again is hashed again.
    prepared = os.fspath(builders.get_builder(name, data_dir).data_dir)
    info = os.path.join(prepared, 'dataset_info.json')
    key = json.dumps({'version': HASH_VERSION, 'prepared': os.path.abspath(prepared),
                      'written': os.path.getmtime(info) if os.path.exists(info) else None,
                      'split': split, 'records': n})
    if os.path.exists(cache):
      with np.load(cache, allow_pickle=False) as z:
        if str(z['key']) == key:
          logging.info('%s %s: reusing %d hashes from %s', name, split, n, cache)
          return HashedSplit(name, split, list(z['ids']), z['hashes'].astype(np.uint64),
                             list(z['sha256']), data_dir, source)
  t0 = time.perf_counter()
  tasks = [(name, split, data_dir, s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
  results = None
  if num_workers > 1 and n >= MIN_IMAGES_FOR_POOL:
    try:
      with concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        results = list(pool.map(_hash_task, tasks))
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning('The hashing process pool failed (%s); hashing in this process. A '
                      "script must call this under `if __name__ == '__main__':`.", e)
  if results is None:
    results, last = [], t0
    for task in tasks:
      results.append(_hash_records(*task))
      if time.perf_counter() - last > images_lib.PROGRESS_EVERY_S:
        last = time.perf_counter()
        logging.info('hashing %s %s: %d/%d images', name, split, task[4], n)
  ids = [i for r in results for i in r[0]]
  hashes = (np.concatenate([r[1] for r in results]) if results
            else np.zeros((0, len(HASH_CROPS)), np.uint64))
  shas = [s for r in results for s in r[2]]
  dt = time.perf_counter() - t0
  logging.info('%s %s: hashed %d images in %.1f s (%.0f img/s)', name, split, n, dt,
               n / max(dt, 1e-9))
  if cache is not None:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = f'{cache[:-4]}.tmp{os.getpid()}.npz'
    np.savez(tmp, key=np.asarray(key), ids=np.asarray(ids, dtype=str), hashes=hashes,
             sha256=np.asarray(shas, dtype=str))
    os.replace(tmp, cache)
  return HashedSplit(name, split, ids, hashes, shas, data_dir, source)


# ----------------------------------------------------------------------------- pairs

@dataclasses.dataclass
class Pair:
  """Two images compared: a benchmark's test image (``a``) and another image (``b``)."""
  kind: str          # 'pretrain', 'within-near' or 'within-exact'
  benchmark: str
  a_split: str
  a_id: str
  b_dataset: str
  b_split: str
  b_id: str
  hamming: int       # the crop-tolerant pHash distance (0 for byte-identical images)
  residual: float    # the verification residual; -1 when not verified
  exact: bool        # byte-identical stored images
  duplicate: bool    # the verdict
  a_index: int = dataclasses.field(default=-1, repr=False)
  b_index: int = dataclasses.field(default=-1, repr=False)

  def row(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    del d['a_index'], d['b_index']
    d['residual'] = round(d['residual'], 3)
    return d


class _Canvases:
  """Decoded canvases of the images taking part in candidates, each decoded once."""

  def __init__(self):
    self._cache: dict[tuple[int, int], np.ndarray] = {}

  def get(self, hs: HashedSplit, index: int) -> np.ndarray:
    key = (id(hs), int(index))
    if key not in self._cache:
      self._cache[key] = canvas(hs.image_bytes(index)).astype(np.uint8)
    return self._cache[key].astype(np.float32)


def _locate(sets: Sequence[HashedSplit]) -> tuple[np.ndarray, list[tuple[HashedSplit, int]]]:
  """Concatenated hashes of several splits, and (split, index) of each row."""
  rows = [(hs, i) for hs in sets for i in range(len(hs.ids))]
  hashes = (np.concatenate([hs.hashes for hs in sets]) if sets
            else np.zeros((0, len(HASH_CROPS)), np.uint64))
  return hashes, rows


def _near_pairs(kind: str, bench: str, test: HashedSplit, others: Sequence[HashedSplit],
                threshold: int, max_residual: float, canvases: _Canvases
                ) -> tuple[list[Pair], list[Pair], int]:
  """Candidates by hash, verified. Returns (pairs kept or rejected, nearest pairs of every
  test image for the sheet, number of candidates)."""
  ref, where = _locate(others)
  cand, nearest, nearest_d = match(test.hashes, ref, threshold,
                                   desc=f'{bench} test vs {kind}')
  pairs = []
  for qi, rj, d in cand:
    hs, j = where[rj]
    r = residual(canvases.get(test, qi), canvases.get(hs, j))
    exact = test.sha256[qi] == hs.sha256[j]
    label = 'within-exact' if exact and kind == 'within-near' else kind
    pairs.append(Pair(label, bench, test.split, test.ids[qi], hs.short, hs.split, hs.ids[j],
                      int(d), r, exact, exact or r <= max_residual, int(qi), int(j)))
  near = []
  for qi in range(len(test.ids)):
    if nearest[qi] >= 0:
      hs, j = where[nearest[qi]]
      near.append(Pair(kind, bench, test.split, test.ids[qi], hs.short, hs.split, hs.ids[j],
                       int(nearest_d[qi]), -1.0, test.sha256[qi] == hs.sha256[j], False,
                       int(qi), int(j)))
  return pairs, near, len(cand)


def _exact_across_splits(bench: str, splits: Sequence[HashedSplit]) -> list[Pair]:
  """Byte-identical images in different splits of one benchmark."""
  by_digest: dict[str, list[tuple[HashedSplit, int]]] = {}
  for hs in splits:
    for i, digest in enumerate(hs.sha256):
      by_digest.setdefault(digest, []).append((hs, i))
  order = {s: n for n, s in enumerate(('test', 'val', 'train'))}
  pairs = []
  for members in by_digest.values():
    for (ha, i), (hb, j) in itertools.combinations(
        sorted(members, key=lambda m: (order.get(m[0].split, 9), m[0].ids[m[1]])), 2):
      if ha.split != hb.split:
        pairs.append(Pair('within-exact', bench, ha.split, ha.ids[i], hb.short, hb.split,
                          hb.ids[j], 0, 0.0, True, True, i, j))
  return pairs


# ----------------------------------------------------------------------------- outputs

def _font(size: int = 11):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:   # Pillow without scalable default font
    return ImageFont.load_default()


def _sheet(pairs: Sequence[Pair], sets: dict[tuple[str, str], HashedSplit], path: str,
           threshold: int, max_residual: float, height: int = 96) -> None:
  """One row per pair: the test image, the other image, and what was measured."""
  font = _font()
  text_w, pad = 520, 6
  row_h = height + 2 * pad
  sheet = Image.new('RGB', (2 * (int(height * 1.5) + pad) + text_w + pad,
                            max(1, len(pairs)) * row_h + 28), 'white')
  draw = ImageDraw.Draw(sheet)
  draw.text((pad, 6), f'closest pairs: duplicate = hash distance <= {threshold} bits and '
                      f'residual <= {max_residual:g} (or byte-identical)', fill='black',
            font=font)
  if not pairs:
    draw.text((pad, 30), 'no pairs: a data set was empty', fill='black', font=font)
  for n, p in enumerate(pairs):
    y = 28 + n * row_h + pad
    x = pad
    for dataset, split, index in ((p.benchmark, p.a_split, p.a_index),
                                  (p.b_dataset, p.b_split, p.b_index)):
      hs = sets[(dataset, split)]
      with Image.open(io.BytesIO(hs.image_bytes(index))) as im:
        # Same box for both, up or down, so that a resized copy is seen at the same size.
        im = ImageOps.contain(im.convert('RGB'), (int(height * 1.5), height))
        sheet.paste(im, (x, y))
      x += int(height * 1.5) + pad
    verdict = ('EXACT DUPLICATE' if p.exact else 'NEAR-DUPLICATE' if p.duplicate
               else 'distinct')
    lines = [f'{verdict}  ({p.kind})',
             f'{p.benchmark} {p.a_split}: {p.a_id}',
             f'{p.b_dataset} {p.b_split}: {p.b_id}',
             f'hash distance {p.hamming} bits, residual '
             + (f'{p.residual:.1f}' if p.residual >= 0 else 'n/a')]
    for k, line in enumerate(lines):
      draw.text((x, y + 4 + 16 * k), line, fill='darkred' if p.duplicate and k == 0
                else 'black', font=font)
  sheet.save(path)


def _write_csv(pairs: Sequence[Pair], path: str) -> None:
  names = [f.name for f in dataclasses.fields(Pair) if f.name not in ('a_index', 'b_index')]
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=names)
    w.writeheader()
    for p in pairs:
      w.writerow(p.row())


# ----------------------------------------------------------------------------- driver

def find_leakage(pretrain: str, benchmarks: Sequence[str], data_dir: str | os.PathLike,
                 out: str | os.PathLike, *, threshold: int = DEFAULT_THRESHOLD,
                 max_residual: float = DEFAULT_MAX_RESIDUAL,
                 pretrain_splits: Sequence[str] = ('train', 'val'), within: bool = True,
                 num_workers: int | None = None, sheet_pairs: int = 24) -> dict[str, Any]:
  """Finds near-duplicates between ``pretrain`` and each benchmark's test split.

  Args:
    pretrain: the pre-training data set (``'emoset'``), prepared in ``data_dir``.
    benchmarks: benchmark names (``'emo8'``, ``'fi'``, ...), prepared in ``data_dir``.
    data_dir: the TFDS data directory.
    out: the report directory (created): ``leakage.json``, ``pairs.csv``,
      ``closest_pairs.png`` and ``hashes/``.
    threshold: largest pHash distance (bits of 64) of a candidate pair.
    max_residual: largest verification residual (mean absolute RGB difference, 0–255) of a
      near-duplicate.
    pretrain_splits: the splits of ``pretrain`` to compare with (EmoSet: train and val, what
      pre-training reads).
    within: also check each benchmark's own splits (exact duplicates across splits; test
      near-duplicates in train/val).
    num_workers: processes for hashing (default: CPUs, at most 16).
    sheet_pairs: how many of the closest pairs the PNG sheet shows.

  Returns:
    The report written to ``leakage.json``: ``settings``, ``pretrain`` (image counts),
    ``benchmarks`` (per data set: ``test_images``, ``candidates``, ``near_duplicates``
    (pairs), ``test_images_with_duplicates``, ``exact_duplicates``,
    ``closest_rejected_residual`` (the smallest residual of a candidate that was not a
    duplicate: the margin to ``max_residual``) and ``within`` counts), ``pairs`` (every
    duplicate pair, as in ``pairs.csv``) and ``files``.

  Raises:
    LeakageError: a bad threshold or name.
    builders.DatasetNotPreparedError: a data set is not prepared in ``data_dir``.
  """
  if not 0 <= int(threshold) <= 64:
    raise LeakageError(f'--threshold must be 0..64 bits, got {threshold}')
  if not max_residual >= 0:
    raise LeakageError(f'--max_residual must be >= 0, got {max_residual}')
  names = []
  for b in benchmarks:
    try:
      names.append(builders.canonical_name(b))
    except ValueError as e:
      raise LeakageError(str(e)) from None
  if not names:
    raise LeakageError('--benchmarks names no data set (e.g. --benchmarks=emo8,fi)')
  try:
    pretrain_name = builders.canonical_name(pretrain)
  except ValueError as e:
    raise LeakageError(str(e)) from None
  bad_splits = [s for s in pretrain_splits if s not in SPLITS]
  if bad_splits or not pretrain_splits:
    raise LeakageError(f'--pretrain_splits must name some of {list(SPLITS)}, got '
                       f'{list(pretrain_splits)}')
  workers = images_lib.default_num_workers() if num_workers is None else int(num_workers)
  out = os.fspath(out)
  os.makedirs(out, exist_ok=True)
  cache = os.path.join(out, 'hashes')
  t0 = time.perf_counter()

  def hashed(name: str, split: str) -> HashedSplit:
    return hash_split(name, split, data_dir, cache_dir=cache, num_workers=workers)

  pre = [hashed(pretrain_name, s) for s in pretrain_splits]
  sets = {(hs.short, hs.split): hs for hs in pre}
  canvases = _Canvases()
  report_b: dict[str, Any] = {}
  dup_pairs: list[Pair] = []
  shown: list[Pair] = []
  for name in names:
    short = name.split('/', 1)[-1]
    own = {s: hashed(name, s) for s in (SPLITS if within else ('test',))}
    sets.update({(short, s): hs for s, hs in own.items()})
    test = own['test']
    pairs, near, n_cand = _near_pairs('pretrain', short, test, pre, threshold, max_residual,
                                      canvases)
    kept = [p for p in pairs if p.duplicate]
    rejected = [p.residual for p in pairs if not p.duplicate]
    entry: dict[str, Any] = {
        'test_images': len(test.ids),
        'candidates': n_cand,
        'near_duplicates': len(kept),
        'test_images_with_duplicates': len({p.a_id for p in kept}),
        'exact_duplicates': sum(p.exact for p in kept),
        # How close the verification came to pairing distinct images (the margin).
        'closest_rejected_residual': round(min(rejected), 2) if rejected else None,
    }
    shown += pairs + near
    dup_pairs += kept
    if within:
      exact = _exact_across_splits(short, list(own.values()))
      w_pairs, w_near, w_cand = _near_pairs('within-near', short, test,
                                            [own['train'], own['val']], threshold,
                                            max_residual, canvases)
      # Byte-identical pairs are listed once, as within-exact.
      w_kept = [p for p in w_pairs if p.duplicate and not p.exact]
      entry['within'] = {
          'exact_across_splits': len(exact),
          'candidates': w_cand,
          'near_test_vs_trainval': len(w_kept),
          'test_images_with_duplicates': len({p.a_id for p in w_kept}),
      }
      dup_pairs += exact + w_kept
      shown += w_pairs + w_near
    report_b[short] = entry
    logging.info('%s: %s', short, entry)

  # The sheet: the closest pairs, duplicates first; verify the nearest ones not yet seen.
  seen, closest = set(), []
  for p in sorted(shown, key=lambda p: (not p.duplicate, p.hamming, p.residual)):
    key = (p.kind, p.benchmark, p.a_split, p.a_id, p.b_dataset, p.b_split, p.b_id)
    if key in seen:
      continue
    seen.add(key)
    closest.append(p)
    if len(closest) == sheet_pairs:
      break
  for p in closest:
    if p.residual < 0:
      p.residual = residual(canvases.get(sets[(p.benchmark, p.a_split)], p.a_index),
                            canvases.get(sets[(p.b_dataset, p.b_split)], p.b_index))
  files = {'report': os.path.join(out, 'leakage.json'), 'pairs': os.path.join(out, 'pairs.csv'),
           'sheet': os.path.join(out, 'closest_pairs.png'), 'hashes': cache}
  _sheet(closest, sets, files['sheet'], threshold, max_residual)
  dup_pairs.sort(key=lambda p: (p.benchmark, p.kind, p.a_id, p.hamming, p.b_id))
  _write_csv(dup_pairs, files['pairs'])
  report = {
      'settings': {
          'pretrain': pretrain_name, 'pretrain_splits': list(pretrain_splits),
          'benchmarks': names, 'data_dir': os.path.abspath(os.fspath(data_dir)),
          'threshold': int(threshold), 'max_residual': float(max_residual),
          'hash': HASH_VERSION, 'hash_crops': [list(c) for c in HASH_CROPS],
          'verify_cuts': list(VERIFY_CUTS), 'within': within,
      },
      'pretrain': {hs.split: len(hs.ids) for hs in pre},
      'benchmarks': report_b,
      'seconds': round(time.perf_counter() - t0, 1),
      'pairs': [p.row() for p in dup_pairs],
      'files': files,
  }
  with open(files['report'], 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1, ensure_ascii=False)
  return report


def summary_lines(report: dict[str, Any]) -> list[str]:
  """The report as a small table, for the terminal."""
  s = report['settings']
  pre = ', '.join(f'{k} {v}' for k, v in report['pretrain'].items())
  lines = [(f'pre-training data {s["pretrain"]} ({pre}); threshold {s["threshold"]} bits, '
            f'max residual {s["max_residual"]:g}'),
           (f'{"benchmark":12s} {"test":>7s} {"cand.":>7s} {"pairs":>6s} {"images":>6s} '
            f'{"exact":>6s} | {"within: exact":>13s} {"near":>5s}')]
  for name, e in report['benchmarks'].items():
    w = e.get('within', {})
    lines.append(f'{name:12s} {e["test_images"]:7d} {e["candidates"]:7d} '
                 f'{e["near_duplicates"]:6d} {e["test_images_with_duplicates"]:6d} '
                 f'{e["exact_duplicates"]:6d} | {w.get("exact_across_splits", "-"):>13} '
                 f'{w.get("near_test_vs_trainval", "-"):>5}')
  lines.append('(pairs: near-duplicate pairs with the pre-training data; images: test images '
               'in such pairs; within: byte-identical across splits, test near-duplicates '
               'in train/val)')
  for k, v in report['files'].items():
    lines.append(f'{k}: {v}')
  return lines


def _user_error(message: str) -> NoReturn:
  """Ends the program with one ``error: ...`` line on stderr and the user-error exit code."""
  errors.fail(message)


def main(argv: Sequence[str]) -> None:
  """The CLI (flags are defined under ``__main__``)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  builders.ensure_absl_flags()
  try:
    report = find_leakage(
        FLAGS.pretrain, [b for b in FLAGS.benchmarks.split(',') if b.strip()],
        FLAGS.data_dir, FLAGS.out, threshold=FLAGS.threshold,
        max_residual=FLAGS.max_residual,
        pretrain_splits=[s for s in FLAGS.pretrain_splits.split(',') if s.strip()],
        within=FLAGS.within, num_workers=FLAGS.num_workers, sheet_pairs=FLAGS.sheet_pairs)
  except (LeakageError, builders.DatasetNotPreparedError) as e:
    _user_error(str(e))
  print('\n'.join(summary_lines(report)))


def _define_flags() -> None:
  # Defined only when run as a program, so importing the library adds no flags.
  flags.DEFINE_string('pretrain', 'emoset', 'The pre-training data set (prepared).')
  flags.DEFINE_string('pretrain_splits', 'train,val', 'Its splits to compare with.')
  flags.DEFINE_string('benchmarks', None, 'Comma-separated benchmarks, e.g. emo8,fi,emotion6 '
                      '(each prepared in --data_dir).', required=True)
  flags.DEFINE_string('data_dir', None, 'The TFDS data directory tools.prepare wrote to.',
                      required=True)
  flags.DEFINE_string('out', None, 'Report directory (created).', required=True)
  flags.DEFINE_integer('threshold', DEFAULT_THRESHOLD,
                       'Largest pHash Hamming distance (of 64 bits) of a candidate pair.')
  flags.DEFINE_float('max_residual', DEFAULT_MAX_RESIDUAL,
                     'Largest mean absolute RGB difference (0-255) of 16x16 thumbnails, '
                     'after the best slight crop, of a near-duplicate.')
  flags.DEFINE_bool('within', True, 'Also check each benchmark\'s own splits against each '
                    'other.')
  flags.DEFINE_integer('num_workers', None, 'Processes for hashing (default: CPUs, <= 16).')
  flags.DEFINE_integer('sheet_pairs', 24, 'Pairs shown in closest_pairs.png.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
