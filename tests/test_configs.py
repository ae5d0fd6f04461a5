"""Every config in configs/ loads, validates and smoke-runs; bad configs fail early and clearly."""
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import train_utils as tu
from configs import finetune as finetune_cfg
from configs import linear_probe as probe_cfg
from configs import pretrain as pretrain_cfg
from configs import readout as readout_cfg
from uniemox_jax import train
from uniemox_jax.data import builders, demo
from uniemox_jax.train import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = sorted(finetune_cfg.NUM_CLASSES)

CONFIGS = {
    "pretrain.py": ["", "variant=B/16", "variant=H/14,mask_ratio=0.9", "released",
                    "components=rec", "components=con+sim", "components=con+sim+rec+nce",
                    "nofusion", "decoder_output=cls_broadcast,person_view=second_view",
                    "teacher_norm=imagenet,relation_scope=local", "demo"],
    "finetune.py": DATASETS + ["emo8,variant=B/16", "demo", "heco,demo"],
    "linear_probe.py": DATASETS + ["fi,pool=cls", "demo"],
    "readout.py": DATASETS + ["emo8,kind=zeroshot", "fi,kind=knn,feature=gamma",
                              "heco,kind=zeroshot,variant=B/16", "emo8,kind=knn,demo",
                              "emotion6,kind=zeroshot,demo"],
}


def test_every_config_file_is_covered():
  files = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))}
  assert files - {"__init__.py", "common.py"} == set(CONFIGS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in CONFIGS.items() for a in args])
def test_config_loads_and_validates(name, arg):
  module = {"pretrain.py": pretrain_cfg, "finetune.py": finetune_cfg,
            "linear_probe.py": probe_cfg, "readout.py": readout_cfg}[name]
  config = module.get_config(arg or None)
  assert config.task in train.TASKS
  validation.validate(config, num_devices=8, check_paths=False)
  assert module.__doc__ and "python main.py" in module.__doc__  # the launch command


def test_config_arguments_reject_typos():
  with pytest.raises(KeyError, match="varient"):
    pretrain_cfg.get_config("varient=B/16")
  with pytest.raises(KeyError, match="unknown fine-tuning dataset"):
    finetune_cfg.get_config("emo9")
  with pytest.raises(ValueError, match="components"):
    pretrain_cfg.get_config("components=rec+foo")


def test_validation_reports_every_problem_at_once():
  config = pretrain_cfg.get_config()
  config.batch_size = 12
  config.model.mask_ratio = 1.5
  config.model.fusion = "average"
  with pytest.raises(validation.ConfigError) as err:
    validation.validate(config, num_devices=8)
  text = str(err.value)
  for needle in ("config.batch_size=12", "mask_ratio=1.5", "config.model.fusion",
                 "config.teacher.path is empty", "config.data.data_dir is empty",
                 "configs/pretrain.py:demo"):
    assert needle in text, needle


def test_validation_of_probe_init_eval_batch_splits_and_resume(tmp_path):
  config = probe_cfg.get_config("emo8")
  config.eval.batch_size = 12
  config.data.val_split = "valid"
  with pytest.raises(validation.ConfigError) as err:
    validation.validate(config, num_devices=8, check_paths=True)
  text = str(err.value)
  for needle in ("config.init is empty: a linear probe needs the pre-trained encoder",
                 "config.eval.batch_size=12 must be a positive multiple of the 8 devices",
                 "config.data.val_split='valid': unknown split ['valid']",
                 "section 'Starting points, checkpoints and resume'"):
    assert needle in text, needle
  for split in ("train+val", "train[:10%]", "test"):
    config.data.train_split = split
    assert not any("train_split" in p for p in validation._split_problems("x", split))
  config = finetune_cfg.get_config("emo8")
  (tmp_path / "weights").mkdir()
  config.resume = str(tmp_path / "weights")   # exists, but is not a run of ours
  config.init = str(tmp_path / "missing.pth")
  with pytest.raises(validation.ConfigError) as err:
    validation.validate(config, num_devices=1)
  text = str(err.value)
  assert "config.resume: " in text and "is not a workdir" in text and "config.init" in text
  assert f"config.init={config.init!r} does not exist (README.md, section 'Starting" in text


def _main(*args, timeout=120):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  return proc, time.perf_counter() - start


def test_main_without_data_fails_fast_naming_the_data_and_the_demo(tmp_path):
  proc, seconds = _main("--config=configs/pretrain.py", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "config.data.data_dir is empty" in proc.stderr
  assert "configs/pretrain.py:demo" in proc.stderr and "bash demo.sh" in proc.stderr
  assert seconds < 60


def test_main_with_a_misspelt_key_names_it(tmp_path):
  proc, _ = _main("--config=configs/pretrain.py:demo", f"--workdir={tmp_path}",
                  "--config.model.varient=B/16")
  assert proc.returncode != 0
  assert "varient" in proc.stderr


def test_main_with_a_missing_data_path_names_the_key(tmp_path):
  proc, _ = _main("--config=configs/finetune.py:demo", f"--workdir={tmp_path}",
                  f"--config.data.data_dir={tmp_path / 'nowhere'}")
  assert proc.returncode != 0
  assert "config.data.data_dir=" in proc.stderr and "does not exist" in proc.stderr
  assert "README.md, section 'Real data and weights'" in proc.stderr


# ------------------------------------------------------------------ smoke runs, tiny

@pytest.fixture(scope="module")
def all_benchmarks(demo_env, tmp_path_factory):
  """The five other benchmarks, generated and prepared next to the demo's emo8."""
  root = str(tmp_path_factory.mktemp("benchmarks"))
  for name in DATASETS:
    if name == "emo8":
      continue
    demo.write_benchmark(os.path.join(root, "raw"), name, per_class=(2, 1, 1),
                         image_size=(48, 40))
    builders.prepare(f"emotion_folder/{name}", os.path.join(root, "raw"), demo_env.tfds)
  return demo_env


@pytest.mark.parametrize("arg,dtype", [("", "bfloat16"), ("released", "float32"),
                                       ("components=rec,nofusion", "float32"),
                                       ("components=con+sim+rec+nce", "float32")])
def test_pretrain_config_smoke_runs(demo_env, tmp_path, arg, dtype):
  config = pretrain_cfg.get_config(arg or None)
  config = tu.shrink_pretrain(config, demo_env, total_steps=1, **{"model.dtype": dtype,
                                                                  "teacher.dtype": dtype})
  assert train.run(config, str(tmp_path))["status"] == "done"
  assert all(map(np.isfinite, tu.losses_by_step(tmp_path).values()))


@pytest.fixture(scope="module")
def pretrained(demo_env, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("pretrained"))
  train.run(tu.pretrain_config(demo_env, total_steps=1), work)
  return work


@pytest.mark.parametrize("dataset", DATASETS)
def test_finetune_and_probe_configs_smoke_run(all_benchmarks, pretrained, tmp_path, dataset):
  env = all_benchmarks
  config = tu.shrink_finetune(finetune_cfg.get_config(dataset), env, total_steps=1,
                              init=pretrained)
  result = train.run(config, str(tmp_path / "ft"))
  assert result["status"] == "done" and 0.0 <= result["test_top1"] <= 1.0
  probe = tu.shrink_probe(probe_cfg.get_config(dataset), env, init=pretrained)
  assert train.run(probe, str(tmp_path / "probe"))["status"] == "done"


def test_linear_probe_refuses_a_fine_tuned_classifier(demo_env, tmp_path):
  ft = str(tmp_path / "ft")
  train.run(tu.finetune_config(demo_env, total_steps=1), ft)
  with pytest.raises(ValueError, match="fine-tuned classifier"):
    train.run(tu.probe_config(demo_env, init=ft), str(tmp_path / "probe"))
