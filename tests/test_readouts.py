"""The kNN and zero-shot read-outs end to end on the demo data, the in-training evaluation of
pre-training, and the metrics every results.json now carries."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import train_utils as tu
from configs import readout as readout_cfg
from uniemox_jax import preprocess, sharding, start, train
from uniemox_jax.data import builders, pipeline, tokenizer
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.evaluators import features, knn, metrics
from uniemox_jax.models import build, clip, uniemox
from uniemox_jax.train import linear_probe, readout, validation


def readout_config(env, init, kind, **overrides):
  c = readout_cfg.get_config(f"emo8,kind={kind}")
  tu._tiny(c, env)  # pylint: disable=protected-access
  c.init = init
  c.teacher.path = env.clip
  c.data.eval_resize = 37
  c.eval.batch_size = 8
  for key, value in overrides.items():
    tu._set(c, key, value)  # pylint: disable=protected-access
  return c


EVAL = {"eval.every_steps": 1, "eval.max_examples": 5, "eval.bank_max_examples": 0,
        "eval.zeroshot": True, "eval.batch_size": 8}


@pytest.fixture(scope="module")
def pretrained(demo_env, tmp_path_factory):
  """Two pre-training steps with the in-training evaluation after each (EmoSet test queries,
  EmoSet train bank: the defaults)."""
  work = str(tmp_path_factory.mktemp("pretrained_eval"))
  assert train.run(tu.pretrain_config(demo_env, total_steps=2, **EVAL), work)["status"] == "done"
  return work


def _rows(workdir, prefix="val/"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if any(k.startswith(prefix) for k in r)]


def test_in_training_evaluation_is_logged_with_its_cost_and_leaves_training_alone(
    pretrained, demo_env, tmp_path):
  rows = _rows(pretrained)
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    for key in ("knn_top1", "knn_top3", "knn_macro_f1", "zeroshot_top1", "zeroshot_top3"):
      assert 0.0 <= r[f"val/{key}"] <= 1.0, key
    assert r["val/eval_seconds"] > 0 and r["val/eval_cost_steps"] > 0
  assert os.listdir(os.path.join(pretrained, "tensorboard"))
  # The same two steps without the evaluation: the same losses (it touches no training state).
  plain = str(tmp_path / "plain")
  train.run(tu.pretrain_config(demo_env, total_steps=2), plain)
  assert tu.losses_by_step(plain) == tu.losses_by_step(pretrained)
  assert not _rows(plain)


def test_in_training_evaluation_config_is_validated(demo_env):
  config = tu.pretrain_config(demo_env, **{"eval.every_steps": 5, "eval.dataset": "emo9",
                                           "eval.feature": "pooled", "eval.k": 0,
                                           "eval.split": "dev"})
  with pytest.raises(validation.ConfigError) as err:
    validation.validate(config)
  text = str(err.value)
  for needle in ("config.eval.dataset", "emo9", "config.eval.feature='pooled'",
                 "config.eval.k=0", "config.eval.split='dev'"):
    assert needle in text, needle


def test_knn_readout_matches_votes_recomputed_from_the_features(pretrained, demo_env, tmp_path):
  work = str(tmp_path / "knn")
  config = readout_config(demo_env, pretrained, "knn")
  result = train.run(config, work)
  assert result["status"] == "done"
  saved = tu.read_json(work, "results.json")
  assert os.path.exists(os.path.join(work, "done.json"))
  for key in ("test_top1", "test_top3", "test_num_examples", "test_macro_f1",
              "test_per_class_recall", "test_ece", "test_polarity_accuracy",
              "test_wheel_weighted_error", "test_metrics", "val_top1", "test_split_sha256"):
    assert key in saved, key
  assert saved["bank_size"] == 24 and saved["test_num_examples"] == 8 and saved["k"] == 20
  # The same votes from features extracted here (train = bank, test = queries).
  encoder = linear_probe.build_encoder(config)
  params = start.load_weights_into(pretrained, build.abstract_params(
      encoder, build.image_batch(32, 1)), target="encoder", allow_new=False, config=config)
  fn = linear_probe.pooled_features(encoder, "mean")
  mesh = sharding.make_mesh(-1, 1)
  bank, bank_y = features.extract(config, mesh, fn, params, "train", _NoStop())
  test, test_y = features.extract(config, mesh, fn, params, "test", _NoStop())
  votes = knn.knn_votes(bank, bank_y, test, 8, k=20, temperature=0.07)
  pred = np.argmax(votes, axis=1)
  confusion = metrics.confusion_from_predictions(test_y, pred, 8)
  with open(os.path.join(work, "eval", "test.json")) as f:
    written = json.load(f)
  np.testing.assert_array_equal(written["confusion_matrix"], confusion)
  assert saved["test_top1"] == pytest.approx(np.mean(pred == test_y))
  assert saved["test_macro_f1"] == pytest.approx(metrics.macro_f1(confusion))
  assert saved["test_ece"] == pytest.approx(metrics.expected_calibration_error(
      knn.votes_to_probs(votes), test_y))
  for png in ("test.png", "test_reliability.png", "val.png"):
    assert Image.open(os.path.join(work, "eval", png)).size[0] > 100


class _NoStop:
  def check(self, where, step=None):
    del where, step


def test_knn_on_gamma_and_on_an_mae_file_and_zero_shot_refuses_an_mae_file(
    pretrained, demo_env, tmp_path):
  gamma = train.run(readout_config(demo_env, pretrained, "knn", **{"knn.feature": "gamma"}),
                    str(tmp_path / "gamma"))
  assert gamma["status"] == "done" and gamma["feature_dim"] == 64  # the tiny teacher's width
  from uniemox_jax.tools import export
  mae_file = str(tmp_path / "mae.npz")
  export.export(pretrained, mae_file)
  from_file = train.run(readout_config(demo_env, mae_file, "knn"), str(tmp_path / "mae_knn"))
  from_run = train.run(readout_config(demo_env, pretrained, "knn"), str(tmp_path / "run_knn"))
  assert from_file["test_top1"] == from_run["test_top1"]  # the same encoder, read from the file
  with pytest.raises(readout.ReadoutError, match="no 'att_fusion'.*knn read-out"):
    train.run(readout_config(demo_env, mae_file, "zeroshot"), str(tmp_path / "mae_zs"))


def test_zero_shot_equals_an_independent_computation(pretrained, demo_env, tmp_path):
  work = str(tmp_path / "zs")
  config = readout_config(demo_env, pretrained, "zeroshot")
  result = train.run(config, work)
  assert result["status"] == "done" and result["token"] == "gamma"
  assert result["fusion"] == "easyfusion"  # from the pre-training run's run_info.json
  assert result["test_person_views"] == 0  # the emo8 look-alike has no person boxes
  names = class_names_for("emotion_folder/emo8")

  # Text: every prompt through CLIP's text tower, normalised, averaged, normalised.
  module, tparams = clip.load_clip(demo_env.clip)
  tok = tokenizer.load_tokenizer(demo_env.clip)

  def class_matrix(templates):
    rows = []
    for name in names:
      ids, _ = tokenizer.tokenize(tok, [t.replace("{emotion}", name) for t in templates])
      emb = np.array(module.apply({"params": tparams}, ids, method="encode_text"), np.float64)
      emb /= np.linalg.norm(emb, axis=1, keepdims=True)
      rows.append(emb.mean(0) / np.linalg.norm(emb.mean(0)))
    return np.stack(rows)

  # Images: the eval transform; γ from the model itself (mask ratio 0), Ω from CLIP.
  source = builders.load_source("emotion_folder/emo8", "test", demo_env.tfds)
  batch = [pipeline.EvalTransform(32, 37)((i, source[i])) for i in range(len(source))]
  u8 = np.stack([b["image"] for b in batch])
  labels = np.array([b["label"] for b in batch])
  params, _ = start.read_params(pretrained)
  model = uniemox.UniEmoX(variant="mu", image_size=32, teacher_dim=module.spec.projection_dim)
  x = preprocess.student_pixels(u8)
  gamma = np.asarray(model.apply({"params": params}, x, x, 0.0)[1]["gamma"])
  omega = np.asarray(module.apply({"params": tparams}, preprocess.teacher_pixels(u8, "clip", 32),
                                  method="encode_image"))
  for who, emb, key in (("student", gamma, ""), ("teacher", omega, "teacher_")):
    setting = result[f"{key}prompt_setting"] if key else result["prompt_setting"]
    templates = result["prompts"][setting]
    scores = emb / np.linalg.norm(emb, axis=1, keepdims=True) @ class_matrix(templates).T
    assert result[f"{key}test_top1"] == pytest.approx(np.mean(scores.argmax(1) == labels)), who
    top3 = np.argsort(-scores, axis=1)[:, :3]
    assert result[f"{key}test_top3"] == pytest.approx(np.mean((top3 == labels[:, None]).any(1)))
  for png in ("test.png", "test_reliability.png", "teacher_test.png"):
    assert os.path.exists(os.path.join(work, "eval", png))
  summary = tu.read_json(work, "results.json")["settings"]
  assert set(summary["student"]) == {"setting", "caption", "ensemble"}


@pytest.fixture(scope="module")
def finetuned(demo_env, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("ft_metrics"))
  train.run(tu.finetune_config(demo_env, total_steps=3), work)
  return work


def test_finetune_and_probe_results_carry_every_metric(finetuned, pretrained, demo_env,
                                                        tmp_path):
  probe = str(tmp_path / "probe")
  train.run(tu.probe_config(demo_env, init=pretrained), probe)
  for work, old_keys in ((finetuned, ("dataset", "best_step", "best_epoch", "val_top1",
                                      "test_top1", "test_top3", "test_num_examples",
                                      "test_per_class_accuracy")),
                         (probe, ("dataset", "best_epoch", "val_top1", "test_top1", "test_top3",
                                  "test_num_examples"))):
    saved = tu.read_json(work, "results.json")
    for key in old_keys + ("test_macro_f1", "test_per_class_recall", "test_ece",
                           "test_polarity_accuracy", "test_wheel_weighted_error",
                           "test_metrics"):
      assert key in saved, (work, key)
    report = saved["test_metrics"]
    assert report["top1"] == pytest.approx(saved["test_top1"])
    assert report["top3"] == pytest.approx(saved["test_top3"])
    assert report["num_examples"] == saved["test_num_examples"] == 8
    assert 0.0 <= saved["test_ece"] <= 1.0
    assert sum(report["reliability"]["counts"]) == 8
    assert os.path.exists(os.path.join(work, "eval", "test_best_reliability.png"))


def test_read_out_configs_are_validated(finetuned, demo_env):
  config = readout_config(demo_env, finetuned, "zeroshot", **{
      "knn.k": 0, "zeroshot.caption_template": "The emotion is {}.", "eval.batch_size": 0})
  config.teacher.path = ""
  with pytest.raises(validation.ConfigError) as err:
    validation.validate(config)
  text = str(err.value)
  for needle in ("config.knn.k=0", "config.zeroshot.caption_template", "'{emotion}'",
                 "config.eval.batch_size=0", "config.teacher.path is empty",
                 "a fine-tuned classifier", "the zeroshot task needs"):
    assert needle in text, needle


def test_read_out_config_arguments_reject_typos():
  with pytest.raises(ValueError, match="kind='knm'.*did you mean 'knn'"):
    readout_cfg.get_config("emo8,kind=knm")
  with pytest.raises(KeyError, match="unknown read-out dataset 'emo9'"):
    readout_cfg.get_config("emo9,kind=knn")
  config = readout_cfg.get_config("fi,kind=zeroshot")
  assert config.task == "zeroshot" and config.data.name == "emotion_folder/fi"
  assert config.zeroshot.caption_template == "The overall emotion conveyed is {emotion}."
  assert config.knn.k == 20 and config.knn.temperature == 0.07


def test_a_released_uniemox_file_gives_its_fusion_and_the_student(pretrained, demo_env,
                                                                    tmp_path):
  """A flat file in the released layout (`model.*` MAE keys + `att_fusion.*`): 'auto' finds
  its fusion by the keys and the student loads completely."""
  from uniemox_jax.tools import export
  ours, _ = start.read_params(pretrained)
  state = {f"model.{k}": v for k, v in export.export(pretrained, str(tmp_path / "m.npz")).items()}
  fuse = ours["fusion"]
  state.update({"att_fusion.linear.weight": np.asarray(fuse["linear"]["kernel"]).T,
                "att_fusion.linear.bias": np.asarray(fuse["linear"]["bias"]),
                "att_fusion.bn.weight": np.asarray(fuse["norm"]["scale"]),
                "att_fusion.bn.bias": np.asarray(fuse["norm"]["bias"])})
  path = str(tmp_path / "uniemox_released.npz")
  np.savez(path, **state)
  config = readout.resolve_student_config(readout_config(demo_env, path, "zeroshot"),
                                          need_fusion=True)
  assert config.model.fusion == "easyfusion"
  # The released student has no teacher_proj (CLIP's 512 = the decoder width); here the width
  # of γ is the decoder's, 32.
  model, params = readout.load_student(config, sharding.make_mesh(-1, 1), teacher_dim=32)
  assert "teacher_proj" not in params and model.fusion == "easyfusion"
  for a, b in zip(jax.tree.leaves(params["fusion"]), jax.tree.leaves(ours["fusion"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(params["mae"]["encoder"]["cls_token"]),
                             np.asarray(ours["mae"]["encoder"]["cls_token"]))
