"""Every shell command in the README runs: on the generated look-alikes of the real files
(same names and layouts), with overrides that shrink the real recipes to a few steps of a tiny
model. Commands run in README order, from a scratch directory, each as a subprocess.

What is rewritten (the command is otherwise run as written):
  * `main.py` commands get tiny-size keys appended (TINY, by the config's task);
  * the suite gets the same keys as `--set` overrides, one data set and one seed (only emo8
    and, later, fi are prepared here), its sweep two variants, two read-outs and one step;
  * the YOLOv3 prepare gets a random-weight tiny network (written here in the Darknet format,
    as tests/test_detect.py does) at a 96-px input;
  * the demo's steps by hand use `--size tiny` data and a 2-step teacher;
  * the leakage check is limited to the benchmarks prepared here.
Not run here: the installs and the test commands (.ci/run runs those), `bash demo.sh`
(tests/test_demo_e2e.py) and the `tpu/` commands (tests/test_tpu.py runs them as dry runs
with a stand-in gcloud that fails the test if it is called)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "pretrain": ["--config.model.variant=mu", "--config.model.image_size=32",
                 "--config.model.dtype=float32", "--config.teacher.dtype=float32",
                 "--config.batch_size=8", "--config.total_steps=2",
                 "--config.data.num_workers=0", "--config.checkpoint.every_steps=1",
                 "--config.eval.batch_size=8"],
    "finetune": ["--config.model.variant=mu", "--config.model.image_size=32",
                 "--config.model.dtype=float32", "--config.batch_size=8",
                 "--config.total_steps=2", "--config.eval.batch_size=8",
                 "--config.data.eval_resize=37", "--config.data.num_workers=0"],
    "linear_probe": ["--config.model.variant=mu", "--config.model.image_size=32",
                     "--config.model.dtype=float32", "--config.batch_size=8",
                     "--config.total_epochs=2", "--config.eval.batch_size=8",
                     "--config.data.eval_resize=37", "--config.data.num_workers=0"],
    "readout": ["--config.model.variant=mu", "--config.model.image_size=32",
                "--config.model.dtype=float32", "--config.teacher.dtype=float32",
                "--config.eval.batch_size=8", "--config.data.eval_resize=37",
                "--config.data.num_workers=0"],
}
# The suite's read-outs and its sweep's pre-training (as in tests/test_suite.py).
SUITE_TINY = ["model.variant=mu", "model.image_size=32", "model.dtype=float32", "batch_size=8",
              "data.num_workers=0", "data.eval_resize=37", "eval.batch_size=8",
              "finetune:total_steps=2", "finetune:warmup_epochs=1",
              "linear_probe:total_epochs=2", "zeroshot:teacher.dtype=float32"]
SWEEP_TINY = ["pretrain:model.variant=mu", "pretrain:model.image_size=32",
              "pretrain:model.dtype=float32", "pretrain:teacher.dtype=float32",
              "pretrain:batch_size=8", "pretrain:data.num_workers=0",
              "pretrain:checkpoint.every_steps=0"]
# The tiny YOLOv3's input (its cfg's width) and a threshold its random weights straddle.
DETECTOR_TINY = ["--detector_size=96", "--detector_batch=4", "--min_person_score=0.5"]
# What every skipped command is left to, by a word it contains.
SKIPPED = {"pip install": ".ci/run", "python3 -m venv": ".ci/run", "pytest": ".ci/run",
           "bash demo.sh": "tests/test_demo_e2e.py", "tpu/": "tests/test_tpu.py"}


def readme_commands():
  text = open(os.path.join(REPO, "README.md")).read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for command in block.replace("\\\n", " ").splitlines():
      command = " ".join(command.split())
      if command and not command.startswith("#"):
        commands.append(command)
  return commands


def skipped_by(command):
  """The test or script that runs this command instead of this test (None: this test)."""
  for word, where in SKIPPED.items():
    if word in command:
      return where
  return None


def test_readme_has_the_commands_we_run():
  commands = readme_commands()
  assert any("bash demo.sh" in c and "pip install -r requirements.txt" in c for c in commands)
  assert "HF_HUB_OFFLINE=1 python -m pytest -q" in commands
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  assert "-m pytest -q\n" in ci  # CI runs the README's test command
  assert "-m pytest -q -m slow\n" in ci
  # The tpu/ commands this test leaves to tests/test_tpu.py are those it reads (lines with
  # "tpu/"), and every command skipped here is a tpu/ command, an install or a test command.
  for c in commands:
    where = skipped_by(c)
    assert where is None or where in (".ci/run", "tests/test_demo_e2e.py") or "tpu/" in c, c
  # No runnable fence in the docs: their commands are reference, not run by any test.
  for name in os.listdir(os.path.join(REPO, "docs")):
    with open(os.path.join(REPO, "docs", name)) as f:
      assert "```bash" not in f.read(), f"docs/{name}: use ```text (docs are not run)"


def _task(command):
  for name, task in (("linear_probe.py", "linear_probe"), ("readout.py", "readout"),
                     ("pretrain.py", "pretrain")):
    if name in command:
      return task
  return "finetune"


def rewrite(command):
  """The command as this test runs it (see the module docstring)."""
  if "main.py" in command:
    command += " " + " ".join(TINY[_task(command)])
  if "uniemox_jax.tools.suite" in command:
    command = re.sub(r"--datasets=\S+", "--datasets=emo8", command)
    command = re.sub(r"--seeds=\S+", "--seeds=0", command)
    sets = SUITE_TINY
    if "--sweep=" in command:
      command = re.sub(r"--pretrain_steps=\d+", "--pretrain_steps=1", command)
      command += " --variants=rec,nofusion --readouts=knn,zeroshot"
      sets = SUITE_TINY + SWEEP_TINY
    command += "".join(f" --set {s}" for s in sets)
  if "--person_boxes=yolov3" in command:
    command += " " + " ".join(DETECTOR_TINY)
  if "uniemox_jax.data.demo" in command:
    command = command.replace("--size demo", "--size tiny")
  if "uniemox_jax.tools.tiny_clip" in command:
    command = re.sub(r"--train_steps=\d+", "--train_steps=2", command)
  if "uniemox_jax.tools.leakage" in command:
    command = re.sub(r"--benchmarks=\S+", "--benchmarks=emo8,fi", command)
  # Run from a scratch directory (relative outputs such as demo_out/ land there), with the
  # repository's files named by absolute path.
  command = re.sub(r"(?<![\w/])(main\.py|configs/|tpu/)", lambda m: f"{REPO}/{m.group(1)}",
                   command)
  if command.startswith("python "):
    command = sys.executable + command[len("python"):]
  return command


def _raw_fi(tmp_path, raw_dir):
  """An FI look-alike as an original release: `raw_dir/<class>/<images>`, no split."""
  from uniemox_jax.data import demo
  info = demo.write_benchmark(tmp_path / "fi_release", "fi", seed=2, per_class=(3, 1, 1),
                              image_size=(64, 48))
  for split_dir in (tmp_path / "fi_release" / "FI").iterdir():
    for class_dir in split_dir.iterdir():
      (raw_dir / class_dir.name).mkdir(parents=True, exist_ok=True)
      for image in class_dir.iterdir():
        shutil.copy(image, raw_dir / class_dir.name / f"{split_dir.name}_{image.name}")
  return info


@pytest.mark.torch  # the README's MAE initialisation is an official .pth file
@pytest.mark.slow
def test_every_readme_command_runs(demo_env, tmp_path):
  import jax
  import numpy as np
  import torch
  from test_yolo import tiny_arch, write_files
  from uniemox_jax.models import convert, mae

  data = tmp_path / "data"
  data.mkdir()
  shutil.copytree(os.path.join(demo_env.raw, "EmoSet"), data / "EmoSet-118K")
  shutil.copytree(os.path.join(demo_env.raw, "benchmarks"), data / "benchmarks")
  shutil.copytree(demo_env.clip, data / "clip-vit-base-patch16")
  params = mae.init_params(mae.MaskedAutoencoder(variant="mu", image_size=32), seed=1)
  sd = convert.params_to_mae_state_dict(jax.device_get(params), image_size=32)
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}},
             data / "mae_pretrain_vit_large.pth")
  (data / "yolo").mkdir()
  write_files(data / "yolo", tiny_arch(classes=1), seed=3, name="yolov3")
  _raw_fi(tmp_path, data / "raw" / "FI")

  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PATH=os.path.dirname(
      sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=REPO)
  overrides = {"DATA": str(data), "TFDS": str(data / "tfds"),
               "CLIP": str(data / "clip-vit-base-patch16"),
               "MAE": str(data / "mae_pretrain_vit_large.pth"), "WORK": str(tmp_path / "runs")}
  scratch = tmp_path / "cwd"
  scratch.mkdir()
  exports = {}
  ran, skipped = [], []
  for command in readme_commands():
    if command.startswith("export "):
      key, value = command[len("export "):].split("=", 1)
      exports[key] = value.split("#")[0].strip()
      continue
    if skipped_by(command):
      skipped.append(command)
      continue
    command = rewrite(command)
    ran.append(command)
    assert set(exports) <= set(overrides), exports
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, capture_output=True, text=True,
                          env=dict(env, **overrides), timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"

  assert sum("main.py" in c for c in ran) >= 22 and len(skipped) >= 8
  work, demo_out = tmp_path / "runs", scratch / "demo_out"
  expected = [
      # the demo's steps by hand
      demo_out / "summary.md", demo_out / "readouts" / "uniemox" / "finetune" / "results.json",
      demo_out / "readouts" / "random" / "zeroshot" / "results.json",
      # the real recipes
      data / "tfds" / "person_boxes" / "emoset.yolov3.json",
      work / "pretrain_l16" / "done.json", work / "ft_emo8" / "results.json",
      work / "eval_emo8" / "results_eval_test.json", work / "probe_emo8" / "results.json",
      work / "knn_emo8" / "results.json", work / "zs_emo8" / "results.json",
      work / "table" / "results.md", work / "ablation_components" / "results.md",
      data / "benchmarks" / "FI" / "split_manifest.json", work / "leakage" / "leakage.json",
      work / "ft_emo8" / "classifier.safetensors", work / "export_emo8" / "model.json",
      work / "jax_emo8" / "forward.jax_export", work / "export_pretrain" / "model.json"]
  for path in expected:
    assert os.path.exists(path), path
  assert os.listdir(work / "ft_emo8" / "attention_maps")
  # The in-training evaluation ran (at the end of the 2-step run).
  with open(work / "pretrain_l16_eval" / "metrics.jsonl") as f:
    assert "val/knn_top1" in f.read()
