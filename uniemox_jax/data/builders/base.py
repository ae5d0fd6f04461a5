"""What the EmoSet and ImageFolder builders share: options, manual-dir errors, image checks,
the bad-image report and the prepare log."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from uniemox_jax.data.builders import images
from uniemox_jax.data.builders import person_boxes as pb

REPORT_NAME = 'bad_images.json'
ARRAY_RECORD = 'array_record'


class ManualDirError(FileNotFoundError):
  """The manual directory is missing or lacks the files a builder needs."""


def listing(directory: epath.Path | os.PathLike, limit: int = 12) -> str:
  """A short listing of a directory for error messages."""
  directory = epath.Path(directory)
  try:
    names = sorted(p.name + ('/' if p.is_dir() else '') for p in directory.iterdir())
  except OSError:
    return '(not readable)'
  if not names:
    return '(empty)'
  more = f' ... and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def is_hidden(name: str) -> bool:
  # .DS_Store, Thumbs.db and macOS '._x.jpg' resource forks come with many archives.
  return name.startswith('.') or name in ('Thumbs.db', 'desktop.ini')


@dataclasses.dataclass
class Item:
  """One example to generate: its key, split, file and whatever the builder needs."""
  split: str
  key: str
  path: str
  fields: dict[str, Any]
  row: Any = None
  check: images.ImageCheck | None = None


class CheckedImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders: array_record output, manual-dir handling, every image checked.

  Constructor options (besides TFDS's ``data_dir``, ``config``, ``version``):
    manual_dir: where the user put the data (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``); when
      unset, TFDS's ``download_config.manual_dir`` is used.
    skip_bad_images: leave bad images out and list them in ``bad_images.json`` next to the
      prepared data, instead of failing with the list.
    num_workers: processes for decode-checking (default: CPUs, at most 16).
    file_format: default ``'array_record'`` (random access, no TensorFlow needed).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def __init__(self, *, manual_dir: str | os.PathLike | None = None,
               skip_bad_images: bool = False, num_workers: int | None = None,
               file_format: str | None = None, **kwargs):
    super().__init__(file_format=file_format or ARRAY_RECORD, **kwargs)
    self._manual_dir_opt = (epath.Path(os.path.expanduser(os.fspath(manual_dir)))
                            if manual_dir else None)
    self._skip_bad_images = bool(skip_bad_images)
    self._num_workers = images.default_num_workers() if num_workers is None else int(num_workers)
    # The final directory: during preparation TFDS points `data_dir` at a temporary one.
    self._final_dir = epath.Path(self._data_dir)
    self._bad: list[images.BadImage] = []
    self._original_state.update(
        manual_dir=manual_dir, skip_bad_images=skip_bad_images, num_workers=num_workers,
        file_format=file_format)

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    # TFDS's own lookup, for a builder inside a package, imports the `importlib_resources`
    # backport, which nothing else needs and which is not installed with TFDS.
    return epath.Path(inspect.getfile(cls))

  # ------------------------------------------------------------------ for subclasses

  @property
  def report_path(self) -> epath.Path:
    """The bad-image report: ``<data_dir>/<name>/[<config>/]<version>/bad_images.json``."""
    return self._final_dir / REPORT_NAME

  def _prepare_options(self) -> dict[str, Any]:
    """Options recorded in the data's metadata (compared when prepared data is reused)."""
    return {'manual_dir': str(self._manual_dir_opt) if self._manual_dir_opt else None,
            'skip_bad_images': self._skip_bad_images}

  def validate_manual_dir(self) -> epath.Path:
    """Checks the manual directory's layout (index files, folders) without reading images.

    Raises :class:`ManualDirError` naming the directory, what is missing and the
    instructions. ``prepare`` calls it before TFDS starts; preparation checks again.
    Returns the directory the data is read from.
    """
    return self._validate_layout(self._manual_root(None))

  def _validate_layout(self, root: epath.Path) -> epath.Path:
    raise NotImplementedError

  def _manual_root(self, dl_manager: tfds.download.DownloadManager | None) -> epath.Path:
    """The manual directory, from the option or from TFDS's download config."""
    if self._manual_dir_opt is not None:
      root = self._manual_dir_opt
    else:
      root = getattr(dl_manager, '_manual_dir', None)
      if not root:
        raise ManualDirError(
            f'{self.name}: no manual directory given. Pass manual_dir=... (CLI: '
            f'--manual_dir=DIR).\n\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      root = epath.Path(root)
    if not root.is_dir():
      raise ManualDirError(
          f'{self.name}: manual directory {root} does not exist.\n\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    self._manual_dir_opt = root
    return root

  # pylint: disable-next=arguments-differ
  def _generate_examples(self, split: str, items: list[Item]):
    yield from self._iterate(split, items, self._example)

  def _check_items(self, items: Sequence[Item], where: str) -> dict[str, list[Item]]:
    """Decode-checks every item that has no verdict yet; fails or records the bad ones.

    Items that already carry a failed check (missing files found while reading an index)
    are reported with the rest. Returns the good items per split, in input order.
    """
    todo = [i for i, it in enumerate(items) if it.check is None]
    checks = images.scan_images([items[i].path for i in todo],
                                num_workers=self._num_workers, desc=f'{self.name} images')
    for i, check in zip(todo, checks):
      items[i].check = check
    self._bad = [images.BadImage(it.split, it.path, it.check.reason, it.row)
                 for it in items if not it.check.ok]
    if self._bad and not self._skip_bad_images:
      raise images.BadImagesError(self._bad, where, os.fspath(self.report_path))
    if self._bad:
      logging.warning('%s: leaving out %d bad image(s) (listed in %s):\n%s', self.name,
                      len(self._bad), self.report_path,
                      '\n'.join('  ' + b.line() for b in self._bad[:20])
                      + ('\n  ...' if len(self._bad) > 20 else ''))
    good: dict[str, list[Item]] = {}
    for it in items:
      good.setdefault(it.split, [])
      if it.check.ok:
        good[it.split].append(it)
    empty = [s for s, v in good.items() if not v]
    if empty:
      raise ValueError(f'{self.name}: no usable images left in split(s) {empty} of {where}.')
    reencode = sum(it.check.reencode for it in items if it.check.ok)
    if reencode:
      logging.info('%s: %d image(s) are not RGB JPEGs and are stored re-encoded as JPEG '
                   '(quality %d).', self.name, reencode, images.REENCODE_QUALITY)
    self.info.metadata['prepare'] = dict(
        self._prepare_options(), bad_images=len(self._bad), reencoded=reencode)
    return good

  def _iterate(self, split: str, items: Sequence[Item],
               make: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(key, make(item, image_bytes))`` and logs progress every 10 s."""
    t0 = last = time.perf_counter()
    for n, it in enumerate(items, start=1):
      data = images.stored_bytes(it.path, it.check)
      yield it.key, make(it, data)
      if time.perf_counter() - last > images.PROGRESS_EVERY_S:
        last = time.perf_counter()
        logging.info('%s/%s: wrote %d/%d examples (%.0f/s)', self.name, split, n,
                     len(items), n / (time.perf_counter() - t0))

  def _report_extra(self) -> dict[str, Any]:
    """More entries for the report (and the log), after all examples are written."""
    return {}

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    t0 = time.perf_counter()
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Still the temporary directory here; TFDS renames it to the final one on success.
    report = {
        'dataset': self.info.full_name,
        'manual_dir': str(self._manual_dir_opt),
        'skip_bad_images': self._skip_bad_images,
        'counts': {name: s.num_examples for name, s in self.info.splits.items()},
        'bad_images': [dataclasses.asdict(b) for b in self._bad],
        **self._report_extra(),
    }
    (self.data_path / REPORT_NAME).write_text(json.dumps(report, indent=1))
    counts = ', '.join(f'{k} {v}' for k, v in report['counts'].items())
    logging.info('%s: prepared %s examples in %.1f s into %s; %d bad image(s) left out '
                 '(report: %s).', self.info.full_name, counts, time.perf_counter() - t0,
                 self._final_dir, len(self._bad), self.report_path)


class PersonBoxesBuilder(CheckedImageBuilder, skip_registration=True):
  """A builder whose records carry a person box (`person_box`, `has_person`, `person_score`)
  from a `PersonBoxes` provider: a file of detections, or none (every image person-less).

  Args (besides `CheckedImageBuilder`'s):
    person_boxes: a detections file (JSON or CSV, see `person_boxes.py`), a provider, or None.
    min_person_score: the confidence a ``person`` box needs (default 0.8, the paper's).
  """

  def __init__(self, *, person_boxes: str | os.PathLike | pb.PersonBoxes | None = None,
               min_person_score: float = pb.DEFAULT_MIN_SCORE, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= float(min_person_score) <= 1.0:
      raise ValueError(f'min_person_score must be in [0, 1], got {min_person_score}')
    self._person_boxes_opt = person_boxes
    self._min_person_score = float(min_person_score)
    self._boxes: pb.PersonBoxes = pb.NoPersonBoxes()
    self._original_state.update(person_boxes=person_boxes, min_person_score=min_person_score)

  def _prepare_options(self) -> dict[str, Any]:
    return dict(super()._prepare_options(),
                **pb.prepare_options(self._person_boxes_opt, self._min_person_score))

  def _person_fields(self, item: Item) -> dict[str, Any]:
    """The record's `person_box` ([y0, x0, y1, x1] in [0, 1]; zeros without one),
    `has_person` and `person_score`, from the person-boxes provider."""
    box, score = self._boxes.lookup(item.fields['image_id'], item.check.width, item.check.height)
    return {'person_box': (np.zeros(4, np.float32) if box is None
                           else np.asarray(box, np.float32)),
            'has_person': box is not None,
            'person_score': np.float32(score if box is not None else 0.0)}

  def _person_report(self, name: str) -> dict[str, Any]:
    boxes = self._boxes
    summary = boxes.summary() if hasattr(boxes, 'summary') else repr(boxes)
    logging.info('%s: %s', name, summary)
    return {'person_boxes': summary}

  def _load_person_boxes(self, items: Sequence[Item], name: str) -> None:
    """Reads (and validates) the person-boxes option for `items` before the long steps:
    `self._boxes` becomes the provider; a file that matches none of the image ids stops."""
    self._boxes = pb.make_person_boxes(self._person_boxes_opt, self._min_person_score)
    if hasattr(self._boxes, 'check_ids'):
      try:
        matched = self._boxes.check_ids([it.fields['image_id'] for it in items])
      except ValueError as e:
        raise ManualDirError(str(e)) from None
      logging.info('%s: %d of %d images have an entry in the person boxes file.', name,
                   matched, len(items))
