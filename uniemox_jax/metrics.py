"""Metric writers (JSON lines + TensorBoard) and the throughput/ETA/memory progress line.

Only process 0 writes files. Values are plain Python floats by the time they get here: the
training loop fetches a step's metrics one step late, so logging never stalls the device.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import resource
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


class MetricWriter:
  """Appends `{"step": s, **metrics}` to `<workdir>/metrics.jsonl`; mirrors to TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = ""):
    if not self._enabled:
      return
    row = {"step": int(step)}
    for key, value in metrics.items():
      value = _to_python(value)
      if value is None:
        continue
      row[prefix + key] = value
      if self._tb is not None and isinstance(value, (int, float)):
        self._tb.scalar(prefix + key, value, int(step))
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


# --------------------------------------------------------------------------------------
# TensorBoard event files through the `tensorboard` package's own writer and protos (it
# imports neither TensorFlow nor PyTorch; tensorboardX would import PyTorch when installed).


class EventFileWriter:
  """Scalar summaries in `<logdir>/events.out.tfevents.*`."""

  def __init__(self, logdir: str):
    from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
    os.makedirs(logdir, exist_ok=True)
    self._writer = event_file_writer.EventFileWriter(logdir, flush_secs=30)

  def scalar(self, tag: str, value: float, step: int):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                   simple_value=float(value))])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def _to_python(value):
  if isinstance(value, (np.ndarray, jax.Array)):
    value = np.asarray(value)
    if value.ndim:
      return None
    value = value.item()
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)
  return value


def read_metrics(workdir: str) -> list[dict]:
  """All rows of `<workdir>/metrics.jsonl` (for tests, notebooks and tools)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class _QuietLibraries(std_logging.Filter):
  """Keeps the libraries' INFO chatter (every Orbax save logs dozens of lines) out of the
  training log; their warnings and errors still come through."""
  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/etils/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def quiet_library_logs():
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def device_memory() -> dict:
  """Peak/current memory of the first local device in GiB; host RSS where devices report none."""
  out = {}
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - some backends do not implement it
    stats = {}
  gib = 1024.0 ** 3
  if "bytes_in_use" in stats:
    out["mem_gib"] = stats["bytes_in_use"] / gib
  if "peak_bytes_in_use" in stats:
    out["mem_peak_gib"] = stats["peak_bytes_in_use"] / gib
  if not out:
    out["host_rss_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib
  return out


class Progress:
  """Images/s, images/s/device, step time and ETA over each logging interval."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self.num_devices = jax.device_count()
    self._t0 = time.perf_counter()
    self._step0 = start_step

  def reset(self, step: int):
    self._t0 = time.perf_counter()
    self._step0 = step

  def measure(self, step: int) -> dict:
    now = time.perf_counter()
    steps = max(step - self._step0, 1)
    dt = max(now - self._t0, 1e-9)
    step_time = dt / steps
    images = self.global_batch * steps / dt
    out = {"step_time_ms": 1000 * step_time, "images_per_sec": images,
           "images_per_sec_per_device": images / self.num_devices,
           "eta_min": (self.total_steps - step) * step_time / 60.0}
    self._t0, self._step0 = now, step
    return out


def format_line(step: int, total: int, metrics: Mapping[str, Any]) -> str:
  parts = [f"step {step}/{total}"]
  for key, value in metrics.items():
    value = _to_python(value)
    if isinstance(value, float):
      parts.append(f"{key}={value:.4g}")
    elif value is not None:
      parts.append(f"{key}={value}")
  return " ".join(parts)


def log(step: int, total: int, metrics: Mapping[str, Any]):
  logging.info("%s", format_line(step, total, metrics))
