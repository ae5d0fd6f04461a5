"""Inference exports of a tiny fine-tuning and pre-training run: Orbax (+ model.json), the
serialized jax.export function run without our package, and the PyTorch layouts."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import train_utils as tu
from uniemox_jax import inference, start, train
from uniemox_jax.data import builders, pipeline
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.models import build, classifier, convert, mae


@pytest.fixture(scope="module")
def runs(demo_env, tmp_path_factory):
  root = tmp_path_factory.mktemp("export_runs")
  pre, ft = str(root / "pre"), str(root / "ft")
  train.run(tu.pretrain_config(demo_env, total_steps=1), pre)
  train.run(tu.finetune_config(demo_env, total_steps=3, init=pre), ft)
  return pre, ft


def _test_pixels(demo_env, n=5):
  """Evaluation crops `uint8 [n, 32, 32, 3]` of the emo8 test split (resize 37, crop 32)."""
  source = builders.load_source("emotion_folder/emo8", "test", demo_env.tfds)
  transform = pipeline.EvalTransform(32, 37)
  return np.stack([transform((i, source[i]))["image"] for i in range(n)])


def _reference_logits(ft, pixels):
  """Logits of the training checkpoint, built from its run config (not via inference.py)."""
  from uniemox_jax import preprocess
  config = json.load(open(os.path.join(ft, "run_info.json")))["config"]
  model = build.from_config(classifier.ViTClassifier, config["model"])
  params, _ = start.read_params(ft)
  return np.asarray(model.apply({"params": params}, preprocess.student_pixels(pixels))[0])


def test_orbax_export_restores_the_classifier_without_the_training_config(runs, demo_env,
                                                                           tmp_path):
  from uniemox_jax.tools import export
  _, ft = runs
  out = str(tmp_path / "export")
  export.export_inference(ft, out, "orbax")
  assert sorted(os.listdir(out)) == ["model.json", "params"]
  info = json.load(open(os.path.join(out, "model.json")))
  assert info["kind"] == "classifier" and info["variant"] == "mu"
  assert (info["image_size"], info["patch_size"], info["num_classes"]) == (32, 8, 8)
  assert info["class_names"] == list(class_names_for("emotion_folder/emo8"))
  prep = info["preprocessing"]
  assert (prep["resize"], prep["crop"]) == (37, 32)
  assert prep["mean"] == [0.485, 0.456, 0.406] and prep["std"] == [0.229, 0.224, 0.225]
  results = json.load(open(os.path.join(ft, "results.json")))
  assert info["source"]["results"] == results and info["source"]["run"] == ft
  assert info["source"]["checkpoint"].endswith(f"step {results['best_step']}")

  # The run directory is gone: restoring needs only the export.
  moved = str(tmp_path / "elsewhere")
  os.rename(out, moved)
  module, params, loaded = inference.load_export(moved)
  assert loaded["class_names"] == info["class_names"]
  assert set(params) == {"encoder", "fc_norm", "head"}  # parameters only, no optimizer
  jax.tree.map(np.testing.assert_array_equal, params, start.read_params(ft)[0])

  pixels = _test_pixels(demo_env)
  from uniemox_jax import preprocess
  logits = np.asarray(module.apply({"params": params}, preprocess.student_pixels(pixels))[0])
  assert logits.dtype == np.float32
  np.testing.assert_allclose(logits, _reference_logits(ft, pixels), rtol=0, atol=1e-6)

  # Any device layout: placed with an explicit sharding.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  _, placed, _ = inference.load_export(moved, sharding=sharding)
  assert all(x.sharding == sharding for x in jax.tree.leaves(placed))

  with pytest.raises(FileExistsError, match="not empty"):
    export.export_inference(ft, moved, "orbax")


PLAIN_JAX = textwrap.dedent("""
    import sys
    try:
      import uniemox_jax
    except ImportError:
      pass
    else:
      raise SystemExit("uniemox_jax is importable here: " + uniemox_jax.__file__)
    import jax
    import numpy as np
    export_dir, pixels_file, out_file = sys.argv[1:]
    with open(export_dir + "/forward.jax_export", "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    params = dict(np.load(export_dir + "/params.npz"))
    pixels = np.load(pixels_file)
    np.save(out_file, np.asarray(exported.call(params, pixels)))
    np.save(out_file + ".one.npy", np.asarray(exported.call(params, pixels[:1])))
    print("platforms", exported.platforms)
""")


def test_jax_export_runs_in_a_python_without_our_package(runs, demo_env, tmp_path):
  from uniemox_jax.tools import export
  _, ft = runs
  out = str(tmp_path / "jx")
  info = export.export_inference(ft, out, "jax_export")
  assert {"model.json", "params", "forward.jax_export", "params.npz"} <= set(os.listdir(out))
  assert "cpu" in info["jax_export"]["platforms"]
  assert info["jax_export"]["input"]["shape"] == ["b", 32, 32, 3]
  assert inference.read_model_info(out)["jax_export"] == info["jax_export"]
  inference.load_export(out)  # still an Orbax export as well

  pixels = _test_pixels(demo_env)
  np.save(tmp_path / "pixels.npy", pixels)
  script = tmp_path / "plain.py"
  script.write_text(PLAIN_JAX)
  outside = tmp_path / "outside"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  proc = subprocess.run(
      [sys.executable, "-I", str(script), out, str(tmp_path / "pixels.npy"),
       str(tmp_path / "logits.npy")], cwd=outside, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  reference = _reference_logits(ft, pixels)
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), reference, rtol=0, atol=1e-5)
  # The batch dimension is symbolic: another batch size runs the same function.
  np.testing.assert_allclose(np.load(str(tmp_path / "logits.npy") + ".one.npy"),
                             reference[:1], rtol=0, atol=1e-5)


def test_pytorch_formats_load_back_to_identical_parameters(runs, tmp_path):
  from uniemox_jax.tools import export
  pre, ft = runs
  ours = jax.device_get(start.read_params(ft)[0])
  export.export(ft, str(tmp_path / "cls.safetensors"))
  back, report = convert.load_classifier_checkpoint(str(tmp_path / "cls.safetensors"),
                                                    variant="mu", num_classes=8, image_size=32)
  assert not report.missing and not report.unexpected
  jax.tree.map(np.testing.assert_array_equal, back, ours)
  export.export(pre, str(tmp_path / "mae.npz"))
  back = convert.load_mae_checkpoint(str(tmp_path / "mae.npz"), "mu", image_size=32)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(start.read_params(pre)[0]["mae"]))
  try:
    import torch  # noqa: F401
  except ImportError:
    return
  export.export(ft, str(tmp_path / "cls.pth"))
  back, _ = convert.load_classifier_checkpoint(str(tmp_path / "cls.pth"), variant="mu",
                                               num_classes=8, image_size=32)
  jax.tree.map(np.testing.assert_array_equal, back, ours)


def test_a_pretraining_run_exports_its_encoder_and_decoder(runs, demo_env, tmp_path):
  from uniemox_jax import preprocess
  from uniemox_jax.tools import export
  pre, _ = runs
  out = str(tmp_path / "mae")
  info = export.export_inference(pre, out, "jax_export")
  assert info["kind"] == "mae" and info["class_names"] is None
  module, params, _ = inference.load_export(out)
  assert isinstance(module, mae.MaskedAutoencoder)
  assert {"encoder", "decoder_embed", "decoder"} <= set(params)
  jax.tree.map(np.testing.assert_array_equal, params, start.read_params(pre)[0]["mae"])
  pixels = _test_pixels(demo_env, 3)
  _, aux = module.apply({"params": params}, preprocess.student_pixels(pixels), mask_ratio=0.0,
                        decode=False)
  exported, flat = inference.load_jax_export(out)
  tokens = np.asarray(exported.call(flat, pixels))
  assert tokens.shape == (3, 17, 32)
  np.testing.assert_allclose(tokens, np.asarray(aux["encoded"]), rtol=0, atol=1e-5)
