"""What a run records about itself: the resolved config, the environment and a data manifest.

`<workdir>/run_info.json` is (re)written at every start; earlier starts are kept in
`<workdir>/run_info_history.jsonl`, so a resumed run shows whether anything changed.
`<workdir>/done.json` marks a run that reached its last step (scripts that restart
pre-empted jobs check for it).
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from typing import Mapping, Sequence

import jax

from uniemox_jax.data.classes import SPLITS
from uniemox_jax.data.splits import manifest_hash

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "tensorflow-datasets", "transformers", "numpy", "pillow", "ml_collections")


def versions() -> dict:
  out = {"python": sys.version.split()[0], "platform": platform.platform()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def data_manifest(name: str, splits: Mapping[str, Sequence]) -> dict:
  """Per split: size and a SHA-256 over the example ids in source order (or, when the source
  exposes no ids, over its length and the prepared files' TFDS metadata)."""
  out = {"dataset": name, "splits": {}}
  ids = {split: getattr(source, "example_ids", None) for split, source in splits.items()}
  if all(ids.get(s) is not None for s in SPLITS):
    # The same hash as `tools.split`'s manifest of these splits (when nothing was left out).
    out["split_manifest_sha256"] = manifest_hash({s: ids[s] for s in SPLITS})
  for split, source in splits.items():
    ids = getattr(source, "example_ids", None)
    digest = hashlib.sha256()
    if ids is not None:
      for example_id in ids:
        digest.update(str(example_id).encode())
        digest.update(b"\n")
    else:
      digest.update(str(len(source)).encode())
    out["splits"][split] = {"num_examples": len(source), "ids_sha256": digest.hexdigest()}
  return out


def write(workdir: str, config, splits: Mapping[str, Sequence]) -> dict:
  """Writes `run_info.json` (process 0) and returns the data manifest (every process)."""
  manifest = data_manifest(config.data.name, splits)
  if jax.process_index() != 0:
    return manifest
  os.makedirs(workdir, exist_ok=True)
  info = {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "argv": sys.argv,
      "config": json.loads(config.to_json_best_effort()),
      "versions": versions(),
      "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                  "kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform},
      "data": manifest,
  }
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump(info, f, indent=1)
  with open(os.path.join(workdir, "run_info_history.jsonl"), "a") as f:
    f.write(json.dumps(info) + "\n")
  return manifest


def mark_done(workdir: str, summary: dict):
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "done.json"), "w") as f:
    json.dump(dict(summary, time=datetime.datetime.now(datetime.timezone.utc).isoformat()), f)
