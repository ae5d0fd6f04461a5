r"""Seeded, stratified train/val/test splits of a raw class-folder data set, with a manifest.

  python -m uniemox_jax.tools.split --dataset=fi --raw_dir=/data/raw/FI --out=/data/benchmarks \
      [--seed=0] [--mode=link|copy]

reads ``raw_dir/<class>/<images>`` (class folders matched ignoring case; images may sit in
sub-folders of a class folder) and writes the tree the ``emotion_folder`` builder reads,
``<out>/<Folder>/{train,val,test}/<class>/<image>`` (symlinks to the raw files, or copies),
with ``<out>/<Folder>/split_manifest.json`` in it: the ids of every split, the seed, the
ratios and a SHA-256 hash of the id lists. Then prepare it as usual::

  python -m uniemox_jax.tools.prepare --dataset=fi --manual_dir=/data/benchmarks \
      --data_dir=/data/tfds

Ratios are the authors' (SPEC §5): emo8 8:1:1, FI 80/5/15, Emotion6, UnBiasedEmo and HECO
70/10/20, each per class. CAER-S ships an official split: ``raw_dir`` then holds ``train/``
and ``test/`` (each ``<class>/<images>``); the official train is kept whole and the official
test is split per class 66/34 into test/val.

The same seed gives the same split on any machine: within each class the file names are
normalised (Unicode NFC), sorted by code point and ordered by raw 64-bit draws of PCG64
seeded with ``SeedSequence([seed, crc32(dataset), crc32(class)])``; counts are the ratios'
largest-remainder rounding per class (every split gets at least one image of a class that
has at least three). Neither the filesystem's listing order nor the NumPy version matters
(``random_raw`` is PCG64's raw output, which NumPy keeps stable).

An id is the path of the image below the data set folder, ``<split>/<class>/<file>``,
exactly the ``image_id`` of the prepared TFDS records, so the hash of a prepared data set's
ids (``manifest_hash({s: load_source(name, s, data_dir).example_ids for s in SPLITS})``)
equals the manifest's hash when no bad image was left out. Training code records it with
:func:`dataset_hash` (or :func:`read_manifest` ``['hash']``).
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from absl import app
from absl import flags
import numpy as np

from uniemox_jax import errors
from uniemox_jax.data.classes import BENCHMARKS, SPLITS, Benchmark
from uniemox_jax.data.splits import manifest_hash, nfc

MANIFEST_NAME = 'split_manifest.json'
MANIFEST_FORMAT = 'uniemox-split/1'
MODES = ('link', 'copy')
# Per data set: the fraction of each class in (train, val, test) (SPEC §5).
RATIOS: dict[str, tuple[float, float, float]] = {
    'emo8': (0.8, 0.1, 0.1),
    'fi': (0.80, 0.05, 0.15),
    'emotion6': (0.7, 0.1, 0.2),
    'unbiasedemo': (0.7, 0.1, 0.2),
    'heco': (0.7, 0.1, 0.2),
}
# CAER-S: the official train is kept; the official test is split per class into these
# fractions of (val, test).
CAER_S_TEST_SPLIT: tuple[float, float] = (0.34, 0.66)
OFFICIAL_SPLITS = ('train', 'test')      # what a CAER-S raw directory holds
IMAGE_EXTENSIONS = frozenset(('.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.gif',
                              '.webp', '.tif', '.tiff', '.ppm', '.pgm'))


FLAGS = flags.FLAGS


class SplitError(ValueError):
  """The raw data, the arguments or an existing output are wrong (the message says how)."""


def _is_hidden(name: str) -> bool:
  # .DS_Store, Thumbs.db and macOS '._x.jpg' resource forks come with many archives.
  return name.startswith('.') or name in ('Thumbs.db', 'desktop.ini')


def get_dataset(name: str) -> Benchmark:
  """The benchmark named ``name`` (``'fi'``; ``'emotion_folder/fi'`` works too)."""
  key = name.strip().lower()
  key = key.split('/', 1)[1] if key.startswith('emotion_folder/') else key
  if key not in BENCHMARKS:
    raise SplitError(f'unknown data set {name!r} for --dataset; expected one of '
                     f'{", ".join(BENCHMARKS)}')
  return BENCHMARKS[key]


def ratio_description(dataset: str) -> dict[str, Any]:
  """The split rule of a data set, as written into the manifest."""
  bench = get_dataset(dataset)
  if bench.name == 'caer_s':
    val, test = CAER_S_TEST_SPLIT
    return {'train': 'official train', 'val': f'{val} of official test',
            'test': f'{test} of official test'}
  return dict(zip(SPLITS, RATIOS[bench.name]))


def class_counts(n: int, fractions: Sequence[float]) -> list[int]:
  """How many of ``n`` images of a class each split gets.

  Largest-remainder rounding of ``n * fractions`` (ties go to the earlier split); then,
  when ``n`` is at least the number of splits with a positive fraction, each of those gets
  at least one image, taken from the largest split.

  Args:
    n: images in the class.
    fractions: one fraction per split, summing to 1.

  Returns:
    Counts per split, summing to ``n``.
  """
  exact = [n * f for f in fractions]
  counts = [int(np.floor(x + 1e-9)) for x in exact]
  left = n - sum(counts)
  # Rounded so that float noise (2 * 0.7 = 1.3999...) does not decide ties.
  order = sorted(range(len(exact)), key=lambda i: (-round(exact[i] - counts[i], 9), i))
  for i in order[:left]:
    counts[i] += 1
  wanted = [i for i, f in enumerate(fractions) if f > 0]
  if n >= len(wanted):
    for i in wanted:
      if counts[i] == 0:
        donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
        counts[donor] -= 1
        counts[i] += 1
  return counts


def shuffled(names: Sequence[str], seed: int, *key: str) -> list[str]:
  """``names`` sorted, then in the seeded order of PCG64 draws keyed by ``seed`` and ``key``.

  Only PCG64's raw 64-bit output and ``SeedSequence`` are used (both fixed by NumPy's
  stability policy), so the order is the same on every machine and NumPy version.
  """
  names = sorted(names)
  entropy = [int(seed)] + [zlib.crc32(k.encode('utf-8')) for k in key]
  draws = np.random.PCG64(np.random.SeedSequence(entropy)).random_raw(len(names))
  order = np.argsort(np.asarray(draws, dtype=np.uint64), kind='stable')
  return [names[i] for i in order]


def _class_dirs(directory: str, bench: Benchmark) -> dict[str, str]:
  """Class name → its folder in ``directory`` (matched ignoring case); raises SplitError."""
  if not os.path.isdir(directory):
    raise SplitError(f'{directory}: raw directory not found (expected class folders '
                     f'{", ".join(bench.classes)})')
  folders = sorted(e.name for e in os.scandir(directory)
                   if e.is_dir() and not _is_hidden(e.name))
  by_class: dict[str, list[str]] = {}
  for f in folders:
    by_class.setdefault(nfc(f).lower(), []).append(f)
  missing = [c for c in bench.classes if c not in by_class]
  extra = [f for f in folders if nfc(f).lower() not in bench.classes]
  clashes = [f for c in bench.classes for f in by_class.get(c, ()) if len(by_class[c]) > 1]
  if missing or extra or clashes:
    what = '; '.join(p for p in (
        f'missing: {", ".join(missing)}' if missing else '',
        f'unexpected: {", ".join(extra)}' if extra else '',
        f'differ only in case: {", ".join(clashes)}' if clashes else '') if p)
    raise SplitError(f'{directory}: class folders [{", ".join(folders)}] do not match '
                     f'{bench.name}\'s classes [{", ".join(bench.classes)}] ({what})')
  return {c: os.path.join(directory, by_class[c][0]) for c in bench.classes}


def _list_class(class_dir: str) -> tuple[dict[str, str], list[str]]:
  """Images below a class folder: {NFC relative path: path on disk}, and ignored files."""
  files: dict[str, str] = {}
  ignored: list[str] = []
  for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
    for fname in filenames:
      if _is_hidden(fname):
        continue
      path = os.path.join(dirpath, fname)
      rel = nfc(os.path.relpath(path, class_dir).replace(os.sep, '/'))
      if os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
        files[rel] = path
      else:
        ignored.append(path)
  return files, sorted(ignored)


def _read_raw(bench: Benchmark, raw_dir: str) -> tuple[dict[str, dict[str, dict[str, str]]],
                                                        list[str]]:
  """{group: {class: {rel: path}}} with group '' (or 'train'/'test' for CAER-S)."""
  if not os.path.isdir(raw_dir):
    layout = ('train/<class>/<images> and test/<class>/<images>' if bench.name == 'caer_s'
              else '<class>/<images>')
    raise SplitError(f'{raw_dir}: raw directory not found (expected {layout} with the '
                     f'classes {", ".join(bench.classes)})')
  if bench.name == 'caer_s':
    subdirs = {e.name.lower(): e.path for e in os.scandir(raw_dir) if e.is_dir()}
    missing = [s for s in OFFICIAL_SPLITS if s not in subdirs]
    if missing:
      raise SplitError(f'{raw_dir}: CAER-S needs its official split folders train/ and '
                       f'test/ (each <class>/<images>); missing {"/, ".join(missing)}/')
    groups = {s: subdirs[s] for s in OFFICIAL_SPLITS}
  else:
    groups = {'': raw_dir}
  out: dict[str, dict[str, dict[str, str]]] = {}
  ignored: list[str] = []
  for group, directory in groups.items():
    out[group] = {}
    for cls, class_dir in _class_dirs(directory, bench).items():
      files, skipped = _list_class(class_dir)
      ignored += skipped
      if not files:
        raise SplitError(f'{class_dir}: no image files in class folder {cls!r} (expected '
                         f'at least one {"/".join(sorted(IMAGE_EXTENSIONS))} file)')
      out[group][cls] = files
  return out, ignored


def make_split(dataset: str, raw_dir: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
  """Splits a raw class-folder data set; writes nothing.

  Args:
    dataset: a benchmark name (``'emo8'``, ``'fi'``, ``'emotion6'``, ``'unbiasedemo'``,
      ``'caer_s'``, ``'heco'``).
    raw_dir: ``raw_dir/<class>/<images>`` (CAER-S: ``raw_dir/{train,test}/<class>/...``).
    seed: any integer >= 0.

  Returns:
    The manifest: ``dataset``, ``folder``, ``classes``, ``seed``, ``ratios``, ``counts``
    (``{split: {class: n}}``), ``totals``, ``hash``, ``splits`` (``{split: [id]}``, ids
    ``<split>/<class>/<file>`` sorted), ``sources`` (``{split: [raw path relative to
    raw_dir]}``, parallel to ``splits``), ``ignored`` (non-image files, relative paths) and
    ``raw_dir``.

  Raises:
    SplitError: unknown data set, missing raw directory, class folders that do not match
      the data set's classes, an empty class folder, or a negative seed.
  """
  bench = get_dataset(dataset)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise SplitError(f'seed must be an integer >= 0, got {seed!r}')
  raw_dir = os.path.abspath(os.path.expanduser(os.fspath(raw_dir)))
  raw, ignored = _read_raw(bench, raw_dir)
  chosen: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}   # (id, raw path)
  for cls in bench.classes:
    if bench.name == 'caer_s':
      for rel in sorted(raw['train'][cls]):
        chosen['train'].append((f'train/{cls}/{rel}', raw['train'][cls][rel]))
      files = raw['test'][cls]
      order = shuffled(list(files), seed, bench.name, 'test', cls)
      n_val, n_test = class_counts(len(order), CAER_S_TEST_SPLIT)
      parts = {'val': order[:n_val], 'test': order[n_val:n_val + n_test]}
    else:
      files = raw[''][cls]
      order = shuffled(list(files), seed, bench.name, cls)
      n_train, n_val, _ = class_counts(len(order), RATIOS[bench.name])
      parts = {'train': order[:n_train], 'val': order[n_train:n_train + n_val],
               'test': order[n_train + n_val:]}
    for split, rels in parts.items():
      chosen[split] += [(f'{split}/{cls}/{rel}', files[rel]) for rel in rels]
  splits, sources, counts = {}, {}, {}
  for split in SPLITS:
    pairs = sorted(chosen[split])
    splits[split] = [i for i, _ in pairs]
    sources[split] = [os.path.relpath(p, raw_dir).replace(os.sep, '/') for _, p in pairs]
    counts[split] = {c: sum(i.split('/', 2)[1] == c for i in splits[split])
                     for c in bench.classes}
  return {
      'format': MANIFEST_FORMAT,
      'dataset': bench.name,
      'folder': bench.folder,
      'classes': list(bench.classes),
      'seed': int(seed),
      'ratios': ratio_description(bench.name),
      'rule': ('per class: names NFC-normalised and sorted, ordered by PCG64 random_raw '
               'draws from SeedSequence([seed, crc32(dataset), crc32(class)]) (CAER-S test: '
               '[seed, crc32(dataset), crc32("test"), crc32(class)]), largest-remainder '
               'counts, at least one image per split for classes of 3 or more'),
      'counts': counts,
      'totals': {s: len(splits[s]) for s in SPLITS},
      'hash': manifest_hash(splits),
      'raw_dir': raw_dir,
      'ignored': [os.path.relpath(p, raw_dir).replace(os.sep, '/') for p in ignored],
      'splits': splits,
      'sources': sources,
  }


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a split tree (``<out>/<Folder>``, or the manifest file itself).

  Checks that its ``hash`` matches its id lists (an edited manifest fails).

  Raises:
    FileNotFoundError: no manifest there (the tree was not made by this tool).
    SplitError: the manifest is not valid JSON, or its hash does not match its ids.
  """
  path = os.fspath(dataset_dir)
  if os.path.isdir(path):
    path = os.path.join(path, MANIFEST_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no split manifest (made by python -m '
                            'uniemox_jax.tools.split)')
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
    splits = manifest['splits']
    recorded = manifest['hash']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise SplitError(f'{path}: not a split manifest ({type(e).__name__}: {e})') from None
  actual = manifest_hash(splits)
  if actual != recorded:
    raise SplitError(f'{path}: recorded hash {recorded[:12]}… does not match its id lists '
                     f'({actual[:12]}…); the manifest was edited, split the data again')
  return manifest


def dataset_hash(dataset_dir: str | os.PathLike) -> str | None:
  """The split hash of a data set folder for ``run_info.json``; None without a manifest."""
  try:
    return read_manifest(dataset_dir)['hash']
  except FileNotFoundError:
    return None


def write_split(manifest: Mapping[str, Any], out: str | os.PathLike,
                mode: str = 'link') -> str:
  """Writes ``<out>/<Folder>/{train,val,test}/<class>/...`` and the manifest.

  The tree is built in a hidden temporary folder next to it and renamed when complete, so
  an interrupted run leaves nothing half-written. An existing tree with the same split
  (same hash) is kept as it is.

  Args:
    manifest: from :func:`make_split`.
    out: the benchmarks root to write into (created).
    mode: ``'link'`` (absolute symlinks to the raw files) or ``'copy'``.

  Returns:
    The data set folder written (or kept).

  Raises:
    SplitError: a bad mode, or the data set folder exists and holds something else.
  """
  if mode not in MODES:
    raise SplitError(f'unknown mode {mode!r} for --mode; expected link or copy')
  out = os.path.abspath(os.path.expanduser(os.fspath(out)))
  final = os.path.join(out, manifest['folder'])
  if os.path.lexists(final):
    try:
      existing = read_manifest(final)
    except (FileNotFoundError, SplitError):
      existing = None
    if existing is not None and existing['hash'] == manifest['hash']:
      return final
    held = (f'a different split (seed {existing.get("seed")}, hash {existing["hash"][:12]}…)'
            if existing else 'files that are not a split made by this tool')
    raise SplitError(f'{final}: already exists and holds {held}; remove it or choose '
                     'another --out')
  os.makedirs(out, exist_ok=True)
  tmp = os.path.join(out, f'.{manifest["folder"]}.partial-{os.getpid()}')
  if os.path.lexists(tmp):
    shutil.rmtree(tmp)
  try:
    for split in SPLITS:
      for cls in manifest['classes']:
        os.makedirs(os.path.join(tmp, split, cls), exist_ok=True)
      for image_id, rel in zip(manifest['splits'][split], manifest['sources'][split]):
        src = os.path.join(manifest['raw_dir'], *rel.split('/'))
        dst = os.path.join(tmp, *image_id.split('/'))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if mode == 'link':
          os.symlink(src, dst)
        else:
          shutil.copy2(src, dst)
    written = dict(manifest, mode=mode)
    with open(os.path.join(tmp, MANIFEST_NAME), 'w', encoding='utf-8') as f:
      json.dump(written, f, ensure_ascii=False, indent=1)
    os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def split_dataset(dataset: str, raw_dir: str | os.PathLike, out: str | os.PathLike, *,
                  seed: int = 0, mode: str = 'link') -> dict[str, Any]:
  """:func:`make_split` then :func:`write_split`; returns the manifest with ``dataset_dir``
  (the folder written) and ``reused`` (whether an identical split was already there)."""
  if mode not in MODES:
    raise SplitError(f'unknown mode {mode!r} for --mode; expected link or copy')
  manifest = make_split(dataset, raw_dir, seed)
  existed = os.path.lexists(os.path.join(os.path.abspath(os.fspath(out)), manifest['folder']))
  dataset_dir = write_split(manifest, out, mode)
  return dict(manifest, dataset_dir=dataset_dir, reused=existed, mode=mode)


def _user_error(message: str) -> NoReturn:
  """Ends the program with one ``error: ...`` line on stderr and the user-error exit code."""
  errors.fail(message)


def main(argv: Sequence[str]) -> None:
  """The CLI (flags are defined under ``__main__``)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = FLAGS
  try:
    m = split_dataset(f.dataset, f.raw_dir, f.out, seed=f.seed, mode=f.mode)
  except SplitError as e:
    # The user's data or arguments are wrong: one line, no traceback.
    _user_error(str(e))
  except OSError as e:   # unwritable --out, a full disk, a raw file removed meanwhile
    _user_error(f'{e.filename or f.out}: {e.strerror or e}')
  verb = 'kept (same split already there)' if m['reused'] else f'written ({m["mode"]})'
  print(f'{m["dataset"]}: {verb} -> {m["dataset_dir"]}')
  print(f'  seed {m["seed"]}, ratios {m["ratios"]}')
  for split in SPLITS:
    print(f'  {split:5s} {m["totals"][split]:7d} images')
  if m['ignored']:
    print(f'  ignored {len(m["ignored"])} non-image file(s), e.g. {m["ignored"][0]}')
  print(f'  hash {m["hash"]}')
  print(f'  manifest {os.path.join(m["dataset_dir"], MANIFEST_NAME)}')


def _define_flags() -> None:
  # Defined only when run as a program: importing this module for `read_manifest` must not
  # add flags that could collide with a training script's.
  flags.DEFINE_string('dataset', None, f'One of {", ".join(BENCHMARKS)}.', required=True)
  flags.DEFINE_string('raw_dir', None,
                      'The raw data: raw_dir/<class>/<images> (CAER-S: raw_dir/train/<class>/ '
                      'and raw_dir/test/<class>/).', required=True)
  flags.DEFINE_string('out', None, 'Benchmarks root to write <out>/<Folder>/{train,val,test}/ '
                      'into (the --manual_dir of tools.prepare).', required=True)
  flags.DEFINE_integer('seed', 0, 'Split seed (>= 0).')
  flags.DEFINE_enum('mode', 'link', list(MODES), 'Symlink the raw files, or copy them.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
