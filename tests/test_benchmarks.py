"""The pre-training step benchmark runs end to end at a tiny size and reports sane figures."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pretrain_step_benchmark_tiny():
  # Its own process: the script parses absl flags. The text tower runs every step
  # (cache_text=false) so both teacher towers are exercised; --peak_tflops turns on MFU.
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "pretrain_step.py"),
         "--variant=mu", "--teacher=tiny", "--image_size=32", "--batch=4", "--dtype=float32",
         "--cache_text=false", "--warmup=1", "--steps=2", "--peak_tflops=1.0",
         "--config.loss.nce=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd="/")
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout  # exactly one JSON line on stdout
  r = json.loads(lines[0])
  assert (r["variant"], r["teacher"], r["batch"], r["image_size"], r["patch_size"]) == (
      "mu", "tiny", 4, 32, 8)
  assert r["dtype"] == r["teacher_dtype"] == "float32" and r["cache_text"] is False
  assert r["devices"] == 1 and r["steps"] == 2
  assert r["compile_s"] > 0 and r["ms_per_step"] > 0
  assert abs(r["images_per_sec"] - 4 / (r["ms_per_step"] / 1e3)) < 1e-3 * r["images_per_sec"]
  assert r["peak_bytes"] > 0 and r["peak_source"]
  # 16 patches, mask 0.75: 4 visible + CLS in the encoder, 16 + CLS in the decoder.
  assert (r["encoder_tokens_per_view"], r["decoder_tokens"]) == (5, 17)
  assert r["flops_per_step_analytic"] == (r["flops_student_analytic"]
                                          + r["flops_teacher_analytic"])
  # The analytic count ignores elementwise work; XLA counts everything: same ballpark.
  assert r["flops_per_step_xla"] is not None
  assert 0.5 < r["flops_per_step_xla"] / r["flops_per_step_analytic"] < 2.0
  assert r["mfu_source"] == "xla cost_analysis" and r["peak_tflops_per_device"] == 1.0
  assert 0 < r["mfu"] == r["mfu_xla"]
  assert r["loss"] == r["loss"]  # finite enough not to be NaN
  assert "img/s" in proc.stderr  # the readable summary


@pytest.mark.slow
def test_input_pipeline_benchmark_tiny(tmp_path):
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "input_pipeline.py"),
         "--num_images=16", "--width=64", "--height=48", "--image_size=32", "--batch=4",
         "--min_seconds=0.5", "--min_batches=2", "--workers=0,1", "--warmup=1",
         f"--keep_data={tmp_path / 'data'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert {(r["pipeline"], r["workers"]) for r in rows} == {
      (p, w) for p in ("pretrain", "finetune", "eval") for w in (0, 1)}
  assert all(r["images_per_s"] > 0 and r["images_per_s_per_core"] > 0 for r in rows)
  # --keep_data never reuses data generated with other settings: it says so instead.
  proc = subprocess.run(cmd + ["--num_images=24", "--pipelines=eval", "--workers=0"],
                        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert proc.returncode != 0
  assert "--keep_data=" in proc.stderr and "'num_images': 24" in proc.stderr
