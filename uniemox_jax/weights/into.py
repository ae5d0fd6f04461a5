"""Weights into a model's parameter tree: the partial load behind `config.init`.

`foreign_tree` reads another project's checkpoint (official MAE / UniEmoX `.pth`, timm
classifier, Hugging Face ViTMAE, or our own PyTorch-layout exports) into the layout of one
target model; `merge` copies every tensor that fits into the target's parameters and reports
what was loaded, resized, newly initialised and skipped. Our own Orbax runs are read by
`uniemox_jax.start`, which then merges the same way.

Targets: `pretrain` (the UniEmoX tree: `mae/...`, `fusion/...`), `finetune` (the classifier:
`encoder/...`, `fc_norm`, `head`) and `encoder` (a bare encoder, for the linear probe and the
read-outs).

Every task needs the encoder from `config.init`: `check_encoder` stops a load that provides
none of it, or leaves most of it newly initialised (unless `config.init_allow_partial`),
with `StartingPointError` naming the source, what it holds and what was expected.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
from absl import logging
from flax import traverse_util

from uniemox_jax import errors
from uniemox_jax.models import vit
from uniemox_jax.weights import mae as mae_weights
from uniemox_jax.weights.report import LoadReport

TARGETS = ("pretrain", "finetune", "encoder")
# Where each target keeps its encoder.
ENCODER_PREFIX = {"pretrain": ("mae", "encoder"), "finetune": ("encoder",), "encoder": ()}
README_START = "README.md, section 'Starting points, checkpoints and resume'"
EXPECTED = {
    "pretrain": "UniEmoX pre-training weights (one of our pre-training runs or a released "
                "UniEmoX .pth) or an MAE checkpoint (official .pth, Hugging Face ViTMAE)",
    "finetune": "a pre-trained encoder: one of our pre-training (or fine-tuning) runs, an "
                "MAE / UniEmoX .pth or a Hugging Face ViTMAE directory",
    "encoder": "pre-trained encoder weights: one of our pre-training runs or an MAE / "
               "UniEmoX .pth (not a fine-tuned classifier)",
}


class StartingPointError(errors.UserError, ValueError):
  """`config.init` does not provide what the task needs (the message says what it holds)."""


@dataclasses.dataclass
class MergeResult:
  """What `merge` did, by target parameter path (`a/b/c`)."""
  params: dict
  loaded: list[str]
  resized: list[str]
  new: list[str]
  skipped: list[str]
  encoder_loaded: int
  encoder_total: int
  encoder_new: list[str]

  def summary(self, what: str, target: str) -> str:
    skipped = self.skipped[:20] + (["..."] if len(self.skipped) > 20 else [])
    return (f"{what} → {target} model: loaded {len(self.loaded)} tensors"
            f"{f' (resized: {self.resized})' if self.resized else ''} (encoder: "
            f"{self.encoder_loaded} of {self.encoder_total}); newly initialised "
            f"{len(self.new)}: {self.new}; skipped {len(self.skipped)}: {skipped}")


def key_groups(keys: Iterable[str], limit: int = 6) -> str:
  """`text_model.* (60), vision_model.* (17), logit_scale`: what a set of keys holds."""
  groups: dict[str, int] = {}
  for key in keys:
    head = key.replace("/", ".").split(".")[0]
    groups[head] = groups.get(head, 0) + 1
  parts = [f"{h}.* ({n})" if n > 1 else h for h, n in sorted(groups.items(),
                                                              key=lambda kv: -kv[1])]
  return ", ".join(parts[:limit] + ([f"... ({len(parts) - limit} more)"]
                                    if len(parts) > limit else [])) or "nothing"


def describe_report(report: LoadReport) -> str:
  """What a foreign file holds, from its load report (CLIP weights named as such)."""
  keys = [*report.loaded, *report.unexpected, *report.skipped]
  kind = ""
  if any(k.startswith(("text_model.", "vision_model.", "visual.", "transformer.resblocks"))
         for k in keys):
    kind = "a CLIP model (the teacher's weights, not an encoder to start from); "
  return f"{kind}{len(keys)} tensors: {key_groups(keys)}"


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


def fresh_paths(source, report: LoadReport | None, target: str) -> set[tuple]:
  """Paths of `source` (a foreign loader's tree) whose values the loader initialised itself
  (a classifier's sin-cos `pos_embed`, `fc_norm`, `head`) rather than read from the file."""
  if report is None or not report.initialized:
    return set()
  initialized = set(report.initialized)
  out = set()
  for path in flat(source):
    key = path[1:] if target == "pretrain" and path[:1] == ("mae",) else (
        ("encoder",) + path if target == "encoder" else path)
    mapped = mae_weights._mae_key(key)  # pylint: disable=protected-access
    if mapped is not None and mapped[0] in initialized:
      out.add(path)
  return out


def merge(source, target_params, *, target: str, what: str, variant: str,
          allow_new: bool = True, fresh: Iterable[tuple] = (), holds: str = "",
          return_result: bool = False):
  """A copy of `target_params` (arrays or shapes) with every tensor of `source` that fits.

  Every target parameter found in the source (same path, same shape) is loaded; a learned
  position embedding of another grid is resized; the rest keeps its initial value and is
  reported as newly initialised (an error when `allow_new` is False, e.g. for evaluation).
  Source entries in `fresh` (flat paths a foreign loader initialised itself) count as new,
  not loaded. Source parameters with no place in the target are reported as skipped. A
  shape mismatch anywhere else is an error naming the parameter and both shapes. `what`
  names the source in messages (`config.init='...'`), `holds` what it holds (default: its
  keys). Returns the params, or a
  `MergeResult` with `return_result`.
  """
  src, dst = flat(source), flat(target_params)
  fresh = set(fresh)
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
        raise StartingPointError(
            f"{what}: parameter {name} has shape {value.shape} in the checkpoint but "
            f"{tuple(leaf.shape)} in the model: another model size? (config.model.variant="
            f"{variant!r}; set it to the checkpoint's)")
    out[key] = value.astype(leaf.dtype)
    (new if key in fresh else loaded).append(name)
  skipped = sorted("/".join(k) for k in src if k not in dst)
  prefix = ENCODER_PREFIX[target]
  # A learned pos_embed starts as the fixed sin-cos table that MAE pre-training uses (and
  # does not save): left new, it is not random, so it does not count against the load.
  encoder = [k for k in dst if k[:len(prefix)] == prefix and k[-1] != "pos_embed"]
  encoder_new = ["/".join(k) for k in encoder if "/".join(k) in set(new)]
  result = MergeResult(traverse_util.unflatten_dict(out), loaded, resized, new, skipped,
                       len(encoder) - len(encoder_new), len(encoder), encoder_new)
  if not loaded:
    raise StartingPointError(
        f"{what}: no parameter matches the {target} model: it holds "
        f"{holds or key_groups('/'.join(k) for k in src)}; expected {EXPECTED[target]} "
        f"({README_START})")
  if new and not allow_new:
    expected = EXPECTED[target] if target != "finetune" else (
        "a fine-tuned classifier: one of our fine-tuning runs or a timm / MAE fine-tuned "
        ".pth (a pre-training run has no head: fine-tune it first)")
    raise StartingPointError(
        f"{what} lacks parameters the {target} model needs: {new[:8]}"
        f"{' ...' if len(new) > 8 else ''} ({len(new)} of {len(dst)}); it holds "
        f"{holds or key_groups('/'.join(k) for k in src)}; expected {expected}")
  logging.info("%s", result.summary(what, target))
  return result if return_result else result.params


def check_encoder(result: MergeResult, *, what: str, target: str, holds: str,
                  allow_partial: bool) -> None:
  """Stops a load that gives the task no encoder, or leaves most of it new.

  `holds` describes the source (what it is and holds). A partial load that leaves at most
  half of the encoder new is allowed with a warning; more needs `allow_partial`
  (`config.init_allow_partial=True`), and is then only warned about.
  """
  total, got = result.encoder_total, result.encoder_loaded
  if total == 0 or got == total:
    return
  listed = result.encoder_new[:6] + (["..."] if len(result.encoder_new) > 6 else [])
  if got == 0:
    raise StartingPointError(
        f"{what} holds no encoder weights for the {target} model: it is {holds}; expected "
        f"{EXPECTED[target]} ({README_START})")
  text = (f"{what} provides {got} of the {total} encoder tensors of the {target} model; "
          f"{total - got} would start from random values ({listed})")
  if 2 * got < total and not allow_partial:
    raise StartingPointError(
        f"{text}. It holds {holds}. Point config.init at {EXPECTED[target]}, or set "
        "config.init_allow_partial=True to train from this partial load knowingly")
  logging.warning("%s%s", text, " (config.init_allow_partial=True)" if 2 * got < total else "")
