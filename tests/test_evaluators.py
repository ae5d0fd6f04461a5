"""The classification evaluator: counts, metrics and confusion files."""
import json

import numpy as np
import pytest

from uniemox_jax.evaluators import classification


def test_evaluation_accumulator_counts_valid_rows_once():
  acc = classification.Accumulator(3)
  topk = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 2, 1]])
  labels = np.array([0, 0, 1, 2])
  acc.add(topk, labels, np.array([True, True, True, False]))
  result = acc.result(["a", "b", "c"])
  assert result["num_examples"] == 3
  assert result["top1"] == pytest.approx(1 / 3) and result["top3"] == 1.0
  assert result["confusion_matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
  assert result["per_class_accuracy"] == {"a": 0.5, "b": 0.0, "c": 0.0}


def test_confusion_files(tmp_path):
  acc = classification.Accumulator(2)
  acc.add(np.array([[0, 1], [1, 0]]), np.array([0, 0]), np.array([True, True]))
  classification.write_confusion(acc.result(["joy", "fear"]), str(tmp_path / "val"))
  assert json.load(open(tmp_path / "val.json"))["top1"] == 0.5
  from PIL import Image
  assert Image.open(tmp_path / "val.png").size[0] > 50
