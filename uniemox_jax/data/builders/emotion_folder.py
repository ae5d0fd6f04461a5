"""The fine-tuning benchmarks as one TFDS builder (``emotion_folder``), one config per data set.

Reads the authors' processed splits, ``<manual_dir>/<folder>/{train,val,test}/<class>/<image>``
(folder and classes from :data:`~uniemox_jax.data.classes.BENCHMARKS`). Labels follow the
ImageFolder convention, the sorted class-folder names, and the class list is fixed per config,
so a missing or extra class folder is an error rather than a silent label shift.

Person boxes are stored as EmoSet's builder stores them (``person_box``, ``has_person``,
``person_score``), from a :class:`~uniemox_jax.data.builders.person_boxes.PersonBoxes`
provider keyed by the image id (the path inside the data set); without one every image is
person-less. ``python -m uniemox_jax.tools.prepare --dataset=emo8 ... --person_boxes=yolov3``
detects them with the built-in detector.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from uniemox_jax.data.builders import base
from uniemox_jax.data.classes import BENCHMARKS, SPLITS, Benchmark


def _class_folders(split_dir: epath.Path) -> dict[str, list[str]]:
  """Class name (lower case) → the split's folders of that name, matched case-insensitively:
  the authors' split script writes some data sets' folders capitalised ('Anger', 'Happy');
  the label is still the class's place in the fixed list."""
  by_class: dict[str, list[str]] = {}
  for p in sorted(split_dir.iterdir(), key=lambda p: p.name):
    if p.is_dir() and not base.is_hidden(p.name):
      by_class.setdefault(p.name.lower(), []).append(p.name)
  return by_class


def _instructions() -> str:
  rows = '\n'.join(f'  {b.name:12s} DIR/{b.folder}/  classes: {", ".join(b.classes)}'
                   for b in BENCHMARKS.values())
  return f"""\
The benchmark data sets cannot be downloaded automatically. Use the authors' processed splits
(UniEmoX release, github.com/chincharles/u-emo) or split the original data the same way, and
put each data set under one directory DIR (pass DIR, or the data set's own folder, as the
manual directory):

  DIR/<folder>/train/<class>/<image>
  DIR/<folder>/val/<class>/<image>
  DIR/<folder>/test/<class>/<image>

with exactly these folders and class names, matched ignoring case (labels are the sorted
class names):
{rows}

  python -m uniemox_jax.tools.prepare --dataset=emotion_folder/<name> --manual_dir=DIR \\
      --data_dir=OUT"""


@dataclasses.dataclass(eq=False)
class EmotionFolderConfig(tfds.core.BuilderConfig):
  """One benchmark: the folder under the manual directory and its fixed class list."""
  folder: str = ''
  classes: tuple[str, ...] = ()


def _config(b: Benchmark) -> EmotionFolderConfig:
  return EmotionFolderConfig(
      name=b.name, folder=b.folder, classes=b.classes,
      description=f'{b.folder}: {b.num_classes} classes ({", ".join(b.classes)}); '
                  f'split {b.splits}.')


class EmotionFolder(base.PersonBoxesBuilder):
  """An ImageFolder-style emotion benchmark (configs: emo8, fi, emotion6, unbiasedemo,
  caer_s, heco).

  Options (constructor keywords, besides those of :class:`base.CheckedImageBuilder`):
    person_boxes: a detections file keyed by image id (``train/anger/x.jpg``), a
      :class:`PersonBoxes` provider, or None (every image person-less).
    min_person_score: the confidence a ``person`` box needs (default 0.8, the paper's).
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'Person boxes as in EmoSet: person_box, has_person, person_score (zeros and '
               'False without a person boxes provider).',
  }
  BUILDER_CONFIGS = [_config(b) for b in BENCHMARKS.values()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions()

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Emotion benchmark {cfg.description}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(cfg.classes)),
            'image_id': tfds.features.Text(
                doc='path relative to the data set folder, e.g. train/anger/x.jpg'),
            'height': tfds.features.Scalar(np.int32, doc='image height in pixels'),
            'width': tfds.features.Scalar(np.int32, doc='image width in pixels'),
            'person_box': tfds.features.Tensor(
                shape=(4,), dtype=np.float32,
                doc='[y0, x0, y1, x1] in [0, 1] of the stored image; zeros when no person'),
            'has_person': tfds.features.Scalar(np.bool_, doc='a person box was kept'),
            'person_score': tfds.features.Scalar(
                np.float32, doc='detector confidence of person_box; 0 when none'),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _dataset_dir(self, root: epath.Path) -> epath.Path:
    """``root/<folder>`` (matched case-insensitively), or ``root`` itself if it has splits."""
    folder = self.builder_config.folder
    if (root / folder).is_dir():
      return root / folder
    matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == folder.lower()]
    if len(matches) == 1:
      return matches[0]
    if any((root / s).is_dir() for s in SPLITS):
      return root
    raise base.ManualDirError(
        f'{self.builder_config.name}: {root} has neither a {folder}/ folder nor '
        f'{"/, ".join(SPLITS)}/ split folders (it holds: {base.listing(root)}).\n\n'
        f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')

  def _validate_layout(self, root: epath.Path) -> epath.Path:
    """Checks split and class folders; returns the data set folder."""
    name, classes = self.builder_config.name, self.builder_config.classes
    ds_dir = self._dataset_dir(root)
    missing = [s for s in SPLITS if not (ds_dir / s).is_dir()]
    if missing:
      raise base.ManualDirError(
          f'{name}: split folder(s) {[os.fspath(ds_dir / s) for s in missing]} missing in '
          f'{ds_dir} (it holds: {base.listing(ds_dir)}).\n\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    problems = []
    for split in SPLITS:
      split_dir = ds_dir / split
      by_class = _class_folders(split_dir)
      found = sorted(f for folders in by_class.values() for f in folders)
      missing_cls = sorted(set(classes) - set(by_class))
      extra = sorted(f for f in found if f.lower() not in classes)
      clashes = sorted(f for c in classes for f in by_class.get(c, ()) if len(by_class[c]) > 1)
      if missing_cls or extra:
        problems.append(f'{split_dir}: class folders {found} do not match the expected '
                        f'{list(classes)} (missing: {missing_cls}, unexpected: {extra})')
      if clashes:
        problems.append(f'{split_dir}: class folders {clashes} differ only in case; keep one.')
    if problems:
      raise base.ManualDirError(
          f'{name}: wrong class folders (labels are the sorted class names, matched ignoring '
          'case, so every split needs exactly the expected ones):\n  ' + '\n  '.join(problems))
    return ds_dir

  def _list_split(self, ds_dir: epath.Path, split: str) -> list[base.Item]:
    split_dir = ds_dir / split
    stray = sorted(p.name for p in split_dir.iterdir()
                   if not p.is_dir() and not base.is_hidden(p.name))
    if stray:
      logging.warning('%s: ignoring %d file(s) outside the class folders: %s', split_dir,
                      len(stray), stray[:10])
    items, hidden = [], 0
    by_class = _class_folders(split_dir)   # validated: exactly one folder per class
    for label, cls in enumerate(self.builder_config.classes):
      for dirpath, dirnames, filenames in os.walk(os.fspath(split_dir / by_class[cls][0])):
        dirnames[:] = sorted(d for d in dirnames if not base.is_hidden(d))
        for fname in sorted(filenames):
          if base.is_hidden(fname):
            hidden += 1
            continue
          path = os.path.join(dirpath, fname)
          rel = os.path.relpath(path, os.fspath(ds_dir)).replace(os.sep, '/')
          items.append(base.Item(split=split, key=rel, path=path,
                                 fields={'label': label, 'image_id': rel}))
    if hidden:
      logging.info('%s: skipped %d hidden/system file(s) (.DS_Store, ._*, Thumbs.db).',
                   split_dir, hidden)
    return items

  def list_images(self) -> list[tuple[str, str]]:
    """``(image_id, path)`` of every file preparation would read, in preparation order
    (splits, then classes, then sorted names), without opening any (the person detector's
    input list)."""
    ds_dir = self._validate_layout(self._manual_root(None))
    return [(it.fields['image_id'], it.path) for split in SPLITS
            for it in self._list_split(ds_dir, split)]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    ds_dir = self._validate_layout(self._manual_root(dl_manager))
    items = []
    for split in SPLITS:
      items += self._list_split(ds_dir, split)
    self._load_person_boxes(items, self.builder_config.name)
    counts = {s: sum(it.split == s for it in items) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
      raise base.ManualDirError(
          f'{self.builder_config.name}: no image files in split(s) {empty} of {ds_dir}.')
    logging.info('%s in %s: %s files.', self.builder_config.name, ds_dir, counts)
    good = self._check_items(items, f'{ds_dir}')
    self.info.metadata['prepare']['dataset_dir'] = os.fspath(ds_dir)
    return {split: self._generate_examples(split, good[split]) for split in SPLITS}

  def _report_extra(self) -> dict[str, Any]:
    return self._person_report(self.builder_config.name)

  def _example(self, item: base.Item, data: bytes) -> dict[str, Any]:
    return {'image': data, 'label': item.fields['label'], 'image_id': item.fields['image_id'],
            'height': np.int32(item.check.height), 'width': np.int32(item.check.width),
            **self._person_fields(item)}
