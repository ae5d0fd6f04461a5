"""Every shell command in the README runs: on the generated look-alikes of the real files
(same names and layouts), with overrides appended to `main.py` commands so that the real
recipes run two steps of a tiny model. The quick start's install + `bash demo.sh` is run by
.ci/run (install) and tests/test_demo_e2e.py (the demo); the test command is what runs this."""
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
                 "--config.data.num_workers=0", "--config.checkpoint.every_steps=1"],
    "finetune": ["--config.model.variant=mu", "--config.model.image_size=32",
                 "--config.model.dtype=float32", "--config.batch_size=8",
                 "--config.total_steps=2", "--config.eval.batch_size=8",
                 "--config.data.eval_resize=37", "--config.data.num_workers=0"],
    "linear_probe": ["--config.model.variant=mu", "--config.model.image_size=32",
                     "--config.model.dtype=float32", "--config.batch_size=8",
                     "--config.total_epochs=2", "--config.eval.batch_size=8",
                     "--config.data.eval_resize=37", "--config.data.num_workers=0"],
}


def readme_commands():
  text = open(os.path.join(REPO, "README.md")).read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for command in block.replace("\\\n", " ").splitlines():
      command = " ".join(command.split())
      if command and not command.startswith("#"):
        commands.append(command)
  return commands


def test_readme_has_the_commands_we_run():
  commands = readme_commands()
  assert any("bash demo.sh" in c and "pip install -r requirements.txt" in c for c in commands)
  assert "HF_HUB_OFFLINE=1 python -m pytest -q" in commands
  with open(os.path.join(REPO, ".ci", "run")) as f:
    assert "-m pytest -q\n" in f.read()  # CI runs the README's test command


@pytest.mark.torch  # the README's MAE initialisation is an official .pth file
@pytest.mark.slow
def test_every_readme_command_runs(demo_env, tmp_path):
  import jax
  import numpy as np
  import torch
  from uniemox_jax.models import convert, mae

  data = tmp_path / "data"
  data.mkdir()
  shutil.copytree(os.path.join(demo_env.raw, "EmoSet"), data / "EmoSet-118K")
  shutil.copy(data / "EmoSet-118K" / "person_boxes.json", data / "emoset_person_boxes.json")
  shutil.copytree(os.path.join(demo_env.raw, "benchmarks"), data / "benchmarks")
  shutil.copytree(demo_env.clip, data / "clip-vit-base-patch16")
  params = mae.init_params(mae.MaskedAutoencoder(variant="mu", image_size=32), seed=1)
  sd = convert.params_to_mae_state_dict(jax.device_get(params), image_size=32)
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}},
             data / "mae_pretrain_vit_large.pth")

  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PATH=os.path.dirname(
      sys.executable) + os.pathsep + os.environ["PATH"], TPU_NAME="uniemox", ZONE="zone",
             PYTHONPATH=REPO)
  scratch = tmp_path / "cwd"
  scratch.mkdir()
  exports = {}
  ran = []
  for command in readme_commands():
    if command.startswith("export "):
      key, value = command[len("export "):].split("=", 1)
      exports[key] = value.split("#")[0].strip()
      continue
    if "pip install" in command or "pytest" in command or command.startswith("python3 -m venv"):
      continue  # installs and the test command: .ci/run runs those
    if "main.py" in command:
      task = ("linear_probe" if "linear_probe.py" in command else
              "pretrain" if "pretrain.py" in command else "finetune")
      command += " " + " ".join(TINY[task])
    # Run from a scratch directory (relative outputs such as demo_out/ land there), with the
    # repository's files named by absolute path.
    command = re.sub(r"(?<![\w/])(main\.py|configs/|tpu/)", lambda m: f"{REPO}/{m.group(1)}",
                     command)
    if command.startswith("python "):
      command = sys.executable + command[len("python"):]
    ran.append(command)
    overrides = {"DATA": str(data), "TFDS": str(data / "tfds"),
                 "CLIP": str(data / "clip-vit-base-patch16"),
                 "MAE": str(data / "mae_pretrain_vit_large.pth"), "WORK": str(tmp_path / "runs")}
    assert set(exports) <= set(overrides), exports
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, capture_output=True, text=True,
                          env=dict(env, **overrides), timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  assert sum("main.py" in c for c in ran) >= 6 and any("export" in c for c in ran)
  assert os.path.exists(scratch / "demo_out" / "finetune" / "results.json")
  assert os.path.exists(tmp_path / "runs" / "ft_emo8" / "classifier.safetensors")
  assert os.path.exists(tmp_path / "runs" / "probe_emo8" / "results.json")
