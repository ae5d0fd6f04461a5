"""`python -m uniemox_jax.predict`: the evaluation's predictions, exports, attention maps and
bad inputs, on a tiny fine-tuning run of the demo data."""
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import train_utils as tu
from uniemox_jax import attention_maps, inference, predict, preprocess, start, train
from uniemox_jax.data import builders, pipeline
from uniemox_jax.evaluators import classification
from uniemox_jax.models import build, classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ft(demo_env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("predict_runs") / "ft")
  train.run(tu.finetune_config(demo_env, total_steps=3), workdir)
  return workdir


def _test_files(demo_env):
  """The emo8 test split's source and its raw files, in source order."""
  source = builders.load_source("emotion_folder/emo8", "test", demo_env.tfds)
  root = os.path.join(demo_env.raw, "benchmarks", "emo8")
  return source, [os.path.join(root, source[i]["image_id"]) for i in range(len(source))]


def test_predictions_are_those_of_the_evaluation(ft, demo_env):
  config = tu.finetune_config(demo_env)
  source, files = _test_files(demo_env)
  batch = config.eval.batch_size
  predictor = predict.Predictor.from_path(ft, batch_size=batch, top_k=8)
  inputs = [predict.Input(f, f, os.path.basename(f)) for f in files]
  preds = list(predictor.predict(inputs))
  assert all(isinstance(p, predict.Prediction) for p in preds)
  probs = np.stack([p.probs for p in preds])
  labels = np.array([p.top[0][1] for p in preds])

  # The eval path: its dataset and transform, the checkpoint's params, the eval step.
  model = build.from_config(classifier.ViTClassifier, config.model)
  params, _ = start.read_params(ft)
  apply_logits = lambda p, x: model.apply({"params": p}, x)[0]
  softmax = jax.jit(lambda p, u8: jax.nn.softmax(apply_logits(p, preprocess.student_pixels(u8)),
                                                 axis=-1))
  step = jax.jit(classification.make_eval_step(apply_logits, 8))
  dataset = pipeline.eval_dataset(source, pipeline.EvalTransform(32, config.data.eval_resize),
                                  global_batch=batch)
  expected, confusion = [], np.zeros((8, 8), np.int64)
  for b in pipeline.to_iter(dataset):
    expected.append(np.asarray(softmax(params, b["image"]))[b["valid"]])
    confusion += np.asarray(step(params, b)["confusion"])
  np.testing.assert_array_equal(probs, np.concatenate(expected))
  truth = np.array([source[i]["label"] for i in range(len(source))])
  ours = np.zeros((8, 8), np.int64)
  np.add.at(ours, (truth, labels), 1)
  np.testing.assert_array_equal(ours, confusion)
  # ... and the confusion matrix the run itself wrote for its best checkpoint on test.
  with open(os.path.join(ft, "eval", "test_best.json")) as f:
    np.testing.assert_array_equal(ours, json.load(f)["confusion_matrix"])
  assert [p.top[0][0] for p in preds] == [predictor.class_names[i] for i in labels]


def test_an_export_predicts_the_logits_of_the_training_checkpoint(ft, demo_env, tmp_path):
  from uniemox_jax.tools import export
  out = str(tmp_path / "export")
  export.export_inference(ft, out, "orbax")
  _, files = _test_files(demo_env)
  from_run = predict.Predictor.from_path(ft)
  from_export = predict.Predictor.from_path(out)
  pixels = np.stack([from_export.load_pixels(f) for f in files])
  np.testing.assert_array_equal(pixels, np.stack([from_run.load_pixels(f) for f in files]))
  got = from_export.run_batch(pixels)["logits"]
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, from_run.run_batch(pixels)["logits"], rtol=0, atol=1e-6)
  # The table names every file with its top-k.
  stdout, stderr = io.StringIO(), io.StringIO()
  assert predict.run(out, files[:2], top_k=2, stdout=stdout, stderr=stderr) == 0
  lines = stdout.getvalue().splitlines()
  assert lines[0].split() == ["file", "top-1", "top-2"] and len(lines) == 3
  assert lines[1].startswith(files[0]) and len(lines[1].split()) == 5


def _broken_folder(demo_env, where):
  shutil.copytree(os.path.join(demo_env.raw, "benchmarks", "emo8", "test"), where)
  good = sorted(os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs)
  with open(good[0], "rb") as f:
    data = f.read()
  with open(os.path.join(where, "awe", "truncated.jpg"), "wb") as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(where, "page.jpg"), "w") as f:
    f.write("<!DOCTYPE html><html><body>404 Not Found</body></html>")
  open(os.path.join(where, "empty.png"), "wb").close()
  with open(os.path.join(where, "notes.txt"), "w") as f:
    f.write("not an image")
  return good


def test_a_folder_with_broken_files_is_predicted_except_them(ft, demo_env, tmp_path):
  folder = str(tmp_path / "photos")
  good = _broken_folder(demo_env, folder)
  maps = str(tmp_path / "maps")
  env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
  proc = subprocess.run(
      [sys.executable, "-m", "uniemox_jax.predict", f"--checkpoint={ft}", "--format=jsonl",
       "--top_k=3", f"--attention_maps={maps}", "--batch_size=4", folder],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == predict.EXIT_SOME_FAILED == 4, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  ok = [r for r in rows if "error" not in r]
  bad = {os.path.basename(r["file"]): r["error"] for r in rows if "error" in r}
  assert sorted(r["file"] for r in ok) == good
  assert set(bad) == {"truncated.jpg", "page.jpg", "empty.png"}
  assert "truncated" in bad["truncated.jpg"] and "HTML" in bad["page.jpg"]
  assert bad["empty.png"] == "zero-byte file"
  for name in bad:
    assert name in proc.stderr
  assert "notes.txt" in proc.stderr  # left out (no image extension), and said so
  assert "predict: 11/11 images" in proc.stderr
  assert all(len(r["top_k"]) == 3 and r["label"] == r["top_k"][0]["label"] for r in ok)
  # One attention figure per predicted image: the crop, the two overlays, the label.
  assert sorted(os.listdir(maps)) == sorted(
      os.path.relpath(os.path.splitext(g)[0], folder).replace(os.sep, "__") + ".png"
      for g in good)
  assert all(os.path.exists(r["attention_map"]) for r in ok)
  figure = Image.open(ok[0]["attention_map"])
  assert figure.width > 3 * 192 and figure.height > 192


def test_a_pretraining_checkpoint_says_what_to_do(demo_env, tmp_path):
  pre = str(tmp_path / "pre")
  train.run(tu.pretrain_config(demo_env, total_steps=1), pre)
  _, files = _test_files(demo_env)
  stderr = io.StringIO()
  assert predict.run(pre, files[:1], stdout=io.StringIO(), stderr=stderr) == 2
  message = stderr.getvalue()
  assert "pre-training checkpoint" in message and "Fine-tune it first" in message
  assert "--format=orbax" in message
  with pytest.raises(inference.NotAClassifierError):
    inference.load_classifier(pre)


def test_attention_maps_leave_the_logits_unchanged(ft, demo_env):
  module, params, info = inference.from_checkpoint(ft)
  _, files = _test_files(demo_env)
  predictor = predict.Predictor(module, params, info)
  images = preprocess.student_pixels(np.stack([predictor.load_pixels(f) for f in files[:3]]))
  plain, _ = module.apply({"params": params}, images)
  (logits, _), maps = attention_maps.apply_with_maps(module, params, images)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))
  for key in ("last", "rollout"):
    assert maps[key].shape == (3, 4, 4)
    assert float(maps[key].min()) == 0.0 and float(maps[key].max()) == pytest.approx(1.0)
  fused = module.clone(attention_impl="xla")
  with pytest.raises(ValueError, match="attention_impl='explicit'"):
    attention_maps.apply_with_maps(fused, params, images)
  with pytest.raises(ValueError, match="attention_impl='explicit'"):
    fused.apply({"params": params}, images, mutable=["intermediates"])


def test_attention_maps_follow_the_attention():
  """One block whose CLS attends to patch 5 only: both maps peak there."""
  t = 1 + 16
  w = np.full((1, 2, t, t), 1.0 / t, np.float32)
  w[:, :, 0] = 0.0
  w[:, :, 0, 1 + 5] = 1.0
  last = np.asarray(attention_maps.last_block_cls([jnp.asarray(w)]))
  roll = np.asarray(attention_maps.rollout([jnp.asarray(w), jnp.asarray(w)]))
  for m in (last, roll):
    assert m.shape == (1, 4, 4) and np.unravel_index(m.argmax(), m.shape) == (0, 1, 1)


def test_importing_the_commands_defines_no_flags():
  from absl import flags
  from uniemox_jax.tools import export  # noqa: F401  pylint: disable=unused-import
  for name in ("checkpoint", "top_k", "attention_maps", "out"):
    assert name not in flags.FLAGS
