"""Metric writers: metrics.jsonl and TensorBoard event files."""
import json
import os
import struct

import numpy as np
import pytest

from uniemox_jax import metrics


def test_event_file_is_valid_tensorboard(tmp_path):
  """Our event writer's records parse with TensorBoard's own protobuf and CRC."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(7, {"loss": 1.25, "lr": np.float32(1e-3), "vector": np.zeros(3)}, prefix="train/")
  writer.close()
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [
      {"step": 7, "train/loss": 1.25, "train/lr": pytest.approx(1e-3)}]
  (name,) = os.listdir(tmp_path / "tensorboard")
  data = open(tmp_path / "tensorboard" / name, "rb").read()
  events, i = [], 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    record = data[i + 12:i + 12 + length]
    (crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
    masked = (((crc32c(record) >> 15) | (crc32c(record) << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert crc == masked
    event = event_pb2.Event()
    event.ParseFromString(record)
    events.append(event)
    i += 16 + length
  assert events[0].file_version == "brain.Event:2"
  scalars = {v.tag: (e.step, v.simple_value) for e in events[1:] for v in e.summary.value}
  assert scalars == {"train/loss": (7, 1.25), "train/lr": (7, pytest.approx(1e-3))}
