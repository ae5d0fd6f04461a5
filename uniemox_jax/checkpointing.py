"""Orbax checkpoints: model + optimizer + step + RNG + data-iterator state, in one place.

Layout: `<workdir>/checkpoints/<step>/{state, data, meta}`.
  state  the `TrainState` pytree (student parameters, optimizer state, step, RNG key);
         the frozen teacher is never saved.
  data   the Grain iterator state right after the last consumed batch (JSON).
  meta   JSON: config hash, epoch, flags such as `eval_pending`.

Retention keeps the last `keep` checkpoints *and* (fine-tuning) the best `keep_best` by a
validation metric *and* every checkpoint whose step is a multiple of `keep_period` (e.g. the
pre-training checkpoints at epochs 100 and 200); the policies are a union, so keeping the
best never evicts the latest.
Saves are asynchronous; `wait()` before exiting. Restores always go through an abstract
target carrying the *current* shardings, so a checkpoint written on 8 devices restores on 1
(or on CPU) and vice versa. A latest checkpoint that cannot be read (truncated, corrupted)
is reported and the previous one is used instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

ITEMS = ("state", "data", "meta")


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data: Any
  meta: dict


METRICS_FILE = "checkpoint_metrics.json"


class _KeepBest(cm.PreservationPolicy):
  """Preserves the `n` checkpoints with the highest recorded metric.

  Orbax keeps the metrics passed to `save` only in memory, so after a restart its own BestN
  would forget the best checkpoint (and delete it). Our record lives in a JSON file next to
  the checkpoints and survives restarts.
  """

  def __init__(self, owner: "Checkpointer", n: int):
    self._owner = owner
    self.n = n

  def should_preserve(self, checkpoints, *, context):
    del context
    best = set(self._owner.best_steps(self.n))
    return [info.step in best for info in checkpoints]


class Checkpointer:
  """A thin, opinionated wrapper around `ocp.CheckpointManager`.

  Args:
    directory: where checkpoints live (created if needed).
    keep: how many of the most recent checkpoints to keep.
    keep_best: also keep this many best checkpoints by `best_metric` (higher is better);
      0 disables.
    keep_period: also keep, for good, every checkpoint whose step is a multiple of this;
      0 disables.
    async_save: write in a background thread (the training loop continues).
    read_only: only read (another run's checkpoints: nothing is created or cleaned up).
  """

  def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 0,
               best_metric: str = "val_top1", async_save: bool = True, read_only: bool = False,
               keep_period: int = 0):
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self._read_only = read_only
    self._metrics_path = os.path.join(self.directory, METRICS_FILE)
    self._record: dict[int, dict] = {}
    if os.path.exists(self._metrics_path):
      with open(self._metrics_path) as f:
        self._record = {int(k): v for k, v in json.load(f).items()}
    policies = [cm.LatestN(n=max(1, keep))]
    if keep_best:
      policies.append(_KeepBest(self, keep_best))
    if keep_period:
      policies.append(cm.EveryNSteps(interval_steps=int(keep_period)))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save and not read_only, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  # ----------------------------------------------------------------------------- save
  def save(self, step: int, state: Any, *, data: Any = None, meta: dict | None = None,
           metrics: dict | None = None) -> bool:
    """Starts an (asynchronous) save of `step`; returns False if that step already exists."""
    if step in self._manager.all_steps():
      logging.info("checkpoint %d already exists; not saving again", step)
      return False
    if metrics:
      self.record_metrics(step, metrics)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data if data is not None else {}),
        meta=ocp.args.JsonSave(dict(meta or {})))
    saved = self._manager.save(step, args=args, metrics=metrics, force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  # -------------------------------------------------------------------------- queries
  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def record_metrics(self, step: int, metrics: dict):
    """Records evaluation `metrics` of checkpoint `step` (the best-checkpoint ranking)."""
    self._record[int(step)] = {k: float(v) for k, v in metrics.items()
                               if isinstance(v, (int, float, np.floating, np.integer))}
    self._write_record()

  def _write_record(self):
    if jax.process_index() != 0 or self._read_only:
      return
    os.makedirs(self.directory, exist_ok=True)
    tmp = f"{self._metrics_path}.tmp"
    with open(tmp, "w") as f:
      json.dump({str(k): v for k, v in sorted(self._record.items())}, f, indent=1)
    os.replace(tmp, self._metrics_path)

  def best_steps(self, n: int) -> list[int]:
    """The `n` steps with the highest `best_metric` (ties: the earlier step first)."""
    scored = [(v[self.best_metric], -s) for s, v in self._record.items()
              if self.best_metric in v]
    return [-neg for _, neg in sorted(scored, reverse=True)[:n]]

  def best_step(self) -> int | None:
    """The existing step with the highest recorded `best_metric` (None without metrics)."""
    existing = set(self.all_steps())
    ranked = [s for s in self.best_steps(len(self._record)) if s in existing]
    return ranked[0] if ranked else None

  def metrics(self, step: int) -> dict | None:
    return self._record.get(int(step))

  def _set_aside(self, steps):
    if jax.process_index() == 0:
      for path in _set_aside_dirs(self.directory, steps):
        logging.warning("moved the unreadable checkpoint to %s", path)
    self._manager.reload()

  # -------------------------------------------------------------------------- restore
  def restore(self, abstract_state: Any, step: int | None = None,
              fallback: bool = True) -> Restored | None:
    """Restores `step` (default: the latest) onto `abstract_state`'s shapes and shardings.

    With `fallback`, a checkpoint that fails to read is logged and the next older one is
    tried. Returns None when there is nothing (readable) to restore.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                f"(have {steps})")
      candidates = [step] + ([s for s in reversed(steps) if s < step] if fallback else [])
    else:
      candidates = list(reversed(steps))
    for i, candidate in enumerate(candidates):
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any read failure means "unusable checkpoint"
        logging.error("checkpoint %d in %s could not be restored (%s: %s)%s", candidate,
                      self.directory, type(e).__name__, str(e)[:500],
                      "; falling back to the previous one" if fallback else "")
        if not fallback:
          raise
        continue
      if i:
        logging.warning("restored checkpoint %d instead of the unreadable %s", candidate,
                        candidates[:i])
        if not self._read_only:  # another run's directory (config.resume) is never changed
          self._set_aside(candidates[:i])
      _check_finite(restored.state, candidate)
      return Restored(candidate, restored.state, restored.data, dict(restored.meta or {}))
    return None


def _set_aside_dirs(directory: str, steps) -> list[str]:
  """Renames unreadable step directories to `<step>.unreadable` (kept for inspection, out of
  the way of new saves of the same step)."""
  moved = []
  for step in steps:
    src = os.path.join(directory, str(step))
    if os.path.isdir(src):
      dst = f"{src}.unreadable"
      n = 1
      while os.path.exists(dst):
        dst, n = f"{src}.unreadable{n}", n + 1
      os.rename(src, dst)
      moved.append(dst)
  return moved


def _check_finite(state, step):
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating):
      if not bool(jax.numpy.isfinite(leaf).all()):
        raise ValueError(f"checkpoint {step}: {jax.tree_util.keystr(path)} has non-finite "
                         "values")


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `tree` with the given shardings (a restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)
