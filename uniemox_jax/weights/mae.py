"""MAE, UniEmoX and Hugging Face ViTMAE weights ↔ our Flax trees, in both directions.

Sources understood (read by `weights.files`):
  * official MAE checkpoints (`mae_pretrain_vit_*.pth`: encoder only; `mae_visualize_*.pth`:
    encoder + decoder) and the released UniEmoX pre-training checkpoints
    (`{'model': mae_state_dict, 'att_fusion': fusion_state_dict, 'optimizer', 'epoch', 'args'}`),
    with or without DDP's `module.` prefix;
  * fine-tuned MAE/UniEmoX classifiers (timm `VisionTransformer` with global pooling);
  * Hugging Face `ViTMAEForPreTraining` / `ViTMAEModel` directories; their keys are renamed to
    the official MAE layout first (separate q/k/v are fused into `qkv`);
  * flat `.safetensors` / `.npz` files holding any of the above (nested groups flattened as
    `model.<key>` / `att_fusion.<key>`), which need no PyTorch.

Every loader checks the file's sizes against the requested variant before touching a key
(a wrong variant fails with a message that names the variant the file looks like), raises on
any shape mismatch with the key and both shapes, and returns a `LoadReport` of what was loaded,
missing, unexpected, skipped, resized and newly initialised; it is logged, and `strict=True`
turns missing or unexpected keys into an error. `params_to_mae_state_dict` goes the other way
(export).

Layouts: a PyTorch Linear weight is `[out, in]`, a Flax Dense kernel `[in, out]`; the patch
projection is `[D, 3, p, p]` (OIHW) in PyTorch and `[p, p, 3, D]` (HWIO) here.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax.models import classifier as classifier_lib
from uniemox_jax.models import fusion as fusion_lib
from uniemox_jax.models import mae as mae_lib
from uniemox_jax.models import uniemox as uniemox_lib
from uniemox_jax.models import vit
from uniemox_jax.weights import files
from uniemox_jax.weights.report import LoadReport

Path = tuple[str, ...]
StateDict = dict[str, np.ndarray]


def read_state_dict(path) -> StateDict:
  """The model state dict of a checkpoint, as float32 numpy arrays in the official MAE naming.

  Accepts a `.pth`/`.pt`/`.bin` file (`{'model': sd}`, `{'state_dict': sd}` or a bare state
  dict, `module.` prefixes stripped), a `.safetensors` or `.npz` file, or a Hugging Face
  ViTMAE directory. Hugging Face keys are renamed to the official MAE layout. fp16/bf16 are
  cast to float32. PyTorch is imported only for pickled files.
  """
  return _read_checkpoint(path).tensors


def _read_checkpoint(path) -> files.Weights:
  """`files.read`, with Hugging Face ViTMAE names renamed to the official MAE ones."""
  ckpt = files.read(path)
  if _looks_hf(ckpt.tensors):
    ckpt.tensors, ckpt.notes = _hf_to_mae(ckpt.tensors)
  return ckpt


# --------------------------------------------------------------------------------------
# Hugging Face ViTMAE → official MAE names.

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
# Block sub-modules: hub checkpoints (`attention.attention.query`, `intermediate.dense`, ...)
# and transformers >= 5 module names (`attention.q_proj`, `mlp.fc1`, ...).
_HF_BLOCK = {
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
}
_HF_ENC_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_DEC_LAYER = re.compile(
    r"^decoder\.(?:decoder_layers|decoder_encoder\.layer|decoder_layer)\.(\d+)\.(.+)\.(weight|bias)$")


def _looks_hf(sd: Mapping[str, Any]) -> bool:
  return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in sd)


def _hf_to_mae(sd: StateDict) -> tuple[StateDict, list[str]]:
  """Renames Hugging Face ViTMAE keys to the official MAE ones, fusing q, k, v into qkv.

  Keys it does not know keep their names (and are then reported as unexpected).
  """
  out: StateDict = {}
  qkv: dict[str, dict[str, np.ndarray]] = {}
  for key, value in sd.items():
    name = key[len("vit."):] if key.startswith("vit.") else key
    if name in _HF_TOP:
      out[_HF_TOP[name]] = value
      continue
    m = _HF_ENC_LAYER.match(name)
    prefix = "blocks"
    if m is None:
      m = _HF_DEC_LAYER.match(name)
      prefix = "decoder_blocks"
    if m is None or m.group(2) not in _HF_BLOCK:
      out[key] = value
      continue
    index, sub, leaf = m.groups()
    target = _HF_BLOCK[sub]
    if target in ("q", "k", "v"):
      qkv.setdefault(f"{prefix}.{index}.attn.qkv.{leaf}", {})[target] = value
    else:
      out[f"{prefix}.{index}.{target}.{leaf}"] = value
  notes = []
  for qkv_key, parts in qkv.items():
    if set(parts) == {"q", "k", "v"}:
      # timm's fused layout: output rows are [q (all heads) | k | v], head-major within each.
      out[qkv_key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    else:
      for part, value in parts.items():
        out[f"{qkv_key}[{part}]"] = value
      notes.append(f"{qkv_key}: the file has only {sorted(parts)} of q/k/v")
  return out, notes


def _check_hf_config(config: Mapping[str, Any] | None, *, heads: int, decoder_heads: int | None,
                     report: LoadReport) -> None:
  """Checks what the weights cannot tell (heads, activation, eps) against our model."""
  if not config:
    return
  if config.get("num_attention_heads", heads) != heads:
    raise ValueError(
        f"{report.source}: config.json has num_attention_heads="
        f"{config['num_attention_heads']}, but the variant has {heads} heads; choose a variant "
        "with that many heads")
  if decoder_heads is not None and config.get("decoder_num_attention_heads",
                                              decoder_heads) != decoder_heads:
    raise ValueError(
        f"{report.source}: config.json has decoder_num_attention_heads="
        f"{config['decoder_num_attention_heads']}, but the model is built with "
        f"{decoder_heads}; pass decoder_heads={config['decoder_num_attention_heads']} to the "
        "loader and to the model")
  act = config.get("hidden_act", "gelu")
  if act != "gelu":
    report.notes.append(f"config.json has hidden_act={act!r}; our ViT uses the exact (erf) "
                        "GELU, so outputs will differ slightly")
  eps = config.get("layer_norm_eps", vit.LN_EPS)
  if eps != vit.LN_EPS:
    report.notes.append(f"config.json has layer_norm_eps={eps}; our ViT uses {vit.LN_EPS} "
                        "(MAE's), so outputs differ slightly")
  if config.get("qkv_bias", True) is False:
    report.notes.append("config.json has qkv_bias=False: the qkv biases are set to zero")


# --------------------------------------------------------------------------------------
# Sizes in a file vs the variant.


def _block_indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
  pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
  return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _infer_encoder_sizes(sd: Mapping[str, np.ndarray]) -> dict[str, int]:
  found: dict[str, int] = {}
  if "patch_embed.proj.weight" in sd:
    w = sd["patch_embed.proj.weight"]
    if w.ndim == 4:
      found["width"], found["patch_size"] = int(w.shape[0]), int(w.shape[-1])
  elif "cls_token" in sd:
    found["width"] = int(sd["cls_token"].shape[-1])
  blocks = _block_indices(sd, "blocks")
  if blocks:
    found["depth"] = blocks[-1] + 1
  if "blocks.0.mlp.fc1.weight" in sd:
    found["mlp_dim"] = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
  if "pos_embed" in sd and sd["pos_embed"].ndim == 3:
    num = sd["pos_embed"].shape[1] - 1
    side = math.isqrt(num)
    if side * side == num:
      found["grid"] = side
  return found


def _guess_variant(found: Mapping[str, int]) -> str | None:
  for name, v in vit.VARIANTS.items():
    if (found.get("width"), found.get("depth"), found.get("mlp_dim")) == (
        v.width, v.depth, v.mlp_dim):
      if found.get("patch_size", v.patch_size) == v.patch_size:
        return name
      return f"{name.partition('/')[0]}/{found['patch_size']}"
  return None


def _check_encoder_sizes(found: Mapping[str, int], variant: str, patch_size: int | None,
                         source: str) -> None:
  spec = vit.get_variant(variant)
  want = {"width": spec.width, "depth": spec.depth, "mlp_dim": spec.mlp_dim}
  wrong = [k for k in want if k in found and found[k] != want[k]]
  if wrong:
    have = ", ".join(f"{k} {found[k]}" for k in ("width", "depth", "mlp_dim", "patch_size")
                     if k in found)
    guess = _guess_variant(found)
    hint = (f"pass variant={guess!r}" if guess else
            f"no known variant matches (known: {sorted(vit.VARIANTS)})")
    raise ValueError(
        f"{source}: the checkpoint holds a ViT with {have}, but variant {variant!r} has width "
        f"{spec.width}, depth {spec.depth}, mlp_dim {spec.mlp_dim}: {hint}")
  patch = patch_size or spec.patch_size
  if "patch_size" in found and found["patch_size"] != patch:
    raise ValueError(
        f"{source}: the checkpoint's patch size is {found['patch_size']}, but the model is built "
        f"with {patch}; pass patch_size={found['patch_size']} (to the loader and the model)")


def _check_decoder_sizes(sd: Mapping[str, np.ndarray], spec: vit.Variant, source: str) -> None:
  if "decoder_embed.weight" in sd and sd["decoder_embed.weight"].ndim == 2:
    width = int(sd["decoder_embed.weight"].shape[0])
    if width != spec.decoder_width:
      raise ValueError(
          f"{source}: the checkpoint's decoder width is {width}, but the model is built with "
          f"{spec.decoder_width}; pass decoder_width={width} (to the loader and the model)")
  blocks = _block_indices(sd, "decoder_blocks")
  if blocks and blocks[-1] + 1 != spec.decoder_depth:
    raise ValueError(
        f"{source}: the checkpoint has {blocks[-1] + 1} decoder blocks, but the model is built "
        f"with {spec.decoder_depth}; pass decoder_depth={blocks[-1] + 1} (to the loader and "
        "the model)")


# --------------------------------------------------------------------------------------
# Flax path ↔ MAE key, and the layout transforms.


def _mae_key(path: Path) -> tuple[str, str] | None:
  """`(torch key, transform)` for a Flax path of a MAE / classifier tree; None if unmapped.

  Transforms: 'linear' (`[out, in]` ↔ `[in, out]`), 'conv' (OIHW ↔ HWIO), 'copy'.
  """
  *mods, leaf = path
  if not mods:  # a top-level raw parameter: none in our trees
    return None
  if mods[0] == "encoder":
    rest, prefix = mods[1:], ""
    if not rest:  # cls_token, pos_embed
      return leaf, "copy"
    if rest == ["patch_embed"]:
      return f"patch_embed.proj.{_leaf_name(leaf)}", ("conv" if leaf == "kernel" else "copy")
  elif mods[0] == "decoder":
    rest, prefix = mods[1:], "decoder_"
    if not rest:  # mask_token
      return leaf, "copy"
    if rest in (["norm"], ["pred"]):
      return f"decoder_{rest[0]}.{_leaf_name(leaf)}", _leaf_transform(leaf)
  elif mods[0] in ("decoder_embed", "fc_norm", "head") and len(mods) == 1:
    return f"{mods[0]}.{_leaf_name(leaf)}", _leaf_transform(leaf)
  else:
    return None
  names = []
  for m in rest:
    block = re.fullmatch(r"blocks_(\d+)", m)
    names.append(f"{prefix}blocks.{block.group(1)}" if block else m)
  return ".".join(names + [_leaf_name(leaf)]), _leaf_transform(leaf)


def _leaf_name(leaf: str) -> str:
  return {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)


def _leaf_transform(leaf: str) -> str:
  return "linear" if leaf == "kernel" else "copy"


def _to_flax(how: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if how == "linear" and x.ndim == 2:
    return np.ascontiguousarray(x.T)
  if how == "conv" and x.ndim == 4:
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
  if how == "reshape" and x.size == math.prod(shape):
    return x.reshape(shape)
  return x


def _to_torch(how: str, x: np.ndarray) -> np.ndarray:
  if how == "linear":
    return np.ascontiguousarray(x.T)
  if how == "conv":
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
  return x


def _torch_shape(how: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if how == "linear" and len(shape) == 2:
    return shape[::-1]
  if how == "conv" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def _expected(init_fn: Callable[[], Any]) -> dict[Path, tuple[int, ...]]:
  """Flat `{path: shape}` of a model's params, by shape only (nothing is allocated)."""
  shapes = jax.eval_shape(init_fn)
  return {path: tuple(x.shape) for path, x in traverse_util.flatten_dict(dict(shapes)).items()}


def _copy_params(sd: Mapping[str, np.ndarray], expected: Mapping[Path, tuple[int, ...]],
                 key_fn: Callable[[Path], tuple[str, str] | None], report: LoadReport,
                 what: str, out: dict[Path, np.ndarray], prefix: Path = ()) -> None:
  """Copies every mapped target parameter found in `sd` into `out` (shape-checked)."""
  for path, shape in expected.items():
    rule = key_fn(path)
    if rule is None:
      continue
    key, how = rule
    if key not in sd:
      report.missing.append(key)
      continue
    value = _to_flax(how, sd[key], shape)
    if value.shape != shape:
      raise ValueError(
          f"{report.source or 'state dict'}: {key!r} has shape {list(sd[key].shape)} in the "
          f"file, but {what} expects {list(_torch_shape(how, shape))}")
    out[prefix + path] = value.astype(np.float32)
    report.loaded.append(key)


def _leftovers(sd: Mapping[str, np.ndarray], report: LoadReport,
               skip: Callable[[str], str | None]) -> None:
  used = set(report.loaded) | set(report.skipped)
  for key in sd:
    if key in used:
      continue
    reason = skip(key)
    if reason:
      report.skipped[key] = reason
    else:
      report.unexpected.append(key)


def _nest(flat: Mapping[Path, np.ndarray]) -> dict:
  return traverse_util.unflatten_dict(dict(flat))


def _mae_model(variant, image_size, patch_size, decoder_width, decoder_depth, decoder_heads):
  return mae_lib.MaskedAutoencoder(
      variant=variant, image_size=image_size, patch_size=patch_size,
      decoder_width=decoder_width, decoder_depth=decoder_depth, decoder_heads=decoder_heads)


def _describe(variant: str, image_size: int, patch_size: int | None) -> str:
  return f"variant {variant!r} at {image_size} px" + (
      f" with patch {patch_size}" if patch_size else "")


# --------------------------------------------------------------------------------------
# MAE.


def _mae_convert(sd: StateDict, report: LoadReport, *, variant: str, image_size: int,
                 patch_size: int | None, decoder_width: int | None, decoder_depth: int | None,
                 decoder_heads: int | None, prefix: Path = (),
                 out: dict[Path, np.ndarray] | None = None) -> dict[Path, np.ndarray]:
  found = _infer_encoder_sizes(sd)
  _check_encoder_sizes(found, variant, patch_size, report.source or "state dict")
  model = _mae_model(variant, image_size, patch_size, decoder_width, decoder_depth,
                     decoder_heads)
  spec = model.spec
  _check_decoder_sizes(sd, spec, report.source or "state dict")
  expected = _expected(lambda: mae_lib.init_params(model))
  out = {} if out is None else out
  _copy_params(sd, expected, _mae_key, report,
               _describe(variant, image_size, patch_size), out, prefix)

  grid = image_size // spec.patch_size
  for key, width in (("pos_embed", spec.width), ("decoder_pos_embed", spec.decoder_width)):
    if key not in sd:
      continue
    table = sd[key]
    rows = table.shape[1] - 1 if table.ndim == 3 else -1
    side = math.isqrt(rows) if rows > 0 else -1
    if side * side != rows:
      report.skipped[key] = "fixed sin-cos table (recomputed); the file's is not a square grid"
      continue
    if side == grid:
      reason = "fixed sin-cos table, recomputed"
      if table.shape[-1] == width:
        diff = float(np.abs(table[0] - vit.get_2d_sincos_pos_embed(width, grid, True)).max())
        if diff > 1e-4:
          report.notes.append(
              f"{key} in the file is not MAE's sin-cos table (max |diff| {diff:.3g}); "
              "MaskedAutoencoder always uses the fixed table")
    else:
      reason = (f"fixed sin-cos table, recomputed for a {grid}x{grid} grid "
                f"(the file's is {side}x{side})")
    report.skipped[key] = reason
  return out


def mae_state_dict_to_params(state_dict: Mapping[str, Any], *, variant: str,
                             image_size: int = 224, patch_size: int | None = None,
                             decoder_width: int | None = None, decoder_depth: int | None = None,
                             decoder_heads: int | None = None,
                             source: str = "") -> tuple[dict, LoadReport]:
  """Official-MAE-layout state dict → `MaskedAutoencoder` params (what the dict holds).

  Args:
    state_dict: `{key: tensor}` (numpy or torch; `module.` prefixes and Hugging Face ViTMAE
      names are accepted too).
    variant, image_size, patch_size, decoder_*: the `MaskedAutoencoder` it is for.

  Returns:
    `(params, report)`: params is a nested dict of float32 numpy arrays with only the
    parameters found (an encoder-only file gives only `encoder`).
  """
  sd = files.clean(state_dict)
  notes: list[str] = []
  if _looks_hf(sd):
    sd, notes = _hf_to_mae(sd)
  report = LoadReport(source=source, notes=notes)
  flat = _mae_convert(sd, report, variant=variant, image_size=image_size,
                      patch_size=patch_size, decoder_width=decoder_width,
                      decoder_depth=decoder_depth, decoder_heads=decoder_heads)
  _leftovers(sd, report, lambda k: None)
  return _nest(flat), report


def load_mae_checkpoint(path, variant: str, image_size: int = 224,
                        patch_size: int | None = None, strict: bool = False, *,
                        decoder_width: int | None = None, decoder_depth: int | None = None,
                        decoder_heads: int | None = None, return_report: bool = False):
  """Loads an official MAE / UniEmoX `.pth`, a safetensors/npz file or a Hugging Face ViTMAE
  directory into the `MaskedAutoencoder` param layout.

  Widths, depths, MLP size and patch size are read from the tensors and checked against
  `variant` (and the decoder overrides); head counts are not visible in a state dict and are
  checked only against a Hugging Face `config.json`.

  Returns the nested params dict (only what the file holds: an official
  `mae_pretrain_vit_*.pth` gives only `encoder`), or `(params, report)` with `return_report`.
  The report is logged. Raises ValueError on a wrong variant or a shape mismatch, and with
  `strict=True` on missing or unexpected keys.
  """
  ckpt = _read_checkpoint(path)
  model = _mae_model(variant, image_size, patch_size, decoder_width, decoder_depth,
                     decoder_heads)
  report = LoadReport(source=ckpt.source, notes=list(ckpt.notes))
  sd = _with_zero_qkv_bias(ckpt, report)
  flat = _mae_convert(sd, report, variant=variant, image_size=image_size,
                      patch_size=patch_size, decoder_width=decoder_width,
                      decoder_depth=decoder_depth, decoder_heads=decoder_heads)
  # After the size checks, so that a wrong variant is reported as such first.
  _check_hf_config(ckpt.hf_config, heads=model.spec.heads,
                   decoder_heads=model.spec.decoder_heads, report=report)
  _leftovers(sd, report, lambda k: None)
  for group in ckpt.groups:
    report.notes.append(f"the file also holds {group!r} (not part of the MAE; see "
                        "load_uniemox_checkpoint)")
  report.log()
  if strict:
    report.check_strict()
  params = _nest(flat)
  return (params, report) if return_report else params


def _with_zero_qkv_bias(ckpt: files.Weights, report: LoadReport) -> StateDict:
  sd = ckpt.tensors
  if not ckpt.hf_config or ckpt.hf_config.get("qkv_bias", True) is not False:
    return sd
  sd = dict(sd)
  for prefix in ("blocks", "decoder_blocks"):
    for i in _block_indices(sd, prefix):
      w = sd.get(f"{prefix}.{i}.attn.qkv.weight")
      if w is not None and f"{prefix}.{i}.attn.qkv.bias" not in sd:
        sd[f"{prefix}.{i}.attn.qkv.bias"] = np.zeros(w.shape[0], np.float32)
  return sd


def params_to_mae_state_dict(params: Mapping[str, Any], *, image_size: int = 224) -> StateDict:
  """Our MAE (or classifier) params → a state dict in the official MAE naming and layouts.

  Linear weights `[out, in]`, the patch projection `[D, 3, p, p]`. The fixed `pos_embed` /
  `decoder_pos_embed` sin-cos tables (`[1, 1 + L, D]`) are added for `image_size`; a
  classifier's learned `encoder/pos_embed` is written as it is. Accepts `{'params': ...}` and a
  UniEmoX tree (its `mae` part is used).
  """
  if "params" in params and len(params) == 1:
    params = params["params"]
  if "mae" in params:
    params = params["mae"]
  flat = traverse_util.flatten_dict(dict(params))
  sd: StateDict = {}
  for path, value in flat.items():
    path = tuple(str(p) for p in path)
    rule = _mae_key(path)
    if rule is None:
      raise ValueError(f"parameter {'/'.join(path)} has no MAE state-dict name")
    key, how = rule
    sd[key] = _to_torch(how, np.asarray(value, np.float32))
  if "patch_embed.proj.weight" in sd and "pos_embed" not in sd:
    width, _, patch, _ = sd["patch_embed.proj.weight"].shape
    grid = image_size // patch
    sd["pos_embed"] = vit.get_2d_sincos_pos_embed(width, grid, cls_token=True)[None]
    if "decoder_embed.weight" in sd:
      sd["decoder_pos_embed"] = vit.get_2d_sincos_pos_embed(
          sd["decoder_embed.weight"].shape[0], grid, cls_token=True)[None]
  return sd


# --------------------------------------------------------------------------------------
# Classifier.

_CLASSIFIER_NEW = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")


def _classifier_skip(key: str) -> str | None:
  if key in ("norm.weight", "norm.bias"):
    return "MAE encoder norm: the classifier pools un-normalised tokens and uses fc_norm"
  if key.startswith(("decoder_", "decoder.")) or key == "mask_token":
    return "MAE decoder: not part of the classifier"
  return None


def classifier_state_dict_to_params(state_dict: Mapping[str, Any], *, variant: str,
                                    num_classes: int | None = None, image_size: int = 224,
                                    patch_size: int | None = None, seed: int = 0,
                                    source: str = "") -> tuple[dict, LoadReport]:
  """A fine-tuned (global-pool) or pre-training MAE state dict → complete `ViTClassifier`
  params. See `load_classifier_checkpoint`."""
  sd = files.clean(state_dict)
  report = LoadReport(source=source)
  if _looks_hf(sd):
    sd, report.notes = _hf_to_mae(sd)
  where = source or "state dict"
  found = _infer_encoder_sizes(sd)
  _check_encoder_sizes(found, variant, patch_size, where)
  head = sd.get("head.weight")
  if num_classes is None:
    if head is None or head.ndim != 2:
      raise ValueError(f"{where} has no classification head (a pre-training checkpoint?): "
                       "pass num_classes")
    num_classes = int(head.shape[0])
  model = classifier_lib.ViTClassifier(variant=variant, num_classes=num_classes,
                                       image_size=image_size, patch_size=patch_size)
  expected = _expected(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32))["params"])

  if head is not None and head.shape[0] != num_classes:
    for key in ("head.weight", "head.bias"):
      if key in sd:
        report.skipped[key] = (f"the file's head has {head.shape[0]} classes, the model "
                               f"{num_classes}: re-initialised")
  usable = {k: v for k, v in sd.items() if k not in report.skipped}

  def key_fn(path: Path):
    if path == ("encoder", "pos_embed"):
      return None
    return _mae_key(path)

  flat: dict[Path, np.ndarray] = {}
  _copy_params(usable, expected, key_fn, report, _describe(variant, image_size, patch_size),
               flat)

  # The learned position embedding: the file's table, bicubically resized to the target grid.
  want = expected[("encoder", "pos_embed")]
  grid = int(math.isqrt(want[1] - 1))
  if "pos_embed" in sd:
    table = sd["pos_embed"]
    if table.ndim != 3 or table.shape[-1] != want[-1]:
      raise ValueError(f"{where}: 'pos_embed' has shape {list(table.shape)}, but "
                       f"{_describe(variant, image_size, patch_size)} expects {list(want)}")
    if table.shape != want:
      try:
        resized = vit.resize_pos_embed(table, (grid, grid), num_prefix=1)
      except ValueError as e:
        raise ValueError(f"{where}: cannot resize 'pos_embed' {list(table.shape)} to "
                         f"{list(want)}: {e}") from e
      report.resized["pos_embed"] = (tuple(table.shape), tuple(resized.shape))
      table = resized
    flat[("encoder", "pos_embed")] = np.asarray(table, np.float32)
    report.loaded.append("pos_embed")
  else:
    report.missing.append("pos_embed")
    report.initialized.append("pos_embed")
    flat[("encoder", "pos_embed")] = vit.get_2d_sincos_pos_embed(want[-1], grid, True)[None]

  # Fresh fc_norm / head where the file has none (as the model's own initialisers do).
  rng = jax.random.PRNGKey(seed)
  fresh = {
      ("fc_norm", "scale"): lambda s: np.ones(s, np.float32),
      ("fc_norm", "bias"): lambda s: np.zeros(s, np.float32),
      ("head", "kernel"): lambda s: np.asarray(nn.initializers.truncated_normal(2e-5)(rng, s)),
      ("head", "bias"): lambda s: np.zeros(s, np.float32),
  }
  for path, init in fresh.items():
    if path not in flat:
      key = _mae_key(path)[0]
      flat[path] = init(expected[path]).astype(np.float32)
      report.initialized.append(key)
      if key not in report.missing:
        report.missing.append(key)
  if "head.weight" in sd and "fc_norm.weight" not in sd and "norm.weight" in sd:
    report.notes.append("the file has a head but no fc_norm: it was fine-tuned with CLS-token "
                        "pooling, our classifier mean-pools patch tokens")
  _leftovers(sd, report, _classifier_skip)
  return _nest(flat), report


def load_classifier_checkpoint(path, *, variant: str, num_classes: int | None = None,
                               image_size: int = 224, patch_size: int | None = None,
                               seed: int = 0, strict: bool = False) -> tuple[dict, LoadReport]:
  """Loads a checkpoint into complete `ViTClassifier` params.

  The file is a fine-tuned timm/MAE `VisionTransformer` with global pooling (`fc_norm`,
  `head`, learned `pos_embed`) or a pre-training checkpoint (MAE, UniEmoX, HF ViTMAE). From a
  pre-training checkpoint the encoder and its position table are loaded, `fc_norm`/`head` are
  newly initialised (ones/zeros and trunc-normal(2e-5) from `seed`) and reported so, and the
  encoder `norm` and the decoder are reported as skipped. The position embedding is resized
  bicubically (`vit.resize_pos_embed`, CLS row kept) when the patch grid differs. A head with
  another class count than `num_classes` is re-initialised (default: the file's count).

  `strict=True` raises on unexpected keys and on missing keys other than `fc_norm`/`head`.
  """
  ckpt = _read_checkpoint(path)
  params, report = classifier_state_dict_to_params(
      ckpt.tensors, variant=variant, num_classes=num_classes, image_size=image_size,
      patch_size=patch_size, seed=seed, source=ckpt.source)
  report.notes[:0] = ckpt.notes
  if ckpt.hf_config:
    _check_hf_config(ckpt.hf_config, heads=vit.get_variant(variant).heads, decoder_heads=None,
                     report=report)
  report.log()
  if strict:
    report.check_strict(allowed_missing=_CLASSIFIER_NEW)
  return params, report


# --------------------------------------------------------------------------------------
# UniEmoX (MAE + fusion).

# Released fusion classes (models/attention_fusion.py) → our FUSIONS names.
RELEASED_FUSIONS = {
    "AttentionFusion": "easyfusion",
    "MultiHeadWeightedSumFusion": "weighted_sum",
    "MultiHeadAttentionFusion": "dual_attention",
    "MLPMultiHeadAttentionGLU": "mlp_glu",
}


def detect_fusion(fusion_sd: Mapping[str, Any]) -> tuple[str, int | None]:
  """`(our fusion name, heads)` of a released `att_fusion` state dict (heads None if n/a)."""
  keys = set(fusion_sd)
  if {"linear.weight", "bn.weight"} <= keys:
    return "easyfusion", None
  if {"alpha", "beta", "layer_norm.weight"} <= keys:
    return "weighted_sum", int(np.shape(fusion_sd["alpha"])[0])
  heads = _block_indices(fusion_sd, "W_a")
  if heads:
    rows = np.shape(fusion_sd["W_a.0.weight"])[0]
    return ("dual_attention" if rows == 1 else "mlp_glu"), heads[-1] + 1
  raise ValueError(f"unrecognised att_fusion state dict (keys {sorted(keys)[:12]}); known: "
                   f"{sorted(RELEASED_FUSIONS)} from the released models/attention_fusion.py")


def _fusion_key(kind: str) -> Callable[[Path], tuple[str, str] | None]:
  """Maps a path inside our `fusion/` subtree to the released module's key."""

  def linear(torch_name: str, leaf: str) -> tuple[str, str]:
    return f"{torch_name}.{_leaf_name(leaf)}", _leaf_transform(leaf)

  def key_fn(path: Path):
    *mods, leaf = path
    if not mods:  # alpha, beta [H,1,C] and bias [1,C] in the file; our own 'prior' [C]
      return leaf, "reshape"
    name = mods[0]
    if name == "norm":
      return linear("bn" if kind == "easyfusion" else "layer_norm", leaf)
    if name == "linear":
      return linear("linear", leaf)
    m = re.fullmatch(r"score_([ab])_(\d+)", name)
    if m:
      return linear(f"W_{m.group(1)}.{m.group(2)}", leaf)
    if name in ("mlp_0", "mlp_1"):
      return linear(f"mlp.{0 if name == 'mlp_0' else 2}", leaf)
    if name == "gate":
      return linear("gate", leaf)
    return None

  return key_fn


def uniemox_state_dicts_to_params(
    model_sd: Mapping[str, Any], fusion_sd: Mapping[str, Any] | None, *, variant: str,
    image_size: int = 224, fusion: str = "easyfusion", fusion_heads: int | None = None,
    patch_size: int | None = None, decoder_width: int | None = None,
    decoder_depth: int | None = None, decoder_heads: int | None = None, teacher_dim: int = 512,
    source: str = "") -> tuple[dict, LoadReport]:
  """Released UniEmoX state dicts (`model`, `att_fusion`) → `UniEmoX` params (`mae/`,
  `fusion/`). Fusion keys are reported as `att_fusion.<key>`."""
  if fusion not in fusion_lib.FUSIONS:
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(fusion_lib.FUSIONS)}")
  where = source or "state dict"
  sd = files.clean(model_sd)
  report = LoadReport(source=source)
  if _looks_hf(sd):
    sd, report.notes = _hf_to_mae(sd)
  fsd = files.clean(fusion_sd) if fusion_sd else {}
  heads = fusion_heads
  if fsd and fusion != "none":
    kind, file_heads = detect_fusion(fsd)
    if kind != fusion:
      cls = {v: k for k, v in RELEASED_FUSIONS.items()}[kind]
      raise ValueError(f"{where}: att_fusion holds a {cls} (our fusion {kind!r}), but "
                       f"fusion={fusion!r}; pass fusion={kind!r}")
    if file_heads is not None:
      if heads is not None and heads != file_heads:
        raise ValueError(f"{where}: att_fusion has {file_heads} heads, but fusion_heads="
                         f"{heads}; pass fusion_heads={file_heads}")
      if heads is None and file_heads != 3:
        report.notes.append(f"att_fusion has {file_heads} heads: build UniEmoX with "
                            f"fusion_heads={file_heads}")
      heads = file_heads
  heads = 3 if heads is None else heads

  flat: dict[Path, np.ndarray] = {}
  _mae_convert(sd, report, variant=variant, image_size=image_size, patch_size=patch_size,
               decoder_width=decoder_width, decoder_depth=decoder_depth,
               decoder_heads=decoder_heads, prefix=("mae",), out=flat)
  _leftovers(sd, report, lambda k: None)

  model = uniemox_lib.UniEmoX(variant=variant, image_size=image_size, patch_size=patch_size,
                              decoder_width=decoder_width, decoder_depth=decoder_depth,
                              decoder_heads=decoder_heads, fusion=fusion, fusion_heads=heads,
                              teacher_dim=teacher_dim)
  expected = _expected(lambda: uniemox_lib.init_params(model))
  fusion_expected = {p[1:]: s for p, s in expected.items() if p[0] == "fusion"}
  if fusion_expected:
    fusion_report = LoadReport(source=source)
    _copy_params(fsd, fusion_expected, _fusion_key(fusion), fusion_report,
                 f"fusion {fusion!r} with {heads} heads", flat, prefix=("fusion",))
    _leftovers(fsd, fusion_report, lambda k: None)
    for name in ("loaded", "missing", "unexpected"):
      getattr(report, name).extend(f"att_fusion.{k}" for k in getattr(fusion_report, name))
  elif fsd:
    for key in fsd:
      report.skipped[f"att_fusion.{key}"] = "fusion='none': the fusion is not used"
  for path in expected:
    if path[0] == "teacher_proj":
      report.missing.append("teacher_proj." + _leaf_name(path[-1]))
  return _nest(flat), report


def load_uniemox_checkpoint(path, *, variant: str, image_size: int = 224,
                            fusion: str = "easyfusion", fusion_heads: int | None = None,
                            patch_size: int | None = None, decoder_width: int | None = None,
                            decoder_depth: int | None = None, decoder_heads: int | None = None,
                            teacher_dim: int = 512, strict: bool = False,
                            return_report: bool = False):
  """Loads a released UniEmoX pre-training checkpoint into `UniEmoX` params.

  The file is `{'model': mae_state_dict, 'att_fusion': fusion_state_dict, 'optimizer', 'epoch',
  'args'}` as `main_pretrain.py` saves it (DDP `module.` prefixes are stripped), or a flat
  safetensors/npz file with `model.` / `att_fusion.` key prefixes. The fusion class is detected
  from the keys (`AttentionFusion` → 'easyfusion', `MultiHeadWeightedSumFusion` →
  'weighted_sum', `MultiHeadAttentionFusion` → 'dual_attention', `MLPMultiHeadAttentionGLU` →
  'mlp_glu') and must match `fusion`. Returns the params (`mae/...`, `fusion/...`), or
  `(params, report)` with `return_report`.
  """
  ckpt = _read_checkpoint(path)
  params, report = uniemox_state_dicts_to_params(
      ckpt.tensors, ckpt.groups.get("att_fusion"), variant=variant, image_size=image_size,
      fusion=fusion, fusion_heads=fusion_heads, patch_size=patch_size,
      decoder_width=decoder_width, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
      teacher_dim=teacher_dim, source=ckpt.source)
  report.notes[:0] = ckpt.notes
  for group in ckpt.groups:
    if group != "att_fusion":
      report.unexpected.append(group)
  if fusion != "none" and "att_fusion" not in ckpt.groups:
    report.notes.append("the file has no 'att_fusion' (an MAE checkpoint?): fusion/ is absent")
  report.log()
  if strict:
    report.check_strict()
  return (params, report) if return_report else params
