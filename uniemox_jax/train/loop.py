"""What every task's training loop shares: the train state, sharded initialisation, AOT
compilation with memory logging, pre-emption handling, checkpoint cadence, one-step-late
metrics, the non-finite guard and progress logging.

Pre-emption (SIGTERM, as a TPU VM or a cluster scheduler sends it) may arrive at any time:
while compiling, training, evaluating or while an asynchronous save is being written. The
handler only sets a flag; the flag is checked after compilation, before every step and after
every evaluation batch. When set, the loop waits for any save in flight, saves the current
state (marking an interrupted evaluation so the resumed run redoes it) and returns.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable

import flax
import jax
import numpy as np
from absl import logging

from uniemox_jax import checkpointing, errors, metrics as metrics_lib, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # trainable parameters (float32)
  opt_state: Any
  rng: jax.Array           # uint32[2] base key; each step uses fold_in(rng, step)


class Preempted(Exception):
  """Raised inside the loop (or an evaluation) when a SIGTERM was received."""

  def __init__(self, where: str):
    super().__init__(f"pre-empted during {where}")
    self.where = where


class Preemption:
  """Turns SIGTERM into a flag that the loop polls (installed for the duration of a run)."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will save a checkpoint and stop at the next safe "
                    "point", signum)
    self._flag.set()

  def requested(self, step: int | None = None) -> bool:
    """Whether to stop here. With several processes every process must call this at the
    same points (each training step, each evaluation batch), and all get the same answer: a
    SIGTERM seen by any one of them, or the coordination service's pre-emption notice for
    `step`, stops all of them together, so none is left waiting in a collective."""
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    notice = step is not None and multihost_utils.reached_preemption_sync_point(step)
    return bool(notice or np.any(process_flags(local)))

  def check(self, where: str, step: int | None = None):
    if self.requested(step):
      raise Preempted(where)

  def close(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def process_flags(flag: bool) -> np.ndarray:
  """Every process's `flag`, in process order (one small all-gather when there are several)."""
  if jax.process_count() == 1:
    return np.asarray([bool(flag)])
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32)), bool)


def all_processes_agree(flag: bool) -> bool:
  """True when `flag` is true on every process."""
  return bool(np.all(process_flags(flag)))


def same_on_all_processes(hex_digest: str) -> str:
  """Process 0's value of a hex digest, on every process."""
  if jax.process_count() == 1:
    return hex_digest
  from jax.experimental import multihost_utils
  raw = np.frombuffer(bytes.fromhex(hex_digest), np.uint8)
  return bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8)).hex()


def create_sharded_state(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array, mesh,
                         min_shard_size: int = sharding.MIN_SHARDED_SIZE):
  """Initialises the state directly into its shardings (shapes first, then a jitted init).

  Returns `(state, shardings)`; the shardings are reused for the step's in/out shardings and
  as the restore target.
  """
  abstract = jax.eval_shape(init_fn, rng)
  shardings = TrainState(
      step=sharding.replicated(mesh),
      params=sharding.tree_shardings(mesh, abstract.params, min_shard_size),
      opt_state=sharding.tree_shardings(mesh, abstract.opt_state, min_shard_size),
      rng=sharding.replicated(mesh))
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(state: TrainState, shardings: TrainState):
  return checkpointing.abstract_like(state, shardings)


def aot_compile(fn, *args, name: str = "step"):
  """Lowers and compiles `fn` for `args` once, logging compile time and memory use."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  info = {"compile_s": seconds}
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      gib = 1024.0 ** 3
      info.update(
          temp_gib=getattr(mem, "temp_size_in_bytes", 0) / gib,
          args_gib=getattr(mem, "argument_size_in_bytes", 0) / gib,
          output_gib=getattr(mem, "output_size_in_bytes", 0) / gib)
  except Exception:  # noqa: BLE001 - not every backend reports memory
    pass
  logging.info("compiled %s in %.1f s; memory per device (GiB): %s", name, seconds,
               {k: round(v, 3) for k, v in info.items() if k != "compile_s"})
  return compiled, info


def total_steps(config, steps_per_epoch: int) -> int:
  return int(config.total_steps) if config.total_steps > 0 else int(
      round(config.total_epochs * steps_per_epoch))


def keep_period(config, steps_per_epoch: int) -> int:
  """Steps between checkpoints kept for good (`config.checkpoint.keep_every_epochs`; 0: none)."""
  epochs = config.checkpoint.keep_every_epochs
  return max(1, int(round(epochs * steps_per_epoch))) if epochs else 0


def warmup_steps(config, steps_per_epoch: int, total: int) -> int:
  if config.total_steps > 0 and config.total_epochs > 0:
    # Smoke runs cut by total_steps keep the warm-up fraction of the full schedule.
    return int(round(total * config.warmup_epochs / config.total_epochs))
  return int(round(config.warmup_epochs * steps_per_epoch))


class NonFiniteLoss(errors.NonFiniteError):
  """A step produced a non-finite loss, loss term, gradient norm or parameter norm; nothing
  from that step on was saved (main.py exits with errors.EXIT_NON_FINITE)."""


# Logged metrics that must stay finite: the loss and its terms, and every norm. The parameter
# norm is of the parameters *after* the step, so it is the one that says whether the state
# about to be saved is sound (with an absurd lr it overflows a step before the loss does).
GUARDED = ("loss", "grad_norm", "param_norm")


def non_finite(values: dict) -> list[str]:
  """The guarded metrics of one step (`GUARDED`, `loss_*`, `*_norm`) that are NaN or Inf."""
  keys = [k for k in values if k in GUARDED or k.startswith("loss_") or k.endswith("_norm")]
  return sorted((k for k in keys if not np.isfinite(values[k])),
                key=lambda k: (k not in GUARDED, GUARDED.index(k) if k in GUARDED else 0, k))


@dataclasses.dataclass
class Loop:
  """The step loop shared by pre-training and fine-tuning.

  Attributes:
    step_fn: compiled `(state, batch) -> (state, metrics)`; metrics are scalars.
    batches: a `pipeline.BatchIterator` (has `get_state()` for the checkpoint).
    eval_fn: optional `(state, step) -> dict` run every `eval_every` steps and at the end;
      its result is logged and, with `best_metric`, recorded with the checkpoint.
  """
  step_fn: Callable
  batches: Any
  checkpointer: checkpointing.Checkpointer
  writer: metrics_lib.MetricWriter
  preemption: Preemption
  total_steps: int
  global_batch: int
  steps_per_epoch: int
  save_every: int = 0
  keep_every: int = 0       # also save (and the checkpointer keeps) every this many steps
  log_every: int = 50
  eval_fn: Callable[[TrainState, int], dict] | None = None
  eval_every: int = 0
  meta: dict = dataclasses.field(default_factory=dict)

  def _meta(self, step: int, **extra) -> dict:
    return dict(self.meta, step=int(step), epoch=step / max(self.steps_per_epoch, 1), **extra)

  def save(self, state: TrainState, step: int, metrics: dict | None = None, **meta):
    self.checkpointer.wait()
    self.checkpointer.save(step, state, data=self.batches.get_state(),
                           meta=self._meta(step, **meta), metrics=metrics)

  def run(self, state: TrainState, start_step: int, eval_pending: bool = False) -> tuple:
    """Runs from `start_step` to `total_steps`. Returns `(state, status)` where status is
    'done' or 'preempted'."""
    progress = metrics_lib.Progress(self.total_steps, self.global_batch, start_step)
    pending: tuple[int, Any] | None = None
    window: list[dict] = []
    step = start_step

    def drain(flush: bool = False):
      nonlocal pending
      if pending is None:
        if flush and window:
          log_window(step)
        return
      done_step, device_metrics = pending
      pending = None
      values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      bad = non_finite(values)
      if bad:
        # Every save happens after its step's metrics passed this check, so what is on disk
        # is from before the divergence.
        self.checkpointer.wait()
        latest = self.checkpointer.latest_step()
        norms = ", ".join(f"{k}={values[k]:.4g}" for k in GUARDED if k in values)
        last = (f"the last good checkpoint is step {latest} in {self.checkpointer.directory}"
                if latest is not None else
                f"no checkpoint was written before it (in {self.checkpointer.directory})")
        raise NonFiniteLoss(
            f"non-finite {', '.join(bad)} at step {done_step} ({norms}). Training stopped; "
            f"{last} (nothing after it was saved). Lower the learning rate (config.optim.lr / "
            "base_lr), enable config.optim.grad_clip, or run in float32 "
            "(config.model.dtype=float32) to investigate.")
      window.append(values)
      if flush or done_step % self.log_every == 0 or done_step == self.total_steps:
        log_window(done_step)

    wait = {"seconds": getattr(self.batches, "wait_seconds", 0.0), "time": time.perf_counter()}

    def log_window(done_step: int):
      mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
      window.clear()
      now, waited = time.perf_counter(), getattr(self.batches, "wait_seconds", 0.0)
      # Fraction of the wall time the loop sat waiting for input: near 0 when the input
      # pipeline keeps up, near 1 when it is the bottleneck.
      mean["data_wait_frac"] = (waited - wait["seconds"]) / max(now - wait["time"], 1e-9)
      wait.update(seconds=waited, time=now)
      mean.update(progress.measure(done_step))
      mean.update(metrics_lib.device_memory())
      mean["epoch"] = done_step / max(self.steps_per_epoch, 1)
      self.writer.write(done_step, mean, prefix="train/")
      metrics_lib.log(done_step, self.total_steps, mean)

    def evaluate(at_step: int) -> dict | None:
      drain()
      result = self.eval_fn(state, at_step)
      wait.update(seconds=getattr(self.batches, "wait_seconds", 0.0), time=time.perf_counter())
      self.writer.write(at_step, result, prefix="val/")
      logging.info("eval at step %d: %s", at_step,
                   {k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
      progress.reset(at_step)
      return result

    try:
      self.preemption.check("compilation", step)
      if eval_pending and self.eval_fn is not None:
        logging.info("redoing the evaluation at step %d that a pre-emption interrupted", step)
        # Recorded with the restored checkpoint (best-checkpoint retention reads it there).
        self.checkpointer.record_metrics(step, evaluate(step))
      for step in range(start_step, self.total_steps):
        self.preemption.check("training", step)
        batch = next(self.batches)
        state, device_metrics = self.step_fn(state, batch)
        drain()  # the previous step's metrics: ready by now, so this does not stall
        pending = (step + 1, device_metrics)
        done = step + 1
        is_last = done == self.total_steps
        eval_now = self.eval_fn is not None and (is_last or (
            self.eval_every and done % self.eval_every == 0))
        result = None
        if eval_now:
          result = evaluate(done)
        if is_last or eval_now or any(n and done % n == 0
                                      for n in (self.save_every, self.keep_every)):
          drain()
          self.save(state, done, metrics=result)
      drain()
      self.checkpointer.wait()
      self.writer.flush()
      return state, "done"
    except Preempted as e:
      drain(flush=True)  # the last finished step's metrics: logged, and checked before saving
      step_now = int(jax.device_get(state.step))
      logging.warning("%s at step %d: saving a checkpoint, then stopping. Run the same "
                      "command again to resume.", e, step_now)
      self.checkpointer.wait()
      if step_now not in self.checkpointer.all_steps():
        self.save(state, step_now, eval_pending=e.where == "evaluation")
      # (An existing checkpoint of this step is either complete with its evaluation, or was
      # saved with `eval_pending` and has no recorded result yet: resuming redoes it.)
      self.checkpointer.wait()
      self.writer.flush()
      return state, "preempted"

