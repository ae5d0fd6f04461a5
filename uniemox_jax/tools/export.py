r"""Exports the weights of one of our checkpoints in the official PyTorch (MAE / timm) layout.

  python -m uniemox_jax.tools.export --checkpoint=$WORK/pretrain --out=uniemox_mae.safetensors
  python -m uniemox_jax.tools.export --checkpoint=$WORK/finetune --out=classifier.pth

A pre-training checkpoint gives the MAE state dict (`patch_embed.proj.weight`, `blocks.N.*`,
`norm`, `decoder_*`, fixed `pos_embed` tables) that the official MAE / UniEmoX fine-tuning code
loads; a fine-tuning checkpoint gives the timm `VisionTransformer(global_pool=True)` state dict
(with `fc_norm` and `head`). `.safetensors` and `.npz` need no PyTorch; `.pth` writes
`{'model': state_dict}` with torch. For a directory of checkpoints, the best by validation
top-1 (fine-tuning) or the latest is exported. Both formats load back with
`uniemox_jax.weights.mae` (and as `config.init`).
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

from uniemox_jax import start
from uniemox_jax.weights import mae as mae_weights


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


def _define_flags():
  """CLI flags, defined only when run as a program (importing this module defines none)."""
  global _CHECKPOINT, _OUT, _IMAGE_SIZE
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A workdir, checkpoints dir or step dir.")
  _OUT = flags.DEFINE_string("out", None, "Output file: .safetensors, .npz or .pth.")
  _IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image size of the fixed position "
                                     "tables (default: from the run's config).")


def main(argv):
  del argv
  sd = export(_CHECKPOINT.value, _OUT.value, _IMAGE_SIZE.value)
  print(f"wrote {len(sd)} tensors to {_OUT.value}")


def _run_image_size(path: str) -> int | None:
  """The image size in the run's `run_info.json` (workdir, checkpoints dir or step dir)."""
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    info = os.path.join(candidate, "run_info.json")
    if os.path.exists(info):
      with open(info) as f:
        return int(json.load(f)["config"]["model"]["image_size"])
  return None


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["checkpoint", "out"])
  app.run(main)
