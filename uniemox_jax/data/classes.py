"""Fixed class lists and folder names of the data sets UniEmoX uses (docs/method.md §5).

Two conventions meet here and must not be mixed up:

* EmoSet-118K numbers its 8 Mikels emotions in its own ``info.json`` order
  (:data:`EMOSET_CLASSES`: amusement 0, awe 1, contentment 2, excitement 3, anger 4,
  disgust 5, fear 6, sadness 7).
* The fine-tuning benchmarks are ImageFolder trees, ``<root>/<folder>/{train,val,test}/<class>/
  <image>``, whose label order is the *sorted* class-folder names. Emo8 and FI therefore use
  the same 8 emotions as EmoSet but in alphabetical order.
"""
from __future__ import annotations

import dataclasses

# EmoSet's own info.json order (not alphabetical).
EMOSET_CLASSES: tuple[str, ...] = (
    'amusement', 'awe', 'contentment', 'excitement',
    'anger', 'disgust', 'fear', 'sadness',
)

# The same 8 Mikels emotions in ImageFolder (sorted-folder) order.
MIKELS_SORTED: tuple[str, ...] = (
    'amusement', 'anger', 'awe', 'contentment',
    'disgust', 'excitement', 'fear', 'sadness',
)

SPLITS: tuple[str, ...] = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One fine-tuning data set in the authors' processed-split layout.

  Attributes:
    name: our registry key (``BENCHMARKS[name]``).
    folder: directory name under the benchmarks root; images live in
      ``<root>/<folder>/{train,val,test}/<class>/<image>``.
    classes: class-folder names in label order (sorted, the ImageFolder convention).
    splits: how the authors split the data (a note for people, not parsed).
  """
  name: str
  folder: str
  classes: tuple[str, ...]
  splits: str

  @property
  def num_classes(self) -> int:
    return len(self.classes)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (
        Benchmark('emo8', 'emo8', MIKELS_SORTED, '8:1:1 train/val/test'),
        Benchmark('fi', 'FI', MIKELS_SORTED, '80/5/15 per class'),
        Benchmark('emotion6', 'Emotion6',
                  ('anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise'),
                  '70/10/20 per class'),
        Benchmark('unbiasedemo', 'UBE',
                  ('anger', 'fear', 'joy', 'love', 'sadness', 'surprise'),
                  '70/10/20'),
        Benchmark('caer_s', 'CAER-S',
                  ('anger', 'disgust', 'fear', 'happy', 'neutral', 'sad', 'surprise'),
                  'official train; official test split 66% test / 34% val'),
        Benchmark('heco', 'HECO',
                  ('anger', 'disgust', 'excitement', 'fear', 'happiness', 'peace',
                   'sadness', 'surprise'),
                  '70/10/20 per class'),
    )
}

# ImageFolder label order is the sorted folder names; a hand-written list that is not sorted
# would silently permute every label.
assert MIKELS_SORTED == tuple(sorted(EMOSET_CLASSES))
for _b in BENCHMARKS.values():
  assert _b.classes == tuple(sorted(_b.classes)), _b.name
  assert len(set(_b.classes)) == len(_b.classes), _b.name
del _b


def get_benchmark(name: str) -> Benchmark:
  """Returns ``BENCHMARKS[name]`` with an error that lists the known names."""
  try:
    return BENCHMARKS[name]
  except KeyError:
    raise KeyError(
        f'Unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}.') from None


def class_names_for(dataset: str) -> tuple[str, ...]:
  """Class names in label order of a data set name used in configs (`'emoset'`,
  `'emotion_folder/emo8'` or a benchmark's short name)."""
  if dataset == 'emoset':
    return EMOSET_CLASSES
  name = dataset.split('/', 1)[1] if dataset.startswith('emotion_folder/') else dataset
  return get_benchmark(name).classes
