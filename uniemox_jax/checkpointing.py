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
is reported in one notice, set aside as `<step>.unreadable`, and the previous one is used
instead (see `_quiet_abandoned_reads` for the asyncio noise this keeps away).
"""
from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

from uniemox_jax import errors

ITEMS = ("state", "data", "meta")


class NonFiniteCheckpointError(errors.UserError, ValueError):
  """A checkpoint whose state holds NaN or Inf (it cannot be resumed)."""


class NoReadableCheckpointError(errors.UserError, RuntimeError):
  """A checkpoint directory with checkpoints, none of which could be read."""


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
    self.restore_failures: list[tuple[int, str]] = []  # of the last restore: (step, reason)
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

  def _set_aside(self, steps) -> list[str]:
    moved = _set_aside_dirs(self.directory, steps) if jax.process_index() == 0 else []
    self._manager.reload()
    return moved

  # -------------------------------------------------------------------------- restore
  def restore(self, abstract_state: Any, step: int | None = None,
              fallback: bool = True) -> Restored | None:
    """Restores `step` (default: the latest) onto `abstract_state`'s shapes and shardings.

    With `fallback`, a checkpoint that fails to read is set aside (renamed
    `<step>.unreadable`, unless `read_only`) and the next older one is tried; the fallback is
    reported in one notice. Returns None when there is nothing (readable) to restore; the
    reasons are then in `self.restore_failures` (`[(step, reason)]`).
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                f"(have {steps})")
      candidates = [step] + ([s for s in reversed(steps) if s < step] if fallback else [])
    else:
      candidates = list(reversed(steps))
    self.restore_failures = []
    if candidates:
      _quiet_abandoned_reads(self.directory)
    for candidate in candidates:
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any read failure means "unusable checkpoint"
        if not fallback:
          logging.error("checkpoint %d in %s could not be restored (%s)", candidate,
                        self.directory, short_reason(e))
          raise
        self.restore_failures.append((candidate, short_reason(e)))
        continue
      if self.restore_failures:
        bad = [s for s, _ in self.restore_failures]
        moved = [] if self._read_only else self._set_aside(bad)  # never change another run's
        logging.warning(
            "checkpoint %s in %s could not be restored (%s); restored checkpoint %d instead%s",
            ", ".join(map(str, bad)), self.directory,
            self.restore_failures[0][1] if len(bad) == 1 else
            "; ".join(f"{s}: {r}" for s, r in self.restore_failures), candidate,
            f" and moved the unreadable one(s) to {', '.join(moved)}" if moved else "")
      _check_finite(restored.state, candidate, self.directory)
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


def _check_finite(state, step, directory: str = ""):
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating):
      if not bool(jax.numpy.isfinite(leaf).all()):
        where = os.path.join(directory, str(step)) if directory else f"checkpoint {step}"
        raise NonFiniteCheckpointError(
            f"checkpoint {step}: {jax.tree_util.keystr(path)} has non-finite values, so it "
            f"cannot be resumed; move {where} away (e.g. to {where}.nonfinite) to resume from "
            "the checkpoint before it")


def short_reason(error: BaseException, limit: int = 300) -> str:
  """`Type: message` of a restore failure on one line, without TensorStore's spec dump (the
  end of its chain of causes is the specific part, so that is what a cut keeps)."""
  text = " ".join(str(error).split("[tensorstore_spec", 1)[0].split())
  if len(text) > limit:
    text = "..." + text[-(limit - 3):]
  return f"{type(error).__name__}: {text}"


# Checkpoint directories restored from in this process (see `_quiet_abandoned_reads`).
_RESTORED_DIRS: set[str] = set()


def _quiet_abandoned_reads(directory: str) -> None:
  """Keeps the asyncio noise of a failed Orbax restore off stderr (installed once).

  Orbax runs each restore on a fresh asyncio event loop (`asyncio_utils.run_sync`) and closes
  that loop as soon as the restore coroutine ends. When one array of a damaged checkpoint
  fails, the restore ends with that error while the reads of the checkpoint's other arrays
  are still in flight on that loop. Reports of three kinds follow, one per abandoned array
  (hundreds for a real model), burying the one-line notice:
    * as each TensorStore read completes, its callback calls `loop.call_soon_threadsafe` on
      the closed loop; Python reports the `RuntimeError('Event loop is closed')` through
      `sys.unraisablehook` (with no object);
    * the abandoned tasks and futures that failed the same way are garbage-collected with
      their exception unread, which asyncio logs as "Task/Future exception was never
      retrieved" (naming the checkpoint's files).
  They all concern a checkpoint already given up on (its failure is in our notice), so
  exactly these reports are dropped: the unraisable ones by their message, asyncio's only
  when they name a checkpoint directory restored from here. Every other unraisable exception
  and asyncio message still reaches its usual place.
  """
  _RESTORED_DIRS.add(os.path.abspath(directory))
  if not getattr(sys.unraisablehook, "_drops_closed_loop_reports", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      exc = unraisable.exc_value
      if (unraisable.object is None and isinstance(exc, RuntimeError)
          and str(exc) == "Event loop is closed"):
        return
      previous(unraisable)

    hook._drops_closed_loop_reports = True  # pylint: disable=protected-access
    sys.unraisablehook = hook
  asyncio_logger = std_logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedReads) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbandonedReads())


class _AbandonedReads(std_logging.Filter):
  """Drops asyncio's reports of reads left behind by a failed restore (see above)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    text = record.getMessage()
    if not text.startswith(("Task exception was never retrieved",
                            "Future exception was never retrieved",
                            "Task was destroyed but it is pending")):
      return True
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not any(d in text for d in _RESTORED_DIRS)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `tree` with the given shardings (a restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)
