"""EmoSet-118K as a TFDS builder (``emoset``), from the official release in a manual directory.

Two index layouts are read and told apart automatically (docs/method.md §3 #6):

* official: ``info.json`` nested (``info['emotion']['label2idx']``), rows
  ``[emotion, image_id, image_path, annotation_path]``;
* 3-field (what the released UniEmoX code reads): flat ``info.json`` with a top-level
  ``label2idx``, rows ``[emotion, image_path, annotation_path]``; the image id is the image
  file's stem.

Both give the same examples. Captions follow docs/method.md §2 (``captions.build_caption``) and keep
multi-word object names whole. Person boxes come from a :class:`PersonBoxes` provider.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from uniemox_jax.data.builders import base
from uniemox_jax.data.builders import images
from uniemox_jax.data.builders import person_boxes as pb
from uniemox_jax.data.captions import build_caption
from uniemox_jax.data.classes import EMOSET_CLASSES, SPLITS

INDEX_FILES = ('info.json',) + tuple(f'{s}.json' for s in SPLITS)
TEXT_ATTRIBUTES = ('scene', 'facial_expression', 'human_action')
LEVEL_ATTRIBUTES = ('brightness', 'colorfulness')

_INSTRUCTIONS = """\
EmoSet-118K cannot be downloaded automatically. Get it from the authors' release
(github.com/JingyuanYY/EmoSet: the README links the EmoSet-118K download; accept its
terms), extract the archive, and pass the extracted directory as the manual directory
(`python -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir=DIR --data_dir=OUT`).
That directory must contain:

  DIR/info.json                          label2idx of the emotions (and of each attribute)
  DIR/train.json DIR/val.json DIR/test.json
                                         rows [emotion, image_id, image_path, annotation_path]
  DIR/image/<emotion>/<image_id>.jpg
  DIR/annotation/<emotion>/<image_id>.json

The 3-field variant read by the released UniEmoX code (a flat info.json with a top-level
label2idx and rows [emotion, image_path, annotation_path]) is accepted too.
Person boxes are optional: --person_boxes=FILE with JSON
{image_id: [{"box": [x0, y0, x1, y1], "score": s, "label": "person"}]} or CSV
image_id,x0,y0,x1,y1,score[,label] (pixels of the images as stored)."""


def _level(value: Any) -> float:
  """A brightness/colorfulness level as a float; -1 when absent or unreadable."""
  if value is None or value == '':
    return -1.0
  try:
    return float(value)
  except (TypeError, ValueError):
    return -1.0


def _objects(value: Any) -> list[str]:
  """Object names, each kept whole (``'Alarm clock'`` stays one name)."""
  if value is None or value == '':
    return []
  if isinstance(value, str):
    return [value]
  return [str(v) for v in value]


def _text(value: Any) -> str:
  return '' if value is None else str(value)


class Emoset(base.PersonBoxesBuilder):
  """EmoSet-118K: 8 emotions (EmoSet's own order), attributes, captions and person boxes.

  Options (constructor keywords, besides those of :class:`base.CheckedImageBuilder`):
    person_boxes: a detections file (JSON or CSV, see ``person_boxes.py``), a
      :class:`PersonBoxes` provider, or None (every image person-less).
    min_person_score: the confidence a ``person`` box needs (default 0.8, the paper's).
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text

    def f32(doc):
      return tfds.features.Scalar(np.float32, doc=doc)
    return tfds.core.DatasetInfo(
        builder=self,
        description=('EmoSet-118K (Yang et al., ICCV 2023): images labelled with 8 Mikels '
                     'emotions and attributes, with captions built from the attributes '
                     '(docs/method.md §2) and person boxes.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(EMOSET_CLASSES)),
            'emotion': text(doc='emotion name, = label names[label]'),
            'image_id': text(doc='EmoSet image id, e.g. amusement_12865'),
            'caption': text(doc='caption built from the attributes (docs/method.md §2), '
                            'ending with the emotion sentence'),
            'caption_no_emotion': text(doc='the caption without the emotion sentence'),
            'scene': text(doc="'' when absent"),
            'facial_expression': text(doc="'' when absent"),
            'human_action': text(doc="'' when absent"),
            'objects': tfds.features.Sequence(text(), doc='object names, kept whole'),
            'brightness': f32('0.0-1.0 in steps of 0.1; -1 when absent'),
            'colorfulness': f32('0.0-1.0 in steps of 0.1; -1 when absent'),
            'person_box': tfds.features.Tensor(
                shape=(4,), dtype=np.float32,
                doc='[y0, x0, y1, x1] in [0, 1] of the stored image; zeros when no person'),
            'has_person': tfds.features.Scalar(np.bool_, doc='a person box was kept'),
            'person_score': f32('detector confidence of person_box; 0 when none'),
            'height': tfds.features.Scalar(np.int32, doc='image height in pixels'),
            'width': tfds.features.Scalar(np.int32, doc='image width in pixels'),
        }),
        supervised_keys=('image', 'label'),
        homepage='github.com/JingyuanYY/EmoSet',  # the release page (never fetched)
        citation=('@inproceedings{yang2023emoset, title={EmoSet: A Large-scale Visual '
                  'Emotion Dataset with Rich Attributes}, author={Yang, Jingyuan and Huang, '
                  'Qirui and Ding, Tingting and Lischinski, Dani and Cohen-Or, Daniel and '
                  'Huang, Hui}, booktitle={ICCV}, year={2023}}'),
        metadata=tfds.core.MetadataDict(),
    )

  # ------------------------------------------------------------------ reading the index

  def _validate_layout(self, root: epath.Path) -> epath.Path:
    self._layout(root)
    boxes = self._person_boxes_opt
    if isinstance(boxes, (str, os.PathLike)) and boxes and not os.path.isfile(boxes):
      raise FileNotFoundError(f'Person boxes file {os.fspath(boxes)} does not exist.')
    return root

  def _layout(self, root: epath.Path) -> str:
    """Checks the index files and returns 'official' or 'three_field'."""
    missing = [f for f in INDEX_FILES if not (root / f).is_file()]
    if missing:
      hint = ''
      for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / 'info.json').is_file() and (sub / 'train.json').is_file():
          hint = f'\n{sub} has them: did you mean --manual_dir={sub}?'
          break
      raise base.ManualDirError(
          f'EmoSet manual directory {root} lacks {", ".join(missing)} (it holds: '
          f'{base.listing(root)}).{hint}\n\n{_INSTRUCTIONS}')
    info = self._read_json(root / 'info.json')
    if isinstance(info.get('emotion'), Mapping) and 'label2idx' in info['emotion']:
      layout, label2idx = 'official', info['emotion']['label2idx']
    elif 'label2idx' in info:
      layout, label2idx = 'three_field', info['label2idx']
    else:
      raise base.ManualDirError(
          f'{root / "info.json"} has neither info["emotion"]["label2idx"] (official EmoSet) '
          f'nor a top-level "label2idx" (3-field variant); keys: {sorted(info)[:12]}.\n\n'
          f'{_INSTRUCTIONS}')
    expected = {c: i for i, c in enumerate(EMOSET_CLASSES)}
    if {str(k): int(v) for k, v in label2idx.items()} != expected:
      raise ValueError(
          f'{root / "info.json"}: emotion label2idx {label2idx} differs from EmoSet\'s order '
          f'{expected}; labels would be permuted. Is this EmoSet-118K?')
    return layout

  @staticmethod
  def _read_json(path: epath.Path) -> Any:
    try:
      return json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from None

  def _read_split(self, root: epath.Path, split: str) -> list[base.Item]:
    index = root / f'{split}.json'
    rows = self._read_json(index)
    if not isinstance(rows, list):
      raise ValueError(f'{index}: expected a list of rows, got {type(rows).__name__}.')
    items, seen, unknown = [], {}, {}
    for n, row in enumerate(rows):
      if not isinstance(row, (list, tuple)) or len(row) not in (3, 4):
        raise ValueError(
            f'{index}, row {n}: expected [emotion, image_id, image_path, annotation_path] '
            f'(official) or [emotion, image_path, annotation_path] (3-field), got {row!r}.')
      if len(row) == 4:
        emotion, image_id, image_path, ann_path = (str(v) for v in row)
      else:
        emotion, image_path, ann_path = (str(v) for v in row)
        image_id = PurePosixPath(image_path).stem
      if emotion not in EMOSET_CLASSES:
        unknown.setdefault(emotion, n)
        continue
      if image_id in seen:
        raise ValueError(f'{index}: image id {image_id!r} appears in rows {seen[image_id]} '
                         f'and {n}.')
      seen[image_id] = n
      item = base.Item(split=split, key=image_id, path=os.fspath(root / image_path),
                       fields={'emotion': emotion, 'image_id': image_id,
                               'annotation': os.fspath(root / ann_path)},
                       row=list(row))
      items.append(item)
    if unknown:
      raise ValueError(f'{index}: unknown emotion(s) {sorted(unknown)} (first at rows '
                       f'{sorted(unknown.values())[:5]}); expected {list(EMOSET_CLASSES)}.')
    if not items:
      raise ValueError(f'{index} has no rows.')
    return items

  def _read_annotation(self, item: base.Item) -> None:
    """Loads the item's annotation; a missing or broken one marks the item bad."""
    path = item.fields['annotation']
    try:
      with open(path, encoding='utf-8') as f:
        ann = json.load(f)
      if not isinstance(ann, dict):
        raise ValueError(f'expected a JSON object, got {type(ann).__name__}')
    except FileNotFoundError:
      item.check = images.ImageCheck(False, reason=f'missing annotation file {path}')
      return
    except (OSError, ValueError) as e:
      item.check = images.ImageCheck(False, reason=f'bad annotation file {path}: {e}')
      return
    item.fields['attrs'] = ann

  # ------------------------------------------------------------------ TFDS hooks

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_root(dl_manager)
    layout = self._layout(root)
    items = []
    for split in SPLITS:
      items += self._read_split(root, split)
    self._load_person_boxes(items, 'EmoSet')
    for item in items:
      if not os.path.exists(item.path):
        item.check = images.ImageCheck(False, reason='missing image file')
      else:
        self._read_annotation(item)
    logging.info('EmoSet (%s layout) in %s: %s rows.', layout, root,
                 {s: sum(it.split == s for it in items) for s in SPLITS})
    if isinstance(self._boxes, pb.NoPersonBoxes):
      logging.info('EmoSet: no person boxes file given (person_boxes / --person_boxes): '
                   'has_person=False for every image, so the person view is the whole image.')
    good = self._check_items(items, f'EmoSet manual directory {root}')
    self.info.metadata['prepare']['layout'] = layout
    return {split: self._generate_examples(split, good[split]) for split in SPLITS}

  def _report_extra(self) -> dict[str, Any]:
    return self._person_report('EmoSet')

  def _example(self, item: base.Item, data: bytes) -> dict[str, Any]:
    attrs = item.fields['attrs']
    emotion = item.fields['emotion']
    w, h = item.check.width, item.check.height
    return {
        'image': data,
        'label': EMOSET_CLASSES.index(emotion),
        'emotion': emotion,
        'image_id': item.fields['image_id'],
        'caption': build_caption(attrs, emotion),
        'caption_no_emotion': build_caption(attrs, emotion, include_emotion=False),
        **{k: _text(attrs.get(k)) for k in TEXT_ATTRIBUTES},
        'objects': _objects(attrs.get('object')),
        **{k: np.float32(_level(attrs.get(k))) for k in LEVEL_ATTRIBUTES},
        **self._person_fields(item),
        'height': np.int32(h),
        'width': np.int32(w),
    }
