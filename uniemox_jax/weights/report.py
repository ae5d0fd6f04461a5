"""The load report: what a weight conversion did, key by key (loaded, missing, unexpected,
skipped with the reason, resized, newly initialised), logged after every load so that no key
is dropped silently."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from absl import logging


@dataclasses.dataclass
class LoadReport:
  """What a conversion did, key by key (keys are in the file's, i.e. PyTorch MAE, naming).

  Attributes:
    source: the file or directory read.
    loaded: file keys copied into the returned params.
    missing: target parameters the file does not hold (absent from the returned params unless
      also listed in `initialized`).
    unexpected: file keys that map to nothing (a typo, another architecture, a newer format).
    skipped: known keys deliberately not loaded → why (fixed tables that are recomputed, the
      MAE encoder norm and decoder when building a classifier, a head with another class count).
    resized: key → (shape in the file, shape loaded) for interpolated position embeddings.
    initialized: target parameters filled with a fresh initialisation (classifier head).
    notes: anything else a user should know (numerics that differ, sizes inferred).
  """
  source: str = ""
  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
      default_factory=dict)
  initialized: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    """True when nothing is missing (other than freshly initialised) and nothing unexpected."""
    return not self.unexpected and not (set(self.missing) - set(self.initialized))

  def summary(self) -> str:
    lines = [f"{self.source or '<state dict>'}: loaded {len(self.loaded)} tensors"]
    if self.missing:
      lines.append(f"  missing ({len(self.missing)}): {_compress_keys(self.missing)}")
    if self.unexpected:
      lines.append(f"  unexpected ({len(self.unexpected)}): {_compress_keys(self.unexpected)}")
    if self.skipped:
      by_reason: dict[str, list[str]] = {}
      for key, reason in self.skipped.items():
        by_reason.setdefault(reason, []).append(key)
      for reason, keys in by_reason.items():
        lines.append(f"  skipped ({len(keys)}): {_compress_keys(keys)} — {reason}")
    for key, (old, new) in self.resized.items():
      lines.append(f"  resized: {key} {list(old)} -> {list(new)}")
    if self.initialized:
      lines.append(f"  newly initialised ({len(self.initialized)}): "
                   f"{_compress_keys(self.initialized)}")
    for note in self.notes:
      lines.append(f"  note: {note}")
    return "\n".join(lines)

  def log(self) -> None:
    if self.ok and not self.notes:
      logging.info("%s", self.summary())
    else:
      logging.warning("%s", self.summary())

  def check_strict(self, allowed_missing: Iterable[str] = ()) -> None:
    """Raises ValueError when keys are unexpected, or missing beyond `allowed_missing`."""
    missing = [k for k in self.missing if k not in set(allowed_missing)]
    if missing or self.unexpected:
      raise ValueError(
          f"strict loading of {self.source or 'a state dict'} failed: "
          f"missing keys {missing}; unexpected keys {self.unexpected}. "
          "Load with strict=False to accept a partial checkpoint (see the report).")


def _compress_keys(keys: Iterable[str], limit: int = 40) -> str:
  """`blocks.0.norm1.weight, blocks.1.norm1.weight` → `blocks.{0,1}.norm1.weight`."""
  groups: dict[str, list[str]] = {}
  for key in keys:
    numbers = re.findall(r"(?<=\.)\d+(?=\.)", key)
    pattern = re.sub(r"(?<=\.)\d+(?=\.)", "#", key, count=1) if len(numbers) == 1 else key
    groups.setdefault(pattern, []).append(numbers[0] if len(numbers) == 1 else key)
  parts = []
  for pattern, members in groups.items():
    if "#" in pattern:
      idx = sorted(int(m) for m in members)
      if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
        label = f"{{{idx[0]}..{idx[-1]}}}"
      else:
        label = "{" + ",".join(map(str, idx)) + "}" if len(idx) > 1 else str(idx[0])
      parts.append(pattern.replace("#", label))
    else:
      parts.extend(members)
  if len(parts) > limit:
    parts = parts[:limit] + [f"... ({len(parts) - limit} more)"]
  return ", ".join(parts)
