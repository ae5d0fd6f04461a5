"""Captions built from EmoSet attributes (docs/method.md §2 "Captions").

One caption per image, fed to the frozen CLIP text tower. Sentences, in this order, each
skipped when its attribute is missing (absent, ``None``, empty string or empty list):

  "The scene type of this photo is {scene}."
  "The main subjects are {o1}, {o2} and {o3}."
  "The image has a brightness of {b} and color saturation of {c}."
  "Human facial expression is {expr}."
  "The action being performed is {action}."
  "The overall emotion conveyed is {emotion}."

Example::

  >>> build_caption({'scene': 'amusement_park', 'object': ['Balloon', 'Alarm clock'],
  ...                'brightness': 0.4, 'colorfulness': 1.0}, 'amusement')
  'The scene type of this photo is amusement_park. The main subjects are Balloon and Alarm
  clock. The image has a brightness of 0.4 and color saturation of 1.0. The overall emotion
  conveyed is amusement.'
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# EmoSet annotation keys, in caption order.
ATTRIBUTE_KEYS: tuple[str, ...] = (
    'scene', 'object', 'brightness', 'colorfulness', 'facial_expression', 'human_action')


def _present(value: Any) -> bool:
  if value is None:
    return False
  if isinstance(value, (str, list, tuple)) and len(value) == 0:
    return False
  return True


def format_level(value: Any) -> str:
  """Formats a brightness/colorfulness level the way EmoSet writes it (``0.4``, ``1.0``).

  Levels are fractions in [0, 1] in steps of 0.1; numbers are rounded to one decimal so
  that float noise (``0.30000000000000004``) never reaches the text. Strings pass through.
  """
  if isinstance(value, str):
    return value
  return f'{float(value):.1f}'


def join_objects(objects: Sequence[str] | str) -> str:
  """``X`` · ``X and Y`` · ``X, Y and Z``. Multi-word names stay whole (``Alarm clock``).

  A bare string is one name: it is never split on spaces (the released code splits the
  object string on spaces, which breaks names such as ``Alarm clock``).
  """
  names = [objects] if isinstance(objects, str) else [str(o) for o in objects]
  if len(names) == 1:
    return names[0]
  return ', '.join(names[:-1]) + ' and ' + names[-1]


def build_caption(attrs: Mapping[str, Any], emotion: str,
                  include_emotion: bool = True) -> str:
  """Returns the caption of one image.

  Args:
    attrs: an EmoSet annotation (keys of :data:`ATTRIBUTE_KEYS`; others are ignored).
      ``object`` is a list of names; ``brightness``/``colorfulness`` are numbers in
      [0, 1] in steps of 0.1; ``scene`` is used as given (underscores kept, as in the
      released code).
    emotion: the emotion name, e.g. ``'amusement'``.
    include_emotion: append "The overall emotion conveyed is {emotion}." (the default, as
      the paper does); False for ablations that keep the label out of the text.

  Returns:
    The sentences joined with single spaces.
  """
  get = attrs.get
  sentences = []
  if _present(get('scene')):
    sentences.append(f'The scene type of this photo is {get("scene")}.')
  if _present(get('object')):
    sentences.append(f'The main subjects are {join_objects(get("object"))}.')
  b, c = get('brightness'), get('colorfulness')
  if _present(b) and _present(c):
    sentences.append(f'The image has a brightness of {format_level(b)} and color '
                     f'saturation of {format_level(c)}.')
  elif _present(b):
    sentences.append(f'The image has a brightness of {format_level(b)}.')
  elif _present(c):
    sentences.append(f'The image has a color saturation of {format_level(c)}.')
  if _present(get('facial_expression')):
    sentences.append(f'Human facial expression is {get("facial_expression")}.')
  if _present(get('human_action')):
    sentences.append(f'The action being performed is {get("human_action")}.')
  if include_emotion:
    sentences.append(f'The overall emotion conveyed is {emotion}.')
  return ' '.join(sentences)
