r"""Exports the weights of one of our checkpoints: the official PyTorch (MAE / timm) layouts, an
Orbax inference export, or a serialized `jax.export` forward function.

  python -m uniemox_jax.tools.export --checkpoint=$WORK/pretrain --out=uniemox_mae.safetensors
  python -m uniemox_jax.tools.export --checkpoint=$WORK/finetune --out=classifier.pth
  python -m uniemox_jax.tools.export --checkpoint=$WORK/finetune --format=orbax --out=$EXPORT
  python -m uniemox_jax.tools.export --checkpoint=$WORK/finetune --format=jax_export --out=$EXPORT

PyTorch (`--format=pytorch`, the default; the file type from `--out`'s extension): a
pre-training checkpoint gives the MAE state dict (`patch_embed.proj.weight`, `blocks.N.*`,
`norm`, `decoder_*`, fixed `pos_embed` tables) that the official MAE / UniEmoX fine-tuning code
loads; a fine-tuning checkpoint gives the timm `VisionTransformer(global_pool=True)` state dict
(with `fc_norm` and `head`). `.safetensors` and `.npz` need no PyTorch; `.pth` writes
`{'model': state_dict}` with torch. Both load back with `uniemox_jax.weights.mae` (and as
`config.init`).

Orbax (`--format=orbax`, `--out` a new directory): the inference parameters only (the
classifier; for a pre-training run its encoder + decoder) and `model.json` (variant, sizes,
class names, preprocessing, source run and results); `inference.load_export(DIR)` and
`predict --checkpoint=DIR` read it without the training config, on any device layout.
`--format=jax_export` writes the same plus `forward.jax_export` (the forward function,
symbolic batch, for CPU and GPU/TPU) and `params.npz`, runnable with jax alone (see
`uniemox_jax/inference.py`).

For a directory of checkpoints, the best by validation top-1 (fine-tuning) or the latest is
exported.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from absl import logging

from uniemox_jax import inference, metrics, start
from uniemox_jax.weights import mae as mae_weights

FORMATS = ("pytorch", "orbax", "jax_export")


def export(checkpoint: str, out: str, image_size: int | None = None) -> dict:
  """Writes the checkpoint's parameters to `out`; returns the state dict written."""
  params, desc = start.read_params(checkpoint)
  if image_size is None:  # only the fixed sin-cos tables depend on it
    image_size = _run_image_size(checkpoint) or 224
  state_dict = mae_weights.params_to_mae_state_dict(params, image_size=image_size)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, out,
              metadata={"source": desc, "format": "uniemox-jax export, official MAE naming"})
  elif out.endswith(".npz"):
    np.savez(out, **state_dict)
  elif out.endswith((".pth", ".pt")):
    import torch
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}},
               out)
  else:
    raise ValueError(f"--out={out!r}: use a .safetensors, .npz or .pth file name")
  logging.info("exported %s (%d tensors) to %s", desc, len(state_dict), out)
  return state_dict


def export_inference(checkpoint: str, out_dir: str, fmt: str = "orbax",
                     platforms=inference.JAX_EXPORT_PLATFORMS, overwrite: bool = False) -> dict:
  """Writes an inference export of `checkpoint` to the directory `out_dir`: `fmt='orbax'`
  (parameters + model.json) or `'jax_export'` (that plus the serialized forward function and
  `params.npz`). Returns the `model.json` written."""
  if fmt not in ("orbax", "jax_export"):
    raise ValueError(f"format {fmt!r}: an inference export is 'orbax' or 'jax_export'")
  module, params, info = inference.from_checkpoint(checkpoint)
  info = inference.write_export(out_dir, params, info, overwrite=overwrite)
  if fmt == "jax_export":
    info = inference.write_jax_export(out_dir, module, params, info, platforms=platforms)
  logging.info("exported %s (%s) to %s", info["source"]["checkpoint"], info["kind"], out_dir)
  return info


def _define_flags():
  """CLI flags, defined only when run as a program (importing this module defines none)."""
  global _CHECKPOINT, _OUT, _IMAGE_SIZE, _FORMAT, _PLATFORMS, _OVERWRITE
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A workdir, checkpoints dir or step dir.")
  _OUT = flags.DEFINE_string("out", None, "pytorch: a .safetensors, .npz or .pth file; orbax, "
                             "jax_export: a new directory.")
  _FORMAT = flags.DEFINE_enum("format", "pytorch", list(FORMATS), "What to write (see above).")
  _IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "pytorch: image size of the fixed "
                                     "position tables (default: from the run's config).")
  _PLATFORMS = flags.DEFINE_list("platforms", list(inference.JAX_EXPORT_PLATFORMS),
                                 "jax_export: platforms to lower for (those that lower here).")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "orbax, jax_export: replace a non-empty "
                                 "--out directory.")


def main(argv):
  del argv
  metrics.quiet_library_logs()
  if _FORMAT.value == "pytorch":
    sd = export(_CHECKPOINT.value, _OUT.value, _IMAGE_SIZE.value)
    print(f"wrote {len(sd)} tensors to {_OUT.value}")
    return
  info = export_inference(_CHECKPOINT.value, _OUT.value, _FORMAT.value,
                          platforms=_PLATFORMS.value, overwrite=_OVERWRITE.value)
  extra = (f"; jax_export for {', '.join(info['jax_export']['platforms'])}"
           if "jax_export" in info else "")
  print(f"wrote the {info['kind']} inference export of {info['source']['checkpoint']} to "
        f"{_OUT.value}{extra}")


def _run_image_size(path: str) -> int | None:
  """The image size in the run's `run_info.json` (workdir, checkpoints dir or step dir)."""
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    info = os.path.join(candidate, "run_info.json")
    if os.path.exists(info):
      with open(info) as f:
        return int(json.load(f)["config"]["model"]["image_size"])
  return None


def _cli_main(argv):
  """`main`, with the user's mistakes raised as one-line errors (exit code 2) before anything
  is read: a wrong --out name, a --checkpoint that is not one of our runs."""
  from uniemox_jax import errors  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: export takes flags only")
  if _FORMAT.value == "pytorch" and not _OUT.value.endswith((".safetensors", ".npz", ".pth",
                                                             ".pt")):
    raise errors.UserError(f"--out={_OUT.value!r}: --format=pytorch writes a .safetensors, "
                           ".npz or .pth file; name it so (or pick --format=orbax / jax_export "
                           "for a directory)")
  if not start.is_our_checkpoint(_CHECKPOINT.value):
    what = "does not exist" if not os.path.exists(_CHECKPOINT.value) else (
        "is not one of our runs")
    raise errors.UserError(f"--checkpoint={_CHECKPOINT.value!r} {what}: export takes a "
                           "workdir of ours, its checkpoints/ directory or a step directory")
  return main(argv)


if __name__ == "__main__":
  from uniemox_jax import errors  # pylint: disable=g-import-not-at-top
  _define_flags()
  flags.mark_flags_as_required(["checkpoint", "out"])
  # Flag and user errors end with one `error: ...` line and exit code 2 (uniemox_jax.errors).
  errors.run_cli(_cli_main)
