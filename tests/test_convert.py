"""Weight conversion (models/convert.py): layouts, round trips, reports and errors.

Most tests need no PyTorch (safetensors / npz / numpy state dicts, so they also run on the
torch-less interpreter); the ones that write `.pth` files are marked `torch`. Parity against
transformers' ViTMAE lives in test_mae_parity.py.
"""
import argparse
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from uniemox_jax.models import classifier as classifier_lib
from uniemox_jax.models import convert, mae, uniemox, vit
from uniemox_jax.models import fusion as fusion_lib

IMAGE = 32   # 'mu': width 32, 2 blocks, 2 heads, mlp 128, patch 8; decoder 32 wide, 1 block.
GRID = IMAGE // 8


def _tree_equal(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: np.shape(x) == np.shape(y) and bool(np.array_equal(np.asarray(x),
                                                                       np.asarray(y))), a, b)))


def _jit(fn, **static):
  """jit with keyword arguments bound (eager flax is several times slower on tiny models)."""
  return jax.jit(functools.partial(fn, **static))


@pytest.fixture(scope="module")
def mae_params():
  init = _jit(mae.init_params, model=mae.MaskedAutoencoder("mu", IMAGE), seed=1)
  return jax.tree.map(np.asarray, init())


@pytest.fixture(scope="module")
def official_sd(mae_params):
  return convert.params_to_mae_state_dict(mae_params, image_size=IMAGE)


def _images(batch=2, size=IMAGE, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, size, size, 3)).astype(np.float32)


def _noise(batch=2, length=GRID * GRID, seed=1):
  return np.random.default_rng(seed).random((batch, length)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Layouts and round trips.


def test_state_dict_uses_official_names_and_torch_layouts(mae_params, official_sd):
  sd, p = official_sd, mae_params
  assert sd["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
  assert sd["blocks.1.attn.qkv.weight"].shape == (96, 32)
  np.testing.assert_array_equal(sd["blocks.1.attn.qkv.weight"],
                                p["encoder"]["blocks_1"]["attn"]["qkv"]["kernel"].T)
  np.testing.assert_array_equal(sd["decoder_blocks.0.mlp.fc1.weight"],
                                p["decoder"]["blocks_0"]["mlp"]["fc1"]["kernel"].T)
  np.testing.assert_array_equal(sd["decoder_norm.weight"], p["decoder"]["norm"]["scale"])
  np.testing.assert_array_equal(sd["mask_token"], p["decoder"]["mask_token"])
  assert sd["decoder_pred.weight"].shape == (8 * 8 * 3, 32)
  table = vit.get_2d_sincos_pos_embed(32, GRID, cls_token=True)[None]
  np.testing.assert_array_equal(sd["pos_embed"], table)
  np.testing.assert_array_equal(sd["decoder_pos_embed"], table)
  # patch w/b, cls, pos; 2 blocks of 12; norm | decoder_embed w/b, mask, pos, 1 block, norm, pred
  assert len(sd) == (4 + 2 * 12 + 2) + (2 + 1 + 1 + 12 + 2 + 2)


def test_patch_projection_matches_a_pytorch_style_convolution(mae_params, official_sd):
  # PyTorch Conv2d semantics, written out: out[b, d, i, j] = Σ_c,u,v W[d,c,u,v] x[b,c,ip+u,jp+v].
  x = _images(1)
  w, b = official_sd["patch_embed.proj.weight"], official_sd["patch_embed.proj.bias"]
  nchw = x.transpose(0, 3, 1, 2).reshape(1, 3, GRID, 8, GRID, 8)
  ref = np.einsum("dcuv,bciujv->bijd", w, nchw) + b
  params, _ = convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=IMAGE)
  conv = nn.Conv(32, (8, 8), strides=(8, 8), padding="VALID")
  ours = conv.apply({"params": params["encoder"]["patch_embed"]}, x)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_round_trip_is_exact(mae_params, official_sd):
  params, report = convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=IMAGE)
  assert _tree_equal(params, mae_params)
  assert report.ok and not report.missing and not report.unexpected
  assert set(report.skipped) == {"pos_embed", "decoder_pos_embed"}
  back = convert.params_to_mae_state_dict(params, image_size=IMAGE)
  assert back.keys() == official_sd.keys()
  for key in back:
    np.testing.assert_array_equal(back[key], official_sd[key], err_msg=key)


def test_loaded_params_run_in_the_model(official_sd):
  params = convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=IMAGE)[0]
  pred, aux = _jit(mae.MaskedAutoencoder("mu", IMAGE).apply, mask_ratio=0.75)(
      {"params": params}, _images(), noise=_noise())
  assert pred.shape == (2, GRID * GRID, 192) and np.isfinite(np.asarray(pred)).all()
  assert aux["encoded"].shape == (2, 1 + 4, 32)


# --------------------------------------------------------------------------------------
# File formats without PyTorch.


def test_safetensors_file_with_module_prefix(tmp_path, mae_params, official_sd):
  path = str(tmp_path / "mae.safetensors")
  st_numpy.save_file({"module." + k: v for k, v in official_sd.items()}, path)
  params, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                               strict=True, return_report=True)
  assert _tree_equal(params, mae_params)
  assert report.source == path and len(report.loaded) == len(official_sd) - 2
  sd = convert.read_state_dict(path)
  assert sd.keys() == official_sd.keys()


def test_half_precision_files_are_cast_to_float32(tmp_path, official_sd):
  path = str(tmp_path / "fp16.safetensors")
  st_numpy.save_file({k: v.astype(np.float16) for k, v in official_sd.items()}, path)
  sd = convert.read_state_dict(path)
  assert all(v.dtype == np.float32 for v in sd.values())
  np.testing.assert_array_equal(sd["blocks.0.attn.qkv.weight"],
                                official_sd["blocks.0.attn.qkv.weight"].astype(np.float16))

  # bf16: numpy cannot hold it natively (safetensors.numpy refuses); written by hand here.
  path = str(tmp_path / "bf16.safetensors")
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in official_sd.items()}
  header, blobs, offset = {}, [], 0
  for key, value in bf16.items():
    raw = value.tobytes()
    header[key] = {"dtype": "BF16", "shape": list(value.shape),
                   "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  head = json.dumps(header).encode()
  head += b" " * (-len(head) % 8)
  with open(path, "wb") as f:
    f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
  sd = convert.read_state_dict(path)
  assert sd["decoder_pred.weight"].dtype == np.float32
  np.testing.assert_array_equal(sd["decoder_pred.weight"],
                                bf16["decoder_pred.weight"].astype(np.float32))
  params = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE)
  assert params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"].dtype == np.float32


def test_npz_file(tmp_path, mae_params, official_sd):
  path = str(tmp_path / "mae.npz")
  np.savez(path, **official_sd)
  assert _tree_equal(convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE),
                     mae_params)


def _hub_style_hf_dir(tmp_path, sd, **config_overrides):
  """A Hugging Face ViTMAE directory in the hub's naming, written by hand from an MAE dict."""
  hf = {}
  rename = {"norm1": "layernorm_before", "norm2": "layernorm_after",
            "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense"}
  for key, value in sd.items():
    parts = key.split(".")
    if parts[0] in ("blocks", "decoder_blocks"):
      base = (f"vit.encoder.layer.{parts[1]}" if parts[0] == "blocks"
              else f"decoder.decoder_layers.{parts[1]}")
      sub, leaf = ".".join(parts[2:-1]), parts[-1]
      if sub == "attn.qkv":
        for name, chunk in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
          hf[f"{base}.attention.attention.{name}.{leaf}"] = chunk
      else:
        hf[f"{base}.{rename[sub]}.{leaf}"] = value
      continue
    top = {"cls_token": "vit.embeddings.cls_token",
           "pos_embed": "vit.embeddings.position_embeddings",
           "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
           "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
           "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed"}
    hf[top.get(key, "decoder." + key)] = value
  config = {"model_type": "vit_mae", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 128, "image_size": IMAGE,
            "patch_size": 8, "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
            "decoder_num_attention_heads": 2, "decoder_intermediate_size": 128,
            "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True}
  config.update(config_overrides)
  directory = tmp_path / "hf"
  directory.mkdir(exist_ok=True)
  st_numpy.save_file(hf, str(directory / "model.safetensors"))
  (directory / "config.json").write_text(json.dumps(config))
  return str(directory), hf


def test_hugging_face_directory_is_renamed_and_qkv_fused(tmp_path, mae_params, official_sd):
  path, hf = _hub_style_hf_dir(tmp_path, official_sd)
  assert "vit.encoder.layer.1.attention.attention.key.weight" in hf
  params, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                               strict=True, return_report=True)
  assert _tree_equal(params, mae_params)
  assert not report.notes
  sd = convert.read_state_dict(path)
  np.testing.assert_array_equal(sd["blocks.1.attn.qkv.weight"],
                                official_sd["blocks.1.attn.qkv.weight"])


def test_hugging_face_config_is_checked(tmp_path, official_sd):
  path, _ = _hub_style_hf_dir(tmp_path, official_sd, num_attention_heads=4)
  with pytest.raises(ValueError, match="num_attention_heads=4"):
    convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE)
  path, _ = _hub_style_hf_dir(tmp_path, official_sd, layer_norm_eps=1e-12)
  _, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                          return_report=True)
  assert any("layer_norm_eps=1e-12" in n for n in report.notes)


# --------------------------------------------------------------------------------------
# Partial files, reports and errors.


def test_encoder_only_file_loads_only_the_encoder(tmp_path, mae_params, official_sd):
  encoder_sd = {k: v for k, v in official_sd.items()
                if not k.startswith("decoder") and k != "mask_token"}
  path = str(tmp_path / "mae_pretrain_vit_mu.safetensors")
  st_numpy.save_file(encoder_sd, path)
  params, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                               return_report=True)
  assert set(params) == {"encoder"}
  assert _tree_equal(params["encoder"], mae_params["encoder"])
  assert "decoder_embed.weight" in report.missing and "mask_token" in report.missing
  assert not report.unexpected
  assert "decoder_blocks.0.attn.qkv.weight" in report.summary()
  tokens, _ = jax.jit(vit.encoder_from_variant("mu", image_size=IMAGE).apply)(
      {"params": params["encoder"]}, _images())
  assert tokens.shape == (2, 1 + GRID * GRID, 32)
  with pytest.raises(ValueError, match="decoder_embed.weight"):
    convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE, strict=True)


def test_unexpected_keys_are_reported_by_name(official_sd):
  sd = dict(official_sd, **{"head.weight": np.zeros((3, 32), np.float32),
                            "blocks.0.attn.relative_bias": np.zeros((4,), np.float32)})
  params, report = convert.mae_state_dict_to_params(sd, variant="mu", image_size=IMAGE)
  assert sorted(report.unexpected) == ["blocks.0.attn.relative_bias", "head.weight"]
  assert "head.weight" in report.summary()
  with pytest.raises(ValueError, match="unexpected keys.*head.weight"):
    report.check_strict()
  assert "decoder" in params


def test_unexpected_key_raises_in_strict_file_load(tmp_path, official_sd):
  path = str(tmp_path / "extra.safetensors")
  st_numpy.save_file(dict(official_sd, extra_thing=np.ones(3, np.float32)), path)
  with pytest.raises(ValueError, match="extra_thing"):
    convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE, strict=True)


def test_missing_key_in_strict_mode_is_named(tmp_path, official_sd):
  sd = {k: v for k, v in official_sd.items() if k != "blocks.1.mlp.fc2.bias"}
  path = str(tmp_path / "missing.safetensors")
  st_numpy.save_file(sd, path)
  with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias"):
    convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE, strict=True)
  params, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                               return_report=True)
  assert report.missing == ["blocks.1.mlp.fc2.bias"]
  assert "bias" not in params["encoder"]["blocks_1"]["mlp"]["fc2"]


def test_wrong_shape_names_key_and_both_shapes(official_sd):
  sd = dict(official_sd)
  sd["blocks.0.attn.proj.weight"] = np.zeros((32, 31), np.float32)
  with pytest.raises(ValueError, match=r"blocks\.0\.attn\.proj\.weight.*\[32, 31\].*\[32, 32\]"):
    convert.mae_state_dict_to_params(sd, variant="mu", image_size=IMAGE)


def test_wrong_variant_fails_clearly(official_sd):
  with pytest.raises(ValueError, match=r"width 32, depth 2.*variant 'B/16'.*variant='mu'"):
    convert.mae_state_dict_to_params(official_sd, variant="B/16", image_size=IMAGE)
  truncated = {k: v for k, v in official_sd.items() if not k.startswith("blocks.1.")}
  with pytest.raises(ValueError, match="depth 1"):
    convert.mae_state_dict_to_params(truncated, variant="mu", image_size=IMAGE)
  with pytest.raises(ValueError, match="patch size is 8.*patch_size=8"):
    convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=IMAGE, patch_size=4)
  with pytest.raises(ValueError, match="decoder width is 32.*decoder_width=32"):
    convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=IMAGE,
                                     decoder_width=64)


def test_other_image_size_recomputes_the_fixed_tables(official_sd):
  params, report = convert.mae_state_dict_to_params(official_sd, variant="mu", image_size=48)
  assert "recomputed for a 6x6 grid" in report.skipped["pos_embed"]
  assert report.ok
  want = jax.eval_shape(lambda: mae.init_params(mae.MaskedAutoencoder("mu", 48)))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, want)


def test_missing_file_and_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.read_state_dict(tmp_path / "nope.pth")
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    convert.read_state_dict(tmp_path)


# --------------------------------------------------------------------------------------
# Classifier.


def test_classifier_from_pretraining_checkpoint_with_resized_pos_embed(tmp_path, official_sd):
  path = str(tmp_path / "pretrain.safetensors")
  st_numpy.save_file(official_sd, path)
  params, report = convert.load_classifier_checkpoint(path, variant="mu", num_classes=5,
                                                      image_size=48, strict=True)
  assert set(report.initialized) == {"fc_norm.weight", "fc_norm.bias", "head.weight",
                                     "head.bias"}
  assert {"norm.weight", "norm.bias"} <= set(report.skipped)
  assert "encoder norm" in report.skipped["norm.weight"]
  assert "decoder_embed.weight" in report.skipped and "mask_token" in report.skipped
  assert not report.unexpected
  assert report.resized["pos_embed"] == ((1, 17, 32), (1, 37, 32))
  table = params["encoder"]["pos_embed"]
  np.testing.assert_array_equal(table, vit.resize_pos_embed(official_sd["pos_embed"], (6, 6)))
  np.testing.assert_array_equal(table[:, 0], official_sd["pos_embed"][:, 0])   # CLS row kept
  np.testing.assert_array_equal(params["encoder"]["blocks_1"]["attn"]["qkv"]["kernel"],
                                official_sd["blocks.1.attn.qkv.weight"].T)
  assert "newly initialised (4)" in report.summary()
  model = classifier_lib.ViTClassifier(variant="mu", num_classes=5, image_size=48)
  reference = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))
  assert jax.tree.structure(reference["params"]) == jax.tree.structure(params)
  logits, _ = jax.jit(model.apply)({"params": params}, _images(2, 48))
  assert logits.shape == (2, 5) and np.isfinite(np.asarray(logits)).all()
  with pytest.raises(ValueError, match="num_classes"):
    convert.load_classifier_checkpoint(path, variant="mu", image_size=48)


def test_classifier_from_finetuned_checkpoint(tmp_path):
  model = classifier_lib.ViTClassifier(variant="mu", num_classes=6, image_size=IMAGE)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(3), jnp.zeros((1, IMAGE, IMAGE, 3)))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                        shapes["params"])
  params["encoder"]["pos_embed"] = params["encoder"]["pos_embed"] + 0.5  # "learned"
  sd = convert.params_to_mae_state_dict(params, image_size=IMAGE)
  assert sd["head.weight"].shape == (6, 32) and "fc_norm.weight" in sd
  np.testing.assert_array_equal(sd["pos_embed"], params["encoder"]["pos_embed"])
  # The released VisionTransformer keeps an (unused) encoder norm next to fc_norm.
  sd["norm.weight"], sd["norm.bias"] = np.ones(32, np.float32), np.zeros(32, np.float32)
  path = str(tmp_path / "finetuned.npz")
  np.savez(path, **sd)
  loaded, report = convert.load_classifier_checkpoint(path, variant="mu", image_size=IMAGE,
                                                      strict=True)
  assert _tree_equal(loaded, params)
  assert not report.initialized and not report.resized and "norm.weight" in report.skipped
  # Another class count: the head is re-initialised, the rest kept.
  loaded, report = convert.load_classifier_checkpoint(path, variant="mu", num_classes=3,
                                                      image_size=IMAGE)
  assert loaded["head"]["kernel"].shape == (32, 3)
  assert "6 classes" in report.skipped["head.weight"] and "head.weight" in report.initialized
  assert _tree_equal(loaded["encoder"], params["encoder"])


# --------------------------------------------------------------------------------------
# UniEmoX released checkpoints (MAE + att_fusion).


def _layer_norm(x, w, b, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * w + b


def _softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _released_fusion(kind, c, heads, rng):
  """A random state dict of the released fusion class (models/attention_fusion.py names)."""
  n = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3
  if kind == "easyfusion":   # AttentionFusion
    return {"linear.weight": n(c, c), "linear.bias": n(c), "bn.weight": 1 + n(c),
            "bn.bias": n(c)}
  if kind == "weighted_sum":  # MultiHeadWeightedSumFusion
    return {"alpha": n(heads, 1, c), "beta": n(heads, 1, c), "layer_norm.weight": 1 + n(c),
            "layer_norm.bias": n(c), "bias": n(1, c)}
  rows = 1 if kind == "dual_attention" else c
  sd = {"bias": n(1, c)}
  for h in range(heads):
    for side in "ab":
      sd[f"W_{side}.{h}.weight"], sd[f"W_{side}.{h}.bias"] = n(rows, c), n(rows)
  if kind == "mlp_glu":      # MLPMultiHeadAttentionGLU
    sd.update({"mlp.0.weight": n(c, c * heads), "mlp.0.bias": n(c), "mlp.2.weight": n(c, c),
               "mlp.2.bias": n(c), "gate.weight": n(c, c), "gate.bias": n(c)})
  return sd


def _released_forward(kind, sd, a, b, heads):
  """The released fusion modules' forward passes, in numpy."""
  lin = lambda x, name: x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
  if kind == "easyfusion":
    combined = (_layer_norm(a, sd["bn.weight"], sd["bn.bias"])
                + _layer_norm(b, sd["bn.weight"], sd["bn.bias"]))
    y = lin(combined, "linear")
    return np.where(y > 0, y, np.expm1(y))           # ELU(alpha=1)
  if kind == "weighted_sum":
    fused = sum(sd["alpha"][h] * a + sd["beta"][h] * b for h in range(heads))
    return _layer_norm(fused, sd["layer_norm.weight"], sd["layer_norm.bias"]) + sd["bias"]
  per_head = [_softmax(lin(a, f"W_a.{h}"), 1) * a + _softmax(lin(b, f"W_b.{h}"), 1) * b
              for h in range(heads)]
  if kind == "dual_attention":
    fused = sum(per_head)
    return fused / (1 + np.exp(-fused)) + sd["bias"]   # swish
  mlp = lin(np.maximum(lin(np.concatenate(per_head, 1), "mlp.0"), 0), "mlp.2")
  gate = lin(mlp, "gate")
  return np.maximum(mlp / (1 + np.exp(-gate)), 0) + sd["bias"]


@functools.cache
def _uniemox_apply():
  model = uniemox.UniEmoX(variant="mu", image_size=IMAGE, fusion="easyfusion", teacher_dim=32)
  return _jit(model.apply, mask_ratio=0.75)


def _run_uniemox(params):
  """The whole UniEmoX forward (easyfusion) → aux with alpha, beta, gamma."""
  return _uniemox_apply()({"params": params}, _images(2, seed=4), _images(2, seed=5),
                          noise_scene=_noise(seed=6), noise_person=_noise(seed=7))[1]


@pytest.mark.parametrize("kind,heads", [("easyfusion", 3), ("weighted_sum", 3),
                                        ("dual_attention", 2), ("mlp_glu", 2)])
def test_uniemox_flat_checkpoint_with_released_fusion(tmp_path, mae_params, official_sd, kind,
                                                      heads):
  fusion_sd = _released_fusion(kind, 32, heads, np.random.default_rng(0))
  flat = {f"module.model.{k}": v for k, v in official_sd.items()}
  flat.update({f"att_fusion.module.{k}": v for k, v in fusion_sd.items()})
  path = str(tmp_path / "uniemox.safetensors")
  st_numpy.save_file(flat, path)
  params, report = convert.load_uniemox_checkpoint(
      path, variant="mu", image_size=IMAGE, fusion=kind, teacher_dim=32, strict=True,
      return_report=True)
  assert set(params) == {"mae", "fusion"}
  assert _tree_equal(params["mae"], mae_params)
  assert sorted(report.loaded[-len(fusion_sd):]) == sorted(f"att_fusion.{k}" for k in fusion_sd)
  if kind == "easyfusion":
    np.testing.assert_array_equal(params["fusion"]["linear"]["kernel"],
                                  fusion_sd["linear.weight"].T)
    np.testing.assert_array_equal(params["fusion"]["norm"]["scale"], fusion_sd["bn.weight"])
  model = uniemox.UniEmoX(variant="mu", image_size=IMAGE, fusion=kind, fusion_heads=heads,
                          teacher_dim=32)
  want = jax.eval_shape(lambda: uniemox.init_params(model))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, want)
  if kind == "easyfusion":   # the whole model runs on the loaded tree
    aux = _run_uniemox(params)
    alpha, beta, gamma = (np.asarray(aux[k]) for k in ("alpha", "beta", "gamma"))
  else:                      # the other kinds: their fusion module alone
    rng = np.random.default_rng(1)
    alpha, beta = rng.standard_normal((2, 3, 32)).astype(np.float32)
    gamma = np.asarray(fusion_lib.make_fusion(kind, heads).apply(
        {"params": params["fusion"]}, alpha, beta))
  expected = _released_forward(kind, fusion_sd, alpha, beta, heads)
  np.testing.assert_allclose(gamma, expected, rtol=1e-5, atol=1e-5)


def test_uniemox_fusion_mismatch_and_teacher_projection(tmp_path, official_sd):
  fusion_sd = _released_fusion("weighted_sum", 32, 3, np.random.default_rng(0))
  with pytest.raises(ValueError, match="MultiHeadWeightedSumFusion.*fusion='weighted_sum'"):
    convert.uniemox_state_dicts_to_params(official_sd, fusion_sd, variant="mu",
                                          image_size=IMAGE, fusion="easyfusion")
  with pytest.raises(ValueError, match="3 heads.*fusion_heads=3"):
    convert.uniemox_state_dicts_to_params(official_sd, fusion_sd, variant="mu",
                                          image_size=IMAGE, fusion="weighted_sum",
                                          fusion_heads=2)
  # The decoder width (32) differs from the teacher's (512): teacher_proj is new.
  params, report = convert.uniemox_state_dicts_to_params(
      official_sd, fusion_sd, variant="mu", image_size=IMAGE, fusion="weighted_sum")
  assert "teacher_proj.weight" in report.missing and "teacher_proj" not in params
  # An MAE-only file: the fusion is reported missing.
  path = str(tmp_path / "mae.safetensors")
  st_numpy.save_file(official_sd, path)
  params, report = convert.load_uniemox_checkpoint(path, variant="mu", image_size=IMAGE,
                                                   teacher_dim=32, return_report=True)
  assert set(params) == {"mae"} and "att_fusion.linear.weight" in report.missing


# --------------------------------------------------------------------------------------
# PyTorch files.


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["model", "module", "bare", "state_dict"])
def test_pth_layouts(tmp_path, mae_params, official_sd, layout):
  import torch  # the `torch` marker keeps this test out of runs without it
  sd = {k: torch.from_numpy(v.copy()) for k, v in official_sd.items()}
  obj = {"model": sd, "epoch": 5}
  if layout == "module":
    obj = {"model": {"module." + k: v for k, v in sd.items()}}
  elif layout == "bare":
    obj = sd
  elif layout == "state_dict":
    obj = {"state_dict": sd}
  path = str(tmp_path / "ckpt.pth")
  torch.save(obj, path)
  params = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE, strict=True)
  assert _tree_equal(params, mae_params)


@pytest.mark.torch
def test_pth_half_precision(tmp_path, official_sd):
  import torch  # the `torch` marker keeps this test out of runs without it
  path = str(tmp_path / "bf16.pth")
  torch.save({"model": {k: torch.from_numpy(v.copy()).to(torch.bfloat16)
                        for k, v in official_sd.items()}}, path)
  sd = convert.read_state_dict(path)
  assert sd["blocks.0.mlp.fc1.weight"].dtype == np.float32
  np.testing.assert_allclose(sd["blocks.0.mlp.fc1.weight"], official_sd["blocks.0.mlp.fc1.weight"],
                             rtol=1e-2, atol=1e-2)


@pytest.mark.torch
def test_released_uniemox_pth_with_attention_fusion(tmp_path, mae_params, official_sd):
  """The file main_pretrain.py writes: DDP prefixes, optimizer state, the argparse args."""
  import torch  # the `torch` marker keeps this test out of runs without it
  torch.manual_seed(0)
  c = 32

  class ReleasedAttentionFusion(torch.nn.Module):  # the released AttentionFusion, by hand
    def __init__(self):
      super().__init__()
      self.linear = torch.nn.Linear(c, c)
      self.leaky_relu = torch.nn.ELU(alpha=1.0)
      self.bn = torch.nn.LayerNorm(c)

    def forward(self, x_context, x_body):
      return self.leaky_relu(self.linear(self.bn(x_context) + self.bn(x_body)))

  fusion = ReleasedAttentionFusion()
  with torch.no_grad():
    fusion.bn.weight.uniform_(0.5, 1.5)
    fusion.bn.bias.normal_(0, 0.2)
  optimizer = torch.optim.AdamW(fusion.parameters())
  fusion(torch.randn(2, c), torch.randn(2, c)).sum().backward()
  optimizer.step()
  checkpoint = {
      "model": {"module." + k: torch.from_numpy(v.copy()) for k, v in official_sd.items()},
      "att_fusion": {"module." + k: v for k, v in fusion.state_dict().items()},
      "optimizer": optimizer.state_dict(),
      "epoch": 100,
      "args": argparse.Namespace(model="mae_vit_mu", mask_ratio=0.75, use_fusion="easyfusion",
                                 heads=3, channels=c, use_component=["mae_loss", "fusion"]),
  }
  path = str(tmp_path / "checkpoint-99.pth")
  torch.save(checkpoint, path)
  params, report = convert.load_uniemox_checkpoint(path, variant="mu", image_size=IMAGE,
                                                   teacher_dim=32, strict=True,
                                                   return_report=True)
  assert _tree_equal(params["mae"], mae_params)
  assert {"att_fusion.linear.weight", "att_fusion.bn.bias"} <= set(report.loaded)
  aux = _run_uniemox(params)
  with torch.no_grad():
    expected = fusion(torch.from_numpy(np.array(aux["alpha"])),
                      torch.from_numpy(np.array(aux["beta"]))).numpy()
  np.testing.assert_allclose(np.asarray(aux["gamma"]), expected, rtol=1e-5, atol=1e-6)
  # The same file through the other entry points.
  assert convert.read_state_dict(path).keys() == official_sd.keys()
  assert _tree_equal(convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE),
                     mae_params)


@pytest.mark.torch
def test_pickled_objects_are_refused_with_a_clear_error(tmp_path):
  import torch  # the `torch` marker keeps this test out of runs without it
  path = str(tmp_path / "evil.pth")
  torch.save({"model": {"w": torch.zeros(1)}, "extra": os.stat_result((0,) * 10)}, path)
  with pytest.raises(ValueError, match="weights_only=True"):
    convert.read_state_dict(path)
