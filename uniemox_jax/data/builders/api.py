"""Preparing and reading our data sets by name: ``prepare`` once, ``load_source`` for Grain."""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from uniemox_jax.data.builders import base
from uniemox_jax.data.builders.emoset import Emoset
from uniemox_jax.data.builders.emotion_folder import EmotionFolder
from uniemox_jax.data.classes import BENCHMARKS

# Every name ``get_builder`` accepts; a benchmark's short name means its emotion_folder config.
DATASETS: tuple[str, ...] = ('emoset',) + tuple(f'emotion_folder/{n}' for n in BENCHMARKS)
_OPTIONS = {
    'emoset': ('person_boxes', 'min_person_score', 'skip_bad_images', 'num_workers'),
    'emotion_folder': ('skip_bad_images', 'num_workers'),
}
PREPARE_MODULE = 'uniemox_jax.tools.prepare'


class DatasetNotPreparedError(FileNotFoundError):
  """``load_source`` on a data set that was never prepared in that ``data_dir``."""


def ensure_absl_flags() -> None:
  """Lets absl logging work in library entry points and Grain workers (not absl apps)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def canonical_name(dataset: str) -> str:
  """``'emoset'``, ``'emotion_folder/emo8'``; ``'emo8'`` is accepted for the latter."""
  name = dataset.strip().replace(':', '/')
  if name in BENCHMARKS:
    name = f'emotion_folder/{name}'
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; known: {list(DATASETS)} (a benchmark '
                     f'may also be named alone, e.g. emo8).')
  return name


def get_builder(dataset: str, data_dir: str | os.PathLike, **options: Any
                ) -> tfds.core.GeneratorBasedBuilder:
  """The builder of ``dataset`` (a name from :data:`DATASETS`) over ``data_dir``.

  Options: ``manual_dir`` and those of the builder (``person_boxes``, ``min_person_score``
  for EmoSet; ``skip_bad_images`` and ``num_workers`` for all). Unknown options fail.
  """
  name = canonical_name(dataset)
  family, _, config = name.partition('/')
  allowed = ('manual_dir',) + _OPTIONS[family]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise TypeError(f'{name}: unknown option(s) {unknown}; allowed: {list(allowed)}.')
  options = {k: v for k, v in options.items() if v is not None}
  data_dir = os.fspath(os.path.expanduser(os.fspath(data_dir)))
  if family == 'emoset':
    return Emoset(data_dir=data_dir, **options)
  return EmotionFolder(data_dir=data_dir, config=config, **options)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether the builder's data is there (TFDS's own check logs a warning when it is not)."""
  # TFDS writes into a temporary directory and renames it when done, so the final directory
  # with its dataset_info.json only exists for complete data.
  return (builder.data_path / 'dataset_info.json').exists()


def prepare_command(dataset: str, data_dir: str | os.PathLike,
                    manual_dir: str | os.PathLike | None = None) -> str:
  """The shell command that prepares ``dataset`` into ``data_dir``."""
  name = canonical_name(dataset)
  manual = (os.fspath(manual_dir) if manual_dir else
            '<EmoSet-118K directory>' if name == 'emoset' else '<benchmarks directory>')
  return (f'python -m {PREPARE_MODULE} --dataset={name} '
          f'--manual_dir={shlex.quote(manual)} --data_dir={shlex.quote(os.fspath(data_dir))}')


def prepare(dataset: str, manual_dir: str | os.PathLike | None,
            data_dir: str | os.PathLike, **options: Any) -> tfds.core.GeneratorBasedBuilder:
  """Prepares ``dataset`` from ``manual_dir`` into ``data_dir`` (array_record) once.

  A second call with the data already there reuses it: nothing is read or rewritten (a
  warning says so if the options differ from those the data was prepared with).

  Args:
    dataset: a name from :data:`DATASETS` (``'emoset'``, ``'emotion_folder/emo8'``, ...).
    manual_dir: the directory holding the original data (see the builder's
      ``MANUAL_DOWNLOAD_INSTRUCTIONS``).
    data_dir: the TFDS data directory to write to.
    **options: builder options, e.g. ``person_boxes='boxes.json'``,
      ``skip_bad_images=True``, ``min_person_score=0.8``, ``num_workers=8``.

  Returns:
    The builder, prepared (``builder.data_dir`` is where the data is).
  """
  ensure_absl_flags()
  builder = get_builder(dataset, data_dir, manual_dir=manual_dir, **options)
  if is_prepared(builder):
    _warn_if_options_differ(builder, manual_dir, options)
  else:
    builder.validate_manual_dir()    # a wrong directory fails here, before TFDS starts
  try:
    builder.download_and_prepare(
        file_format=base.ARRAY_RECORD,
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None))
  except FileExistsError:
    # Several processes (hosts of one job) prepared the same data at once and another one
    # finished first: its data is complete, so use it.
    if not is_prepared(builder):
      raise
    logging.info('Another process finished preparing %s first; using its data.',
                 builder.info.full_name)
    builder = get_builder(dataset, data_dir, manual_dir=manual_dir, **options)
  return builder


def _warn_if_options_differ(builder, manual_dir, options) -> None:
  recorded = dict(builder.info.metadata.get('prepare', {}))
  asked = {'manual_dir': os.fspath(os.path.expanduser(os.fspath(manual_dir)))
           if manual_dir else None, **options}
  differ = {}
  for k, v in asked.items():
    if k not in recorded or v is None:
      continue
    v = os.fspath(v) if isinstance(v, os.PathLike) else v
    if recorded[k] != v:
      differ[k] = (recorded[k], v)
  if differ:
    logging.warning(
        'Reusing %s prepared in %s, but these options differ from the ones it was prepared '
        'with (prepared, asked): %s. Delete that directory to prepare it again.',
        builder.info.full_name, builder.data_dir, differ)
  else:
    logging.info('%s is already prepared in %s; reusing it.', builder.info.full_name,
                 builder.data_dir)


class TextDecodedSource:
  """A random-access source whose records have ``str`` text fields and raw ``image`` bytes.

  Wraps TFDS's array_record data source (read with ``SkipDecoding`` for the image, so JPEG
  decoding happens in the Grain transforms where it is measured, not here). Picklable, for
  Grain worker processes.
  """

  # Light fields kept in the per-split column index (everything but pixels).
  INDEX_KEYS = ('image_id', 'label', 'caption', 'caption_no_emotion')

  def __init__(self, source: Sequence[dict[str, Any]], text_keys: Sequence[str],
               text_list_keys: Sequence[str], description: str,
               index_path: str | os.PathLike | None = None):
    self._source = source
    self._text_keys = tuple(text_keys)
    self._text_list_keys = tuple(text_list_keys)
    self._description = description
    self._index_path = os.fspath(index_path) if index_path else None
    self._index: dict[str, list] | None = None

  def _load_index(self) -> dict[str, list]:
    """The light fields of every record, in source order, read once and cached as JSON next
    to the prepared data (so caches and manifests need not decode all images again)."""
    if self._index is not None:
      return self._index
    path = self._index_path
    if path and os.path.exists(path):
      with open(path) as f:
        index = json.load(f)
      if index.get('num_records') == len(self):
        self._index = index['columns']
        return self._index
    logging.info('Indexing %s (one pass over the records, cached in %s).', self, path)
    columns: dict[str, list] = {}
    for i in range(len(self)):
      record = self[i]
      for key in self.INDEX_KEYS:
        if key in record:
          value = record[key]
          columns.setdefault(key, []).append(
              value.item() if isinstance(value, np.generic) else value)
    self._index = columns
    if path:
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        with open(tmp, 'w') as f:
          json.dump({'num_records': len(self), 'columns': columns}, f)
        os.replace(tmp, path)
      except OSError as e:  # read-only data directories are fine: the index is recomputed
        logging.warning('Could not cache the index in %s: %s', path, e)
    return columns

  def column(self, key: str) -> list:
    """One light field (`image_id`, `label`, `caption`, ...) of every record, in order."""
    columns = self._load_index()
    if key not in columns:
      raise KeyError(f'{self._description} has no field {key!r} (have {sorted(columns)})')
    return columns[key]

  @property
  def example_ids(self) -> list[str]:
    return self.column('image_id')

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_index'] = None   # workers never need it; keep pickles small
    return state

  def __len__(self) -> int:
    return len(self._source)

  def _decode(self, record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    for k in self._text_keys:
      v = record[k]
      record[k] = v.decode('utf-8') if isinstance(v, bytes) else str(v)
    for k in self._text_list_keys:
      record[k] = [v.decode('utf-8') if isinstance(v, bytes) else str(v)
                   for v in np.asarray(record[k], dtype=object).ravel()]
    return record

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    getitems = getattr(self._source, '__getitems__', None)
    records = (getitems(indices) if getitems is not None
               else [self._source[i] for i in indices])
    return [self._decode(r) for r in records]

  def __repr__(self) -> str:
    return f'TextDecodedSource({self._description}, {len(self)} records)'


def _text_keys(features: tfds.features.FeaturesDict) -> tuple[list[str], list[str]]:
  text, text_list = [], []
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Text):
      text.append(key)
    elif (isinstance(feature, tfds.features.Sequence)
          and isinstance(feature.feature, tfds.features.Text)):
      text_list.append(key)
  return text, text_list


def load_source(dataset: str, split: str, data_dir: str | os.PathLike) -> TextDecodedSource:
  """A random-access source over a prepared split (what the Grain pipeline reads).

  Records: ``image`` is the encoded JPEG (``bytes``); text fields are ``str`` (``objects``
  a ``list[str]``); the rest are NumPy scalars/arrays as in the builder's features.

  Args:
    dataset: a name from :data:`DATASETS`.
    split: ``'train'``, ``'val'``, ``'test'``, or a TFDS split expression (``'train+val'``).
    data_dir: the directory ``prepare`` wrote to.

  Raises:
    DatasetNotPreparedError: nothing prepared there; the message has the command to run.
      Nothing is ever downloaded.
  """
  ensure_absl_flags()
  builder = get_builder(dataset, data_dir)
  if not is_prepared(builder):
    raise DatasetNotPreparedError(
        f'{canonical_name(dataset)} is not prepared in {os.fspath(data_dir)} (no '
        f'{builder.data_dir}). Nothing is downloaded automatically; prepare it once with\n'
        f'  {prepare_command(dataset, data_dir)}\n'
        f'(instructions: {builder.__class__.__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS, or '
        f'`python -m {PREPARE_MODULE} --help`).')
  source = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  text, text_list = _text_keys(builder.info.features)
  index_path = os.path.join(os.fspath(builder.data_path), 'index',
                            split.replace('+', '_').replace('/', '_') + '.json')
  return TextDecodedSource(source, text, text_list,
                           f'{builder.info.full_name}, split {split!r}', index_path)
