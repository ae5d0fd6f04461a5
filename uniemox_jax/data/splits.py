"""The identity of a data set's split: a hash of its example ids per split, shared by the
split tool's manifest (`tools/split.py`) and the run record (`train/run_info.py`), so a run
says which split it was trained and tested on."""
from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Mapping, Sequence

from uniemox_jax.data.classes import SPLITS


def nfc(name: str) -> str:
  """Unicode NFC: macOS filesystems store names decomposed (NFD); normalised, ids and their
  order agree across machines."""
  return unicodedata.normalize('NFC', name)


def manifest_hash(splits: Mapping[str, Sequence[str]]) -> str:
  """SHA-256 (hex) of the id lists: ``{split: sorted ids}`` for train, val, test as compact
  UTF-8 JSON. The order of ids within a split does not matter."""
  missing = [s for s in SPLITS if s not in splits]
  if missing:
    raise KeyError(f'manifest_hash needs the splits {list(SPLITS)}; missing {missing}')
  canonical = {s: sorted(nfc(str(i)) for i in splits[s]) for s in SPLITS}
  data = json.dumps(canonical, ensure_ascii=False, separators=(',', ':'), sort_keys=False)
  return hashlib.sha256(data.encode('utf-8')).hexdigest()
