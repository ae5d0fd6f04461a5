"""Metric writers (JSON lines + TensorBoard) and the throughput/ETA/memory progress line.

Only process 0 writes files. Values are plain Python floats by the time they get here: the
training loop fetches a step's metrics one step late, so logging never stalls the device.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import resource
import socket
import struct
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
# TensorBoard event files, written directly: TFRecord framing around `Event` protos holding
# scalar summaries. (tensorboardX would do, but it imports PyTorch when it is installed,
# which costs seconds at every start; TensorFlow is not a dependency.)


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           tag: str | None = None, value: float | None = None) -> bytes:
  """A serialised `tensorflow.Event` (wall_time=1, step=2, file_version=3, summary=5)."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if tag is not None:
    summary_value = _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
    out += _field_bytes(5, _field_bytes(1, summary_value))
  return out


class EventFileWriter:
  """Appends scalar summaries to `<logdir>/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}."
                                     f"{socket.gethostname()}")
    self._file = open(self.path, "ab")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, data: bytes):
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", _masked_crc(header)) + data +
                     struct.pack("<I", _masked_crc(data)))

  def scalar(self, tag: str, value: float, step: int):
    self._write(_event(time.time(), step, tag=tag, value=float(value)))

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


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
