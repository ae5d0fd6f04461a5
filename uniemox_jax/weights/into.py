"""Weights into a model's parameter tree: the partial load behind `config.init`.

`foreign_tree` reads another project's checkpoint (official MAE / UniEmoX `.pth`, timm
classifier, Hugging Face ViTMAE, or our own PyTorch-layout exports) into the layout of one
target model; `merge` copies every tensor that fits into the target's parameters and reports
what was loaded, resized, newly initialised and skipped. Our own Orbax runs are read by
`uniemox_jax.start`, which then merges the same way.

Targets: `pretrain` (the UniEmoX tree: `mae/...`, `fusion/...`), `finetune` (the classifier:
`encoder/...`, `fc_norm`, `head`) and `encoder` (a bare encoder, for the linear probe and the
read-outs).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from uniemox_jax.models import vit
from uniemox_jax.weights import mae as mae_weights
from uniemox_jax.weights.report import LoadReport

TARGETS = ("pretrain", "finetune", "encoder")


def flat(tree) -> dict[tuple, Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def foreign_tree(path: str, target: str, model_config, seed: int = 0
                 ) -> tuple[dict, LoadReport]:
  """Reads a PyTorch / safetensors / npz / Hugging Face checkpoint into `target`'s layout.

  `model_config` is `config.model` (variant, image size, patch size, decoder sizes, fusion;
  None means the variant's default)."""
  m = model_config
  if target == "pretrain":
    return mae_weights.load_uniemox_checkpoint(
        path, variant=m.variant, image_size=m.image_size, patch_size=m.patch_size,
        fusion=m.fusion, fusion_heads=m.fusion_heads, decoder_width=m.decoder_width,
        decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads, return_report=True)
  if target == "finetune":
    return mae_weights.load_classifier_checkpoint(
        path, variant=m.variant, num_classes=m.num_classes, image_size=m.image_size,
        patch_size=m.patch_size, seed=seed)
  params, report = mae_weights.load_mae_checkpoint(
      path, m.variant, image_size=m.image_size, patch_size=m.patch_size, return_report=True)
  return dict(params.get("encoder", {})), report


def merge(source, target_params, *, target: str, what: str, variant: str,
          allow_new: bool = True) -> dict:
  """A copy of `target_params` (arrays or shapes) with every tensor of `source` that fits.

  Every target parameter found in the source (same path, same shape) is loaded; a learned
  position embedding of another grid is resized; the rest keeps its initial value and is
  reported as newly initialised (an error when `allow_new` is False, e.g. for evaluation).
  Source parameters with no place in the target are reported as skipped. A shape mismatch
  anywhere else is an error naming the parameter and both shapes. `what` names the source in
  messages (`config.init='...'`).
  """
  src, dst = flat(source), flat(target_params)
  loaded, resized, new = [], [], []
  out = {}
  for key, leaf in dst.items():
    name = "/".join(key)
    if key not in src:
      new.append(name)
      out[key] = leaf
      continue
    value = np.asarray(src[key])
    if value.shape != tuple(leaf.shape):
      if key[-1] == "pos_embed" and value.ndim == 3:
        grid = int(round((leaf.shape[1] - 1) ** 0.5))
        value = vit.resize_pos_embed(value, (grid, grid))
        resized.append(f"{name} {tuple(src[key].shape)}→{value.shape}")
      if value.shape != tuple(leaf.shape):
        raise ValueError(f"{what}: parameter {name} has shape {value.shape} in the checkpoint "
                         f"but {tuple(leaf.shape)} in the model "
                         f"(config.model.variant={variant!r}?)")
    out[key] = value.astype(leaf.dtype)
    loaded.append(name)
  skipped = sorted("/".join(k) for k in src if k not in dst)
  if not loaded:
    raise ValueError(f"{what}: no parameter matches the {target} model "
                     f"(checkpoint has {sorted('/'.join(k) for k in src)[:8]}...)")
  if new and not allow_new:
    raise ValueError(f"{what} lacks parameters the model needs: {new}")
  logging.info("%s → %s model: loaded %d tensors%s; newly initialised %d: %s; skipped %d: %s",
               what, target, len(loaded), f" (resized: {resized})" if resized else "",
               len(new), new, len(skipped), skipped[:20] + (["..."] if len(skipped) > 20 else []))
  return traverse_util.unflatten_dict(out)
