"""The training building blocks: schedule, weight-decay mask, layer-wise decay (really
applied), the teacher text cache, evaluation metrics, event files and sharding rules."""
import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from uniemox_jax import evaluate, metrics, sharding
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import classifier, clip
from uniemox_jax.train import optim, teacher_cache


def test_lr_schedule_warmup_then_half_cosine():
  fn = optim.lr_schedule(1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
  np.testing.assert_allclose([fn(0), fn(5), fn(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(fn(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # half way: cos(π/2) = 0
  np.testing.assert_allclose(fn(110), 0.1, atol=1e-6)
  assert optim.scaled_lr(1e-3, 512) == pytest.approx(2e-3)


def test_weight_decay_mask_spares_biases_norms_and_named_tokens():
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 4)), "pos_embed": jnp.zeros((1, 5, 4)),
                        "blocks_0": {"attn": {"qkv": {"kernel": jnp.zeros((4, 12)),
                                                      "bias": jnp.zeros((12,))}},
                                     "norm1": {"scale": jnp.ones((4,))}}}}
  mask = optim.weight_decay_mask(params)
  assert mask["encoder"]["blocks_0"]["attn"]["qkv"] == {"kernel": True, "bias": False}
  assert mask["encoder"]["blocks_0"]["norm1"]["scale"] is False
  assert mask["encoder"]["cls_token"] is True  # MAE pre-training decays tokens
  mask = optim.weight_decay_mask(params, ("pos_embed", "cls_token"))  # fine-tuning
  assert not mask["encoder"]["cls_token"] and not mask["encoder"]["pos_embed"]


def test_layer_ids_follow_the_beit_convention():
  depth = 12
  assert optim.vit_layer_id("encoder/patch_embed/kernel", depth) == 0
  assert optim.vit_layer_id("encoder/cls_token", depth) == 0
  assert optim.vit_layer_id("encoder/pos_embed", depth) == 0
  assert optim.vit_layer_id("encoder/blocks_0/attn/qkv/kernel", depth) == 1
  assert optim.vit_layer_id("encoder/blocks_11/mlp/fc2/bias", depth) == 12
  assert optim.vit_layer_id("fc_norm/scale", depth) == 13
  assert optim.vit_layer_id("head/kernel", depth) == 13


def _optim_cfg(**kw):
  return common.optim_config(**kw)


def test_layer_decay_is_really_applied():
  """One AdamW step from zero-initialised moments moves every parameter by ≈ lr_layer (the
  first Adam update is ±1): the embedding moves decay^(depth+1) times as far as the head."""
  model = classifier.ViTClassifier(variant="mu", image_size=16, patch_size=8, num_classes=3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  depth, decay = 2, 0.5
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.0, layer_decay=decay), params,
                               peak_lr=1.0, total_steps=10, warmup_steps=0, depth=depth)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = lambda *path: float(jnp.abs(_get(updates, path)).mean())
  head = step("head", "kernel")
  np.testing.assert_allclose(step("encoder", "blocks_1", "mlp", "fc1", "kernel"), head * decay,
                             rtol=1e-3)
  np.testing.assert_allclose(step("encoder", "blocks_0", "mlp", "fc1", "kernel"),
                             head * decay ** 2, rtol=1e-3)
  np.testing.assert_allclose(step("encoder", "patch_embed", "kernel"), head * decay ** 3,
                             rtol=1e-3)
  # Without layer decay every layer moves alike.
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.0), params, peak_lr=1.0,
                               total_steps=10, warmup_steps=0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(jnp.abs(updates["encoder"]["patch_embed"]["kernel"]).mean()),
                             float(jnp.abs(updates["head"]["kernel"]).mean()), rtol=1e-3)


def test_weight_decay_is_scaled_by_the_layer_lr_like_pytorch_param_groups():
  params = {"encoder": {"blocks_0": {"w": jnp.full((2, 2), 2.0)}}, "head": {"w": jnp.full((2, 2), 2.0)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.1, layer_decay=0.5), params,
                               peak_lr=1.0, total_steps=10, warmup_steps=0, depth=1)
  updates, _ = tx.update(zero, tx.init(params), params)
  # Zero gradient: the update is −lr_layer · wd · p.
  np.testing.assert_allclose(updates["head"]["w"], -0.1 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["encoder"]["blocks_0"]["w"], -0.5 * 0.1 * 2.0, rtol=1e-6)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def test_teacher_text_cache_equals_on_the_fly(demo_env, tmp_path):
  teacher, params = clip.load_clip(demo_env.clip)
  tokenizer = tokenizer_lib.load_tokenizer(demo_env.clip)
  captions = [f"The scene type of this photo is park. The overall emotion conveyed is {e}."
              for e in ("awe", "fear", "anger", "sadness", "joy")] + ["a " * 120]
  data_cfg = ml_collections.ConfigDict({"caption_field": "caption"})
  source = [{"caption": c} for c in captions]
  cached = teacher_cache.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, data_cfg,
                                         "train", source, cache_dir=str(tmp_path))
  ids, truncated = tokenizer_lib.tokenize(tokenizer, captions)
  assert truncated == 1
  direct = np.asarray(teacher.apply({"params": params}, ids, method="encode_text"))
  # Different batch shapes sum in different orders: equal to float32 rounding, 1e-6 of scale.
  assert np.abs(cached - direct).max() <= 1e-6 * np.abs(direct).max()
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("text_train_")
  # Served from the cache the second time, and the key changes with the captions.
  again = teacher_cache.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, data_cfg,
                                        "train", source, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again, cached)
  teacher_cache.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, data_cfg,
                                "train", source[:-1], cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2


def test_teacher_cache_key_depends_on_the_weights(demo_env, tmp_path):
  import shutil
  other = tmp_path / "other_clip"
  shutil.copytree(demo_env.clip, other)
  spec = clip.load_clip(str(other))[0].spec
  clip.save_pretrained(spec, clip.init_params(spec, seed=1), str(other))
  args = ("caption", ["a photo"], 77, "float32")
  assert (teacher_cache.cache_key(demo_env.clip, demo_env.clip, *args) !=
          teacher_cache.cache_key(str(other), str(other), *args))


def test_evaluation_accumulator_counts_valid_rows_once():
  acc = evaluate.Accumulator(3)
  topk = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 2, 1]])
  labels = np.array([0, 0, 1, 2])
  acc.add(topk, labels, np.array([True, True, True, False]))
  result = acc.result(["a", "b", "c"])
  assert result["num_examples"] == 3
  assert result["top1"] == pytest.approx(1 / 3) and result["top3"] == 1.0
  assert result["confusion_matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
  assert result["per_class_accuracy"] == {"a": 0.5, "b": 0.0, "c": 0.0}


def test_confusion_files(tmp_path):
  acc = evaluate.Accumulator(2)
  acc.add(np.array([[0, 1], [1, 0]]), np.array([0, 0]), np.array([True, True]))
  evaluate.write_confusion(acc.result(["joy", "fear"]), str(tmp_path / "val"))
  assert json.load(open(tmp_path / "val.json"))["top1"] == 0.5
  from PIL import Image
  assert Image.open(tmp_path / "val.png").size[0] > 50


def test_event_file_is_valid_tensorboard(tmp_path):
  """Our event writer's records parse with TensorBoard's own protobuf and CRC."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(7, {"loss": 1.25, "lr": np.float32(1e-3), "vector": np.zeros(3)}, prefix="train/")
  writer.close()
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [
      {"step": 7, "train/loss": 1.25, "train/lr": pytest.approx(1e-3)}]
  (name,) = os.listdir(tmp_path / "tensorboard")
  data = open(tmp_path / "tensorboard" / name, "rb").read()
  events, i = [], 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    record = data[i + 12:i + 12 + length]
    (crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
    masked = (((crc32c(record) >> 15) | (crc32c(record) << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert crc == masked
    event = event_pb2.Event()
    event.ParseFromString(record)
    events.append(event)
    i += 16 + length
  assert events[0].file_version == "brain.Event:2"
  scalars = {v.tag: (e.step, v.simple_value) for e in events[1:] for v in e.summary.value}
  assert scalars == {"train/loss": (7, 1.25), "train/lr": (7, pytest.approx(1e-3))}


def test_param_sharding_rule():
  assert sharding.param_spec((1024, 4096), 4) == jax.sharding.PartitionSpec(None, "fsdp")
  assert sharding.param_spec((4096, 1024), 4) == jax.sharding.PartitionSpec("fsdp", None)
  assert sharding.param_spec((1000, 3), 8) == jax.sharding.PartitionSpec()  # nothing divides
  assert sharding.param_spec((64,), 4) == jax.sharding.PartitionSpec()      # too small
  assert sharding.param_spec((64,), 4, min_size=0) == jax.sharding.PartitionSpec("fsdp")
  assert sharding.param_spec((1024, 4096), 1) == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="does not match"):
    sharding.make_mesh(3, 1)


def test_export_round_trips_through_the_official_layout(demo_env, tmp_path):
  import train_utils as tu
  from uniemox_jax import train
  from uniemox_jax.models import convert
  from uniemox_jax.tools import export
  from uniemox_jax.train import startup
  pre = str(tmp_path / "pre")
  train.run(tu.pretrain_config(demo_env, total_steps=1), pre)
  sd = export.export(pre, str(tmp_path / "mae.safetensors"))
  assert "blocks.0.attn.qkv.weight" in sd and sd["pos_embed"].shape == (1, 17, 32)
  ours, _ = startup.read_params(pre)
  back = convert.load_mae_checkpoint(str(tmp_path / "mae.safetensors"), "mu", image_size=32)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(ours["mae"]))

  ft = str(tmp_path / "ft")
  train.run(tu.finetune_config(demo_env, total_steps=1, init=pre), ft)
  export.export(ft, str(tmp_path / "cls.npz"))
  back, report = convert.load_classifier_checkpoint(str(tmp_path / "cls.npz"), variant="mu",
                                                    num_classes=8, image_size=32)
  assert not report.missing and not report.unexpected
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(startup.read_params(ft)[0]))


def test_person_input_normalises_twice_only_for_the_released_second_view():
  from uniemox_jax.train import pretrain
  pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)), jnp.uint8)
  mean = np.asarray([0.485, 0.456, 0.406], np.float32)
  std = np.asarray([0.229, 0.224, 0.225], np.float32)
  once = (np.asarray(pixels, np.float32) / 255.0 - mean) / std
  np.testing.assert_allclose(pretrain.person_input(pixels, "detector_crop"), once, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(pretrain.person_input(pixels, "second_view"), (once - mean) / std,
                             rtol=1e-6, atol=1e-6)
