"""End-to-end training tests on the generated demo data: every task runs, resumes exactly,
survives pre-emption anywhere, stops on NaN, and starts from official checkpoints."""
import json
import os
import signal

import jax
import numpy as np
import pytest

import train_utils as tu
from uniemox_jax import checkpointing, train
from uniemox_jax.models import uniemox
from uniemox_jax.train import loop as loop_lib, pretrain


def _run(config, workdir):
  return train.run(config, str(workdir))


def _crash_after(monkeypatch, calls: int, action="raise"):
  """Wraps the compiled step so that call number `calls + 1` crashes (or sends SIGTERM)."""
  original = loop_lib.aot_compile

  def wrapped_compile(fn, *args, name="step"):
    compiled, info = original(fn, *args, name=name)
    count = {"n": 0}

    def step(*a):
      count["n"] += 1
      if count["n"] == calls + 1:
        if action == "raise":
          raise RuntimeError("simulated crash")
        os.kill(os.getpid(), signal.SIGTERM)
      return compiled(*a)

    return step, info

  monkeypatch.setattr(loop_lib, "aot_compile", wrapped_compile)


# ------------------------------------------------------------------------ every task

def test_pretrain_runs_and_records_everything(demo_env, tmp_path):
  result = _run(tu.pretrain_config(demo_env), tmp_path)
  assert result == {"status": "done", "step": 4}
  losses = tu.losses_by_step(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
  rows = [r for r in __import__("uniemox_jax").metrics.read_metrics(str(tmp_path))
          if "train/loss_rec" in r]
  for key in ("train/loss_con", "train/loss_sim", "train/lr", "train/grad_norm",
              "train/param_norm", "train/images_per_sec", "train/images_per_sec_per_device",
              "train/step_time_ms", "train/eta_min"):
    assert key in rows[-1], key
  assert rows[-1]["train/step_time_ms"] > 0
  assert any(k in rows[-1] for k in ("train/mem_gib", "train/host_rss_peak_gib"))
  compile_rows = [r for r in __import__("uniemox_jax").metrics.read_metrics(str(tmp_path))
                  if "compile/compile_s" in r]
  assert compile_rows and compile_rows[0]["compile/compile_s"] > 0
  info = tu.read_json(tmp_path, "run_info.json")
  assert info["config"]["task"] == "pretrain" and info["versions"]["jax"]
  split = info["data"]["splits"]["train+val"]
  assert split["num_examples"] == 32 and len(split["ids_sha256"]) == 64
  assert os.path.exists(tmp_path / "done.json")
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
  steps = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True).all_steps()
  assert steps == [2, 4]


def test_checkpoints_every_n_epochs_are_kept_for_good(demo_env, tmp_path):
  # 32 examples, batch 8: 4 steps per epoch. Keep the last one, plus every epoch's.
  _run(tu.pretrain_config(demo_env, total_steps=9, **{
      "checkpoint.every_steps": 0, "checkpoint.keep": 1,
      "checkpoint.keep_every_epochs": 1}), tmp_path)
  steps = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True).all_steps()
  assert steps == [4, 8, 9]


def test_start_order_resume_and_no_teacher_in_the_checkpoint(demo_env, tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  _run(tu.pretrain_config(demo_env, total_steps=4), a)   # checkpoints at steps 2 and 4
  # config.resume (here a step directory of another run): its full state (step, optimizer,
  # data position) is taken over, so steps 3 and 4 are exactly that run's.
  step2 = str(a / "checkpoints" / "2")
  _run(tu.pretrain_config(demo_env, total_steps=4, resume=step2), b)
  resumed = tu.losses_by_step(b)
  assert sorted(resumed) == [3, 4]
  straight = tu.losses_by_step(a)
  assert [resumed[s] for s in (3, 4)] == [straight[s] for s in (3, 4)]
  # The workdir's own checkpoint comes before config.resume: nothing is redone.
  out = _run(tu.pretrain_config(demo_env, total_steps=4, resume=step2), b)
  assert out["step"] == 4 and tu.losses_by_step(b) == resumed
  # The frozen teacher is neither trained nor saved: the checkpoint holds the student only.
  from uniemox_jax import start
  params, _ = start.read_params(str(a), prefer_best=False)
  # (the tiny teacher is wider than the mu decoder: the student's projection to it is trained)
  assert set(params) == {"mae", "fusion", "teacher_proj"}
  saved = sum(np.size(x) for x in jax.tree.leaves(params))
  model = pretrain.build_model(tu.pretrain_config(demo_env),
                               teacher_dim=params["teacher_proj"]["kernel"].shape[1])
  expected = sum(np.size(x) for x in jax.tree.leaves(uniemox.init_params(model)))
  assert saved == expected


def test_same_config_same_seed_same_losses(demo_env, tmp_path):
  _run(tu.pretrain_config(demo_env, total_steps=3), tmp_path / "a")
  _run(tu.pretrain_config(demo_env, total_steps=3), tmp_path / "b")
  assert tu.losses_by_step(tmp_path / "a") == tu.losses_by_step(tmp_path / "b")


def test_finetune_eval_and_linear_probe(demo_env, tmp_path):
  pre = tmp_path / "pre"
  _run(tu.pretrain_config(demo_env, total_steps=2), pre)
  ft = tmp_path / "ft"
  result = _run(tu.finetune_config(demo_env, init=str(pre)), ft)
  assert result["status"] == "done"
  results = tu.read_json(ft, "results.json")
  assert results["test_num_examples"] == 8 and 0.0 <= results["test_top1"] <= 1.0
  assert results["test_top3"] >= results["test_top1"]
  assert os.path.exists(ft / "eval" / "test_best.png")
  val = tu.read_json(ft, "eval", "val_step3.json")
  assert np.asarray(val["confusion_matrix"]).sum() == 8 and len(val["per_class_accuracy"]) == 8
  # The test result comes from the checkpoint with the best val top-1 (earliest on ties).
  record = tu.read_json(ft, "checkpoints", "checkpoint_metrics.json")
  best = max(sorted(record.items(), key=lambda kv: int(kv[0])),
             key=lambda kv: kv[1]["val_top1"])
  assert results["val_top1"] == best[1]["val_top1"]
  assert results["best_step"] == int(best[0])
  assert set(tu.read_json(ft, "run_info.json")["data"]["splits"]) == {"train", "val", "test"}

  ev = tmp_path / "ev"
  config = tu.finetune_config(demo_env, task="eval", init=str(ft))
  config.eval.split = "test"
  out = _run(config, ev)
  assert out["num_examples"] == 8
  assert set(tu.read_json(ev, "run_info.json")["data"]["splits"]) == {"test"}
  assert abs(out["top1"] - results["test_top1"]) < 1e-9  # the best checkpoint, again

  probe = tmp_path / "probe"
  out = _run(tu.probe_config(demo_env, init=str(pre)), probe)
  assert out["status"] == "done" and 0.0 <= out["test_top1"] <= 1.0
  assert tu.read_json(probe, "results.json")["test_num_examples"] == 8
  probe_rows = __import__("uniemox_jax").metrics.read_metrics(str(probe))
  assert any("probe/val_top1" in r and "probe/lr" in r for r in probe_rows)
  assert os.path.exists(probe / "eval" / "test_best.png")
  features = set(os.listdir(probe / "features"))
  assert len(features) == 3
  _run(tu.probe_config(demo_env, init=str(pre)), probe)   # same weights: the cache is reused
  assert set(os.listdir(probe / "features")) == features
  # The pre-training run goes on (a newer checkpoint): the features are computed afresh.
  _run(tu.pretrain_config(demo_env, total_steps=3), pre)
  _run(tu.probe_config(demo_env, init=str(pre)), probe)
  assert len(set(os.listdir(probe / "features")) - features) == 3


# --------------------------------------------------------------------------- resume

def test_crash_and_resume_equals_uninterrupted(demo_env, tmp_path, monkeypatch):
  base = dict(total_steps=6, **{"checkpoint.every_steps": 2})
  _run(tu.pretrain_config(demo_env, **base), tmp_path / "straight")
  with monkeypatch.context() as m:
    _crash_after(m, calls=5)  # crash in step 6, after checkpoint 4
    with pytest.raises(RuntimeError, match="simulated crash"):
      _run(tu.pretrain_config(demo_env, **base), tmp_path / "resumed")
  steps = checkpointing.Checkpointer(str(tmp_path / "resumed" / "checkpoints"),
                                     read_only=True).all_steps()
  assert steps[-1] == 4
  _run(tu.pretrain_config(demo_env, **base), tmp_path / "resumed")  # the same command again
  straight = tu.losses_by_step(tmp_path / "straight")
  resumed = tu.losses_by_step(tmp_path / "resumed")
  assert sorted(resumed) == list(range(1, 7))
  assert resumed == straight  # bitwise, every step: data position and RNG restored exactly


@pytest.mark.slow  # more end-to-end runs: the full (Python 3.11) CI run has them
@pytest.mark.parametrize("where", ["compilation", "training"])
def test_sigterm_saves_and_resumes_exactly(demo_env, tmp_path, monkeypatch, where):
  base = dict(total_steps=5, **{"checkpoint.every_steps": 100})
  _run(tu.pretrain_config(demo_env, **base), tmp_path / "straight")
  with monkeypatch.context() as m:
    if where == "compilation":
      original = loop_lib.aot_compile

      def compile_then_sigterm(fn, *args, name="step"):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while "compiling"
        return original(fn, *args, name=name)

      m.setattr(loop_lib, "aot_compile", compile_then_sigterm)
    else:
      _crash_after(m, calls=3, action="sigterm")
    result = _run(tu.pretrain_config(demo_env, **base), tmp_path / "resumed")
  assert result["status"] == "preempted"
  steps = checkpointing.Checkpointer(str(tmp_path / "resumed" / "checkpoints"),
                                     read_only=True).all_steps()
  assert steps == [0 if where == "compilation" else 4]
  assert _run(tu.pretrain_config(demo_env, **base), tmp_path / "resumed")["status"] == "done"
  assert tu.losses_by_step(tmp_path / "resumed") == tu.losses_by_step(tmp_path / "straight")


@pytest.mark.slow  # more end-to-end runs: the full (Python 3.11) CI run has them
def test_sigterm_during_a_save_in_progress(demo_env, tmp_path, monkeypatch):
  base = dict(total_steps=5, **{"checkpoint.every_steps": 2})
  original = checkpointing.Checkpointer.save

  def save_then_sigterm(self, step, *args, **kwargs):
    saved = original(self, step, *args, **kwargs)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # while the asynchronous write is under way
    return saved

  with monkeypatch.context() as m:
    m.setattr(checkpointing.Checkpointer, "save", save_then_sigterm)
    result = _run(tu.pretrain_config(demo_env, **base), tmp_path)
  assert result == {"status": "preempted", "step": 2}
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [2]
  assert _run(tu.pretrain_config(demo_env, **base), tmp_path)["status"] == "done"


@pytest.mark.slow  # more end-to-end runs: the full (Python 3.11) CI run has them
def test_sigterm_during_evaluation_leaves_a_checkpoint_that_resumes(demo_env, tmp_path,
                                                                    monkeypatch):
  from uniemox_jax.evaluators import classification
  _run(tu.finetune_config(demo_env), tmp_path / "straight")
  original_call = classification.Evaluator.__call__
  state = {"sent": False}

  def eval_with_sigterm(self, params):
    if self.split == "val" and not state["sent"]:
      state["sent"] = True
      os.kill(os.getpid(), signal.SIGTERM)  # during the first validation pass
    return original_call(self, params)

  with monkeypatch.context() as m:
    m.setattr(classification.Evaluator, "__call__", eval_with_sigterm)
    result = _run(tu.finetune_config(demo_env), tmp_path / "resumed")
  assert result["status"] == "preempted"
  ckpt_dir = tmp_path / "resumed" / "checkpoints"
  ckpt = checkpointing.Checkpointer(str(ckpt_dir), read_only=True)
  assert ckpt.all_steps() == [3]  # the first evaluation is after epoch 1 = 3 steps
  meta = json.load(open(ckpt_dir / "3" / "meta" / "metadata"))
  assert meta["eval_pending"] is True
  assert _run(tu.finetune_config(demo_env), tmp_path / "resumed")["status"] == "done"
  straight = tu.read_json(tmp_path / "straight", "results.json")
  resumed = tu.read_json(tmp_path / "resumed", "results.json")
  assert resumed["test_top1"] == straight["test_top1"]
  assert resumed["best_step"] == straight["best_step"]
  assert tu.losses_by_step(tmp_path / "resumed") == tu.losses_by_step(tmp_path / "straight")
  val_straight = tu.losses_by_step(tmp_path / "straight", "val/top1")
  assert tu.losses_by_step(tmp_path / "resumed", "val/top1") == val_straight


@pytest.mark.slow  # more end-to-end runs: the full (Python 3.11) CI run has them
def test_truncated_latest_checkpoint_falls_back_to_the_previous(demo_env, tmp_path, caplog):
  _run(tu.pretrain_config(demo_env, total_steps=4), tmp_path)
  state_dir = tmp_path / "checkpoints" / "4" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name.startswith("manifest") or "/d" in root:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(max(0, os.path.getsize(path) // 3))
  config = tu.pretrain_config(demo_env, total_steps=6)
  with caplog.at_level("WARNING"):
    result = _run(config, tmp_path)
  assert result["status"] == "done"
  text = caplog.text
  assert "could not be restored" in text and "restored checkpoint 2 instead" in text
  rows = [r["step"] for r in __import__("uniemox_jax").metrics.read_metrics(str(tmp_path))
          if "train/loss" in r]
  assert rows[-4:] == [3, 4, 5, 6]  # continued from step 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_env, tmp_path,
                                                                  monkeypatch):
  original = loop_lib.aot_compile

  def nan_at_step_4(fn, *args, name="step"):
    compiled, info = original(fn, *args, name=name)
    count = {"n": 0}

    def step(*a):
      count["n"] += 1
      state, metrics = compiled(*a)
      if count["n"] >= 3:
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return state, metrics

    return step, info

  monkeypatch.setattr(loop_lib, "aot_compile", nan_at_step_4)
  with pytest.raises(loop_lib.NonFiniteLoss, match=r"non-finite loss at step 3.*last good "
                                                   r"checkpoint is step 2"):
    _run(tu.pretrain_config(demo_env, total_steps=6), tmp_path)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [2]


# ----------------------------------------------------------------------- starting points

def test_init_from_an_official_format_mae_checkpoint(demo_env, tmp_path):
  """A tiny random MAE in the official key layout (safetensors: no torch needed) is the
  `init` of a pre-training run: its encoder and decoder load, the fusion is new."""
  from safetensors.numpy import save_file
  from uniemox_jax.models import convert, mae
  model = mae.MaskedAutoencoder(variant="mu", image_size=32)
  params = mae.init_params(model, seed=7)
  state_dict = convert.params_to_mae_state_dict(jax.device_get(params), image_size=32)
  path = str(tmp_path / "mae_official.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
  work = tmp_path / "run"
  _run(tu.pretrain_config(demo_env, total_steps=1, init=path), work)
  # Step 0 is not saved, so check the loaded weights by re-reading them: the encoder's
  # patch embedding moved by one AdamW step at most lr (plus decay) from the file's.
  from uniemox_jax import start
  loaded, _ = start.read_params(str(work))
  delta = np.abs(np.asarray(loaded["mae"]["encoder"]["patch_embed"]["kernel"]) -
                 np.asarray(params["encoder"]["patch_embed"]["kernel"]))
  assert delta.max() < 2e-3


@pytest.mark.torch
def test_init_from_an_official_mae_pth(demo_env, tmp_path):
  import torch
  from uniemox_jax.models import convert, mae
  model = mae.MaskedAutoencoder(variant="mu", image_size=32)
  params = mae.init_params(model, seed=3)
  sd = {f"module.{k}": torch.from_numpy(np.array(v)) for k, v in
        convert.params_to_mae_state_dict(jax.device_get(params), image_size=32).items()}
  path = str(tmp_path / "mae_pretrain_vit_mu.pth")
  torch.save({"model": sd, "epoch": 1}, path)
  result = _run(tu.pretrain_config(demo_env, total_steps=1, init=path), tmp_path / "run")
  assert result["status"] == "done"
