"""The README's quick start, end to end from the shell: `bash demo.sh` (fewer steps)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path):
  out = tmp_path / "demo"
  env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1",
             DEMO_PRETRAIN_STEPS="40", DEMO_FINETUNE_STEPS="100")
  proc = subprocess.run(["bash", "demo.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "test top-1" in proc.stdout and "demo finished" in proc.stdout
  results = json.load(open(out / "finetune" / "results.json"))
  assert results["test_num_examples"] == 128
  # 8 classes, chance 0.125; the issue asks >= 0.5 of the full demo, and even this shortened
  # run reaches about 0.89 (0.891 measured on Python 3.11, jax 0.10).
  assert results["test_top1"] >= 0.5
  for path in ("pretrain/done.json", "pretrain/run_info.json", "pretrain/metrics.jsonl",
               "finetune/eval/test_best.png", "tiny_clip/config.json",
               "tfds/emoset/1.0.0/bad_images.json"):
    assert os.path.exists(out / path), path
