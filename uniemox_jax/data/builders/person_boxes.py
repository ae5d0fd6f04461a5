"""Person boxes for EmoSet's person view (docs/method.md §2 "Person boxes"), computed once
at prepare time.

The paper keeps YOLOv3's most confident ``person`` box with confidence >= 0.8 and uses the
whole image when there is none. Preparation asks a :class:`PersonBoxes` provider for each
image; today that is :class:`FilePersonBoxes` (detections a user ran elsewhere), and a
built-in detector can be another provider with the same ``lookup`` method.

Accepted files (boxes in pixels of the image as stored, ``x1``/``y1`` exclusive, the way
``PIL.Image.crop`` reads them; ``label`` optional, default ``person``):

* JSON: ``{image_id: [{"box": [x0, y0, x1, y1], "score": s, "label": "person"}, ...]}``
* CSV with a header: ``image_id,x0,y0,x1,y1,score[,label]``, one detection per line.

A key is matched to an image by the whole key first (a benchmark's image id is its path
inside the data set, ``train/anger/x.jpg``, which the built-in detector writes as is), then
by its image id, the file stem (``image/amusement/amusement_1.jpg`` is EmoSet's
``amusement_1``); a stem shared by keys naming different files matches nothing, since it
cannot tell them apart.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_MIN_SCORE = 0.8     # the paper's YOLOv3 confidence threshold
PERSON_LABEL = 'person'
CSV_COLUMNS = ('image_id', 'x0', 'y0', 'x1', 'y1', 'score')


@runtime_checkable
class PersonBoxes(Protocol):
  """Where a builder gets each image's person box from."""

  def lookup(self, image_id: str, width: int, height: int
             ) -> tuple[np.ndarray | None, float]:
    """Returns ``(box, score)`` for one image of ``width`` x ``height`` pixels.

    ``box`` is float32 ``[y0, x0, y1, x1]`` normalised to [0, 1] (clipped to the image), or
    None when the image has no person above the provider's threshold (then ``score`` is 0).
    """
    ...


class NoPersonBoxes:
  """No detections: every image is person-less (the person view is the whole image)."""

  def lookup(self, image_id: str, width: int, height: int
             ) -> tuple[np.ndarray | None, float]:
    del image_id, width, height
    return None, 0.0

  def summary(self) -> str:
    return 'no person boxes given: has_person=False for every image'

  def describe(self) -> dict[str, Any]:
    return {'source': None}


def normalise_box(box: Iterable[float], width: int, height: int) -> np.ndarray | None:
  """Pixel ``[x0, y0, x1, y1]`` → float32 ``[y0, x0, y1, x1]`` in [0, 1], clipped to the image.

  Returns None when nothing of the box is left inside the image.
  """
  x0, y0, x1, y1 = (float(v) for v in box)
  x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
  y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
  if x1 <= x0 or y1 <= y0:
    return None
  return np.asarray([y0 / height, x0 / width, y1 / height, x1 / width], np.float32)


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def normalise_key(key: str) -> str:
  """A detections-file key as a '/'-separated path without a leading './'."""
  key = str(key).strip().replace('\\', '/')
  while key.startswith('./'):
    key = key[2:]
  return key


def image_id_of(key: str) -> str:
  """A detections-file key → image id: directories and an image file suffix dropped."""
  name = str(key).strip().replace('\\', '/').rsplit('/', 1)[-1]
  stem, suffix = os.path.splitext(name)
  return stem if suffix.lower() in IMAGE_SUFFIXES else name


class FilePersonBoxes:
  """Detections read from a JSON or CSV file (formats in the module docstring).

  For each image the highest-scoring ``person`` detection with ``score >= min_score`` that
  overlaps the image wins (ties: the first in the file). Counts of what happened are kept
  for the prepare log (:meth:`summary`), so a file keyed by something other than the image
  ids (a mismatch that would silently make every image person-less) is visible.
  """

  def __init__(self, path: str | os.PathLike, min_score: float = DEFAULT_MIN_SCORE):
    if not 0.0 <= float(min_score) <= 1.0:
      raise ValueError(f'min_person_score must be in [0, 1], got {min_score}')
    self.path = Path(path).expanduser()
    self.min_score = float(min_score)
    if not self.path.is_file():
      raise FileNotFoundError(
          f'Person boxes file {self.path} does not exist. Give a JSON '
          '{image_id: [{"box": [x0, y0, x1, y1], "score": s, "label": "person"}]} or a CSV '
          f'with columns {",".join(CSV_COLUMNS)}[,label], or leave person_boxes unset.')
    text = self.path.read_text(encoding='utf-8')
    if self.path.suffix.lower() == '.json' or text.lstrip().startswith('{'):
      dets = self._parse_json(text)
    else:
      dets = self._parse_csv(text)
    # Keys may be image ids, file names or paths ('image/amusement/amusement_1.jpg'): all
    # mean the image id, the file stem.
    self._dets: dict[str, list] = {}
    self._by_key: dict[str, list] = {}
    keys_of_stem: dict[str, set[str]] = {}
    for key, found in dets.items():
      self._dets.setdefault(image_id_of(key), []).extend(found)
      self._by_key.setdefault(normalise_key(key), []).extend(found)
      keys_of_stem.setdefault(image_id_of(key), set()).add(normalise_key(key))
    # Stems that stand for several files (train/anger/1.jpg, train/joy/1.jpg) match no
    # path-like image id: which of the files is meant cannot be told.
    self._ambiguous = {stem for stem, keys in keys_of_stem.items() if len(keys) > 1}
    self._looked_up = self._matched = self._with_person = self._clipped = 0
    self._unmatched_example: str | None = None

  # ------------------------------------------------------------------------- parsing

  def _parse_json(self, text: str) -> dict[str, list[tuple[tuple[float, ...], float, str]]]:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'Person boxes file {self.path} is not valid JSON: {e}') from None
    if not isinstance(data, dict):
      raise ValueError(f'Person boxes file {self.path}: expected a JSON object '
                       f'{{image_id: [detections]}}, got {type(data).__name__}.')
    out = {}
    for image_id, dets in data.items():
      if isinstance(dets, dict):
        dets = [dets]
      if not isinstance(dets, list):
        raise ValueError(f'Person boxes file {self.path}, key {image_id!r}: expected a list '
                         f'of detections, got {type(dets).__name__}.')
      parsed = []
      for i, d in enumerate(dets):
        try:
          box = tuple(float(v) for v in d['box'])
          score = float(d['score'])
          if len(box) != 4:
            raise ValueError(f'box has {len(box)} numbers, expected 4')
        except (KeyError, TypeError, ValueError) as e:
          raise ValueError(
              f'Person boxes file {self.path}, key {image_id!r}, detection {i}: expected '
              f'{{"box": [x0, y0, x1, y1], "score": s[, "label": "person"]}}, got {d!r} '
              f'({type(e).__name__}: {e}).') from None
        parsed.append((box, score, str(d.get('label', PERSON_LABEL))))
      out[str(image_id)] = parsed
    return out

  def _parse_csv(self, text: str) -> dict[str, list[tuple[tuple[float, ...], float, str]]]:
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
      raise ValueError(
          f'Person boxes file {self.path}: CSV columns {columns} lack {missing}; expected a '
          f'header line {",".join(CSV_COLUMNS)}[,label].')
    out: dict[str, list] = {}
    for line_no, row in enumerate(reader, start=2):
      row = {(k or '').strip(): (v or '').strip() for k, v in row.items()}
      try:
        box = tuple(float(row[c]) for c in ('x0', 'y0', 'x1', 'y1'))
        score = float(row['score'])
      except ValueError as e:
        raise ValueError(f'Person boxes file {self.path}, line {line_no}: {e} '
                         f'({row}).') from None
      out.setdefault(row['image_id'], []).append(
          (box, score, row.get('label') or PERSON_LABEL))
    return out

  def check_ids(self, image_ids: Iterable[str]) -> int:
    """Fails when the file names none of `image_ids` (it was made for other images, or keyed
    by something else), rather than silently making every image person-less. Returns how many
    of the images have an entry."""
    image_ids = list(image_ids)
    matched = sum(self._find(i) is not None for i in image_ids)
    if image_ids and self._dets and not matched:
      raise ValueError(
          f'Person boxes file {self.path}: none of its {len(self._dets)} keys (e.g. '
          f'{sorted(self._dets)[:3]}) is an image id of this data set (e.g. '
          f'{image_ids[:3]}). Key the detections by image id (the image file stem), a file '
          'name or a path relative to the data set.')
    return matched

  # ------------------------------------------------------------------------- lookup

  def _find(self, image_id: str) -> list | None:
    """The detections of ``image_id``: by the image id itself (EmoSet ids are file stems),
    else by the whole key (benchmark ids are paths), else by an unambiguous stem."""
    found = self._dets.get(image_id)
    if found is not None:
      return found
    found = self._by_key.get(normalise_key(image_id))
    if found is not None:
      return found
    stem = image_id_of(image_id)
    if stem != image_id and stem not in self._ambiguous:
      return self._dets.get(stem)
    return None

  def lookup(self, image_id: str, width: int, height: int
             ) -> tuple[np.ndarray | None, float]:
    self._looked_up += 1
    dets = self._find(image_id)
    if dets is None:
      if self._unmatched_example is None:
        self._unmatched_example = image_id
      return None, 0.0
    self._matched += 1
    best, best_score = None, -1.0
    for box, score, label in dets:
      if label.lower() != PERSON_LABEL or score < self.min_score or score <= best_score:
        continue
      norm = normalise_box(box, width, height)
      if norm is None:
        continue
      x0, y0, x1, y1 = box
      # Count boxes that reach out of the image by more than a pixel: many of them mean the
      # detector ran on differently sized images.
      clipped = x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1
      best, best_score, best_clipped = norm, score, clipped
    if best is None:
      return None, 0.0
    self._with_person += 1
    self._clipped += int(best_clipped)
    return best, float(best_score)

  def summary(self) -> str:
    s = (f'person boxes from {self.path} (min score {self.min_score}): '
         f'{self._with_person}/{self._looked_up} images have a person, '
         f'{self._looked_up - self._matched} had no entry in the file')
    if self._clipped:
      s += (f'; {self._clipped} chosen boxes reached outside their image and were clipped '
            '(were the detections made on resized images?)')
    if self._looked_up and not self._matched and self._dets:
      s += ('. WARNING: no image id matched the file\'s keys (e.g. image '
            f'{self._unmatched_example!r} vs file key {next(iter(self._dets))!r}); '
            'keys must be EmoSet image ids (the image file stem)')
    return s

  def describe(self) -> dict[str, Any]:
    return {'source': str(self.path), 'min_score': self.min_score}

  def __repr__(self) -> str:
    return f'FilePersonBoxes({str(self.path)!r}, min_score={self.min_score})'


def make_person_boxes(person_boxes: str | os.PathLike | PersonBoxes | None,
                      min_score: float = DEFAULT_MIN_SCORE) -> PersonBoxes:
  """A provider from a builder option: None, a file path, or a provider used as is."""
  if person_boxes is None or person_boxes == '':
    return NoPersonBoxes()
  if isinstance(person_boxes, (str, os.PathLike)):
    return FilePersonBoxes(person_boxes, min_score)
  if isinstance(person_boxes, PersonBoxes):
    return person_boxes
  raise TypeError(f'person_boxes must be a path, a PersonBoxes provider or None, got '
                  f'{type(person_boxes).__name__}.')


def prepare_options(person_boxes: Any, min_score: float) -> dict[str, Any]:
  """How a builder's person-box options are recorded with the prepared data (so a second
  prepare with other boxes is noticed): the file's path, or a provider's repr, and the score."""
  return {'person_boxes': (None if person_boxes is None else
                           os.fspath(person_boxes) if isinstance(person_boxes, (str, os.PathLike))
                           else repr(person_boxes)),
          'min_person_score': min_score}
