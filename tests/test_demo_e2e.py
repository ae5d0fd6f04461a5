"""The README's quick start, end to end from the shell: `bash demo.sh`, shortened for CI."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path):
  out = tmp_path / "demo"
  env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", DEMO_TEACHER_STEPS="150",
             DEMO_PRETRAIN_STEPS="300", DEMO_FINETUNE_STEPS="60")
  proc = subprocess.run(["bash", "demo.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "| linear probe top-1 (CLS) |" in proc.stdout and "demo finished" in proc.stdout
  summary = json.load(open(out / "summary.json"))
  cells = summary["cells"]
  assert summary["test_examples"] == 192 and not summary["missing"]
  # This shortened run, measured with seeds 0 and 1 (Python 3.12, jax 0.12): linear probe
  # UniEmoX 0.583 / 0.552 against random init 0.203 / 0.193, MAE only 0.219 / 0.198; student
  # zero-shot 0.641 / 0.589 (chance 0.125). The margins asked here are well inside those.
  probe = cells["linear_probe"]
  assert probe["uniemox"] >= probe["random"] + 0.2, probe
  assert probe["uniemox"] >= probe["mae"] + 0.2, probe
  assert cells["zeroshot"]["uniemox"] >= 0.25, cells["zeroshot"]
  assert cells["knn"]["uniemox"] > cells["knn"]["random"], cells["knn"]
  for path in ("pretrain/done.json", "pretrain/run_info.json", "pretrain/metrics.jsonl",
               "readouts/uniemox/finetune/eval/test_best.png", "tiny_clip/config.json",
               "tiny_clip/zeroshot.json", "summary.md", "tfds/emoset/1.0.0/bad_images.json"):
    assert os.path.exists(out / path), path
