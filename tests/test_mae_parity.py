"""Parity of our MaskedAutoencoder with transformers' PyTorch ViTMAEForPreTraining.

A tiny random ViTMAE is saved with `save_pretrained`, loaded with `convert.load_mae_checkpoint`
and fed the same images and masking noise: the masks, the encoder output, the decoder's
prediction and the loss must agree to float32 rounding. The same weights re-keyed by hand into
the official MAE layout (fused qkv) and saved with `torch.save` must load to identical params.
"""
import functools

import jax
import numpy as np
import pytest

from uniemox_jax import losses
from uniemox_jax.models import convert, mae, vit

pytestmark = pytest.mark.torch

import torch  # the `torch` marker keeps this test out of runs without it
import transformers  # the `torch` marker keeps this test out of runs without it

IMAGE, PATCH, WIDTH = 32, 8, 32
GRID = IMAGE // PATCH
MASK_RATIO = 0.75
MAX_REL_ERR = 1e-5


def _rel_err(ours, theirs) -> float:
  theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def _mae_sincos(dim: int, grid: int) -> "torch.Tensor":
  """MAE's table as transformers builds it (its own function, with its documented half swap).

  transformers 5 leaves the fixed tables of a freshly constructed model at zero, so the test
  fills them the way `ViTMAEEmbeddings.initialize_weights` does; real checkpoints store them.
  """
  from transformers.models.vit_mae import modeling_vit_mae  # pylint: disable=g-import-not-at-top
  table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(grid, grid, dim,
                                                                 cls_token=True)
  half = dim // 2
  return torch.cat([table[..., half:], table[..., :half]], dim=-1)[None]


def _make_hf(norm_pix_loss: bool, seed: int = 0):
  torch.manual_seed(seed)
  config = transformers.ViTMAEConfig(
      hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
      image_size=IMAGE, patch_size=PATCH, num_channels=3, decoder_hidden_size=32,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=128,
      layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True, mask_ratio=MASK_RATIO,
      norm_pix_loss=norm_pix_loss, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.ViTMAEForPreTraining(config).eval()
  with torch.no_grad():
    # Random (not default-init) LayerNorms, biases and tokens, so every tensor matters.
    for name, p in model.named_parameters():
      if name.endswith(("bias", "cls_token", "mask_token")):
        p.normal_(0.0, 0.1)
      elif "norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
    model.vit.embeddings.position_embeddings.copy_(_mae_sincos(WIDTH, GRID))
    model.decoder.decoder_pos_embed.copy_(_mae_sincos(32, GRID))
  return model


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((3, IMAGE, IMAGE, 3)).astype(np.float32)
  noise = rng.random((3, GRID * GRID)).astype(np.float32)
  return images, noise


@pytest.fixture(scope="module")
def our_apply():
  model = mae.MaskedAutoencoder(variant="mu", image_size=IMAGE)
  return jax.jit(functools.partial(model.apply, mask_ratio=MASK_RATIO))


def _theirs(model, images, noise):
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  noise = torch.from_numpy(noise)
  with torch.no_grad():
    out = model(pixels, noise=noise)
    encoded = model.vit(pixels, noise=noise).last_hidden_state
  return out, encoded


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory, inputs):
  """`hf_case(norm_pix)` → (torch model, saved directory, norm_pix, outputs, encoder output)."""
  cases = {}

  def get(norm_pix: bool):
    if norm_pix not in cases:
      model = _make_hf(norm_pix, seed=int(norm_pix))
      directory = tmp_path_factory.mktemp("vitmae")
      model.save_pretrained(str(directory))
      out, encoded = _theirs(model, *inputs)
      cases[norm_pix] = model, str(directory), norm_pix, out, encoded
    return cases[norm_pix]

  return get


def test_our_sincos_table_is_maes(hf_case):
  model = hf_case(False)[0]
  table = model.vit.embeddings.position_embeddings.detach().numpy()[0]
  np.testing.assert_allclose(vit.get_2d_sincos_pos_embed(WIDTH, GRID, cls_token=True), table,
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True], ids=["pixels", "norm_pix"])
def test_parity_with_transformers_vitmae(hf_case, inputs, our_apply, norm_pix):
  _, directory, _, out, encoded = hf_case(norm_pix)
  images, noise = inputs
  params, report = convert.load_mae_checkpoint(directory, variant="mu", image_size=IMAGE,
                                               strict=True, return_report=True)
  assert not report.notes, report.summary()  # the file's tables are MAE's sin-cos tables
  pred, aux = our_apply({"params": params}, images, noise=noise)

  np.testing.assert_array_equal(np.asarray(aux["ids_restore"]), out.ids_restore.numpy())
  np.testing.assert_array_equal(np.asarray(aux["mask"]), out.mask.numpy())
  errors = {
      "encoded": _rel_err(aux["encoded"], encoded),
      "pred": _rel_err(pred, out.logits),
  }
  target = mae.reconstruction_target(images, PATCH)
  loss = losses.reconstruction_loss(pred, target, aux["mask"], norm_pix)
  errors["loss"] = _rel_err(loss, out.loss)
  print(f"norm_pix={norm_pix} max relative errors: {errors}")
  assert aux["encoded"].shape == tuple(encoded.shape)
  assert max(errors.values()) <= MAX_REL_ERR, errors


def _official_from_hf(model) -> dict:
  """transformers' in-memory ViTMAE state dict → official MAE keys, re-keyed by hand."""
  hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
  sd = {
      "cls_token": hf.pop("vit.embeddings.cls_token"),
      "pos_embed": hf.pop("vit.embeddings.position_embeddings"),
      "patch_embed.proj.weight": hf.pop("vit.embeddings.patch_embeddings.projection.weight"),
      "patch_embed.proj.bias": hf.pop("vit.embeddings.patch_embeddings.projection.bias"),
      "norm.weight": hf.pop("vit.layernorm.weight"),
      "norm.bias": hf.pop("vit.layernorm.bias"),
      "decoder_embed.weight": hf.pop("decoder.decoder_embed.weight"),
      "decoder_embed.bias": hf.pop("decoder.decoder_embed.bias"),
      "mask_token": hf.pop("decoder.mask_token"),
      "decoder_pos_embed": hf.pop("decoder.decoder_pos_embed"),
      "decoder_norm.weight": hf.pop("decoder.decoder_norm.weight"),
      "decoder_norm.bias": hf.pop("decoder.decoder_norm.bias"),
      "decoder_pred.weight": hf.pop("decoder.decoder_pred.weight"),
      "decoder_pred.bias": hf.pop("decoder.decoder_pred.bias"),
  }
  for hf_prefix, ours, depth in (("vit.layers", "blocks", 2),
                                 ("decoder.decoder_layers", "decoder_blocks", 1)):
    for i in range(depth):
      src, dst = f"{hf_prefix}.{i}.", f"{ours}.{i}."
      for leaf in ("weight", "bias"):
        sd[dst + "attn.qkv." + leaf] = torch.cat(
            [hf.pop(f"{src}attention.{n}_proj.{leaf}") for n in "qkv"], dim=0)
        for theirs, mine in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                             ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"),
                             ("mlp.fc2", "mlp.fc2")):
          sd[f"{dst}{mine}.{leaf}"] = hf.pop(f"{src}{theirs}.{leaf}")
  assert not hf, f"unmapped transformers keys: {sorted(hf)}"
  return sd


@pytest.mark.parametrize("layout", ["model", "module", "bare"])
def test_official_layout_loads_to_identical_params(hf_case, inputs, our_apply, tmp_path, layout):
  model, directory, _, out, _ = hf_case(False)
  images, noise = inputs
  from_hf = convert.load_mae_checkpoint(directory, variant="mu", image_size=IMAGE)
  sd = _official_from_hf(model)
  assert sd["blocks.0.attn.qkv.weight"].shape == (3 * WIDTH, WIDTH)
  if layout == "module":
    obj = {"model": {"module." + k: v for k, v in sd.items()}}
  elif layout == "model":
    obj = {"model": sd}
  else:
    obj = sd
  path = str(tmp_path / f"mae_{layout}.pth")
  torch.save(obj, path)
  params, report = convert.load_mae_checkpoint(path, variant="mu", image_size=IMAGE,
                                               strict=True, return_report=True)
  assert set(report.skipped) == {"pos_embed", "decoder_pos_embed"} and not report.notes
  assert jax.tree.structure(params) == jax.tree.structure(from_hf)
  jax.tree.map(np.testing.assert_array_equal, params, from_hf)
  pred, _ = our_apply({"params": params}, images, noise=noise)
  assert _rel_err(pred, out.logits) <= MAX_REL_ERR
  # And back: our state dict is the hand-made official one, tables included.
  back = convert.params_to_mae_state_dict(params, image_size=IMAGE)
  assert back.keys() == sd.keys()
  for key, value in sd.items():
    np.testing.assert_allclose(back[key], value.numpy(), rtol=0, atol=1e-6 if "pos" in key else 0,
                               err_msg=key)


def test_hf_model_loads_into_a_classifier(hf_case):
  directory = hf_case(False)[1]
  params, report = convert.load_classifier_checkpoint(directory, variant="mu", num_classes=4,
                                                      image_size=IMAGE, strict=True)
  assert "norm.weight" in report.skipped and "head.weight" in report.initialized
  assert params["encoder"]["pos_embed"].shape == (1, 1 + GRID * GRID, WIDTH)
