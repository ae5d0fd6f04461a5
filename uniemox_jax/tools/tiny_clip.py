r"""Writes a tiny random CLIP teacher (Hugging Face layout) for the demo and tests.

  python -m uniemox_jax.tools.tiny_clip --out=demo_out/tiny_clip --captions_from=demo_out/raw/EmoSet

The directory holds `config.json`, `model.safetensors` (random weights) and a small real
byte-level BPE vocabulary learned from the data set's captions, so it loads exactly like a
downloaded CLIP (`clip.load_clip`, `tokenizer.load_tokenizer`) with nothing downloaded. Its
features carry no semantics: the demo exercises every code path, not CLIP's knowledge.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging

from uniemox_jax.data import captions as captions_lib
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import clip

TINY = dict(image_size=64, patch_size=16, vision_width=64, vision_layers=2, vision_heads=2,
            vision_mlp_dim=256, context_length=77, text_width=64, text_layers=2, text_heads=2,
            text_mlp_dim=256, projection_dim=64)


def emoset_captions(root: str) -> list[str]:
  """Captions of every annotated image under an EmoSet-layout directory (official layout)."""
  texts = []
  for split in ("train", "val", "test"):
    path = os.path.join(root, f"{split}.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = json.load(f)
    for row in rows:
      emotion, annotation = row[0], row[-1]
      with open(os.path.join(root, annotation)) as f:
        texts.append(captions_lib.build_caption(json.load(f), emotion))
  if not texts:
    raise FileNotFoundError(f"no EmoSet split files (train/val/test.json) under {root!r}")
  return texts


def make_tiny_clip(out_dir: str, corpus: list[str], seed: int = 0, **sizes) -> str:
  """Writes the tiny teacher to `out_dir` and returns it. `sizes` override `TINY`."""
  tokenizer_lib.write_tiny_vocab(out_dir, corpus)
  vocab_size = len(tokenizer_lib.load_tokenizer(out_dir))
  spec = clip.ClipSpec(**dict(TINY, **sizes), vocab_size=vocab_size,
                       eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2,
                       pad_token_id=vocab_size - 1)
  clip.save_pretrained(spec, clip.init_params(spec, seed), out_dir)
  logging.info("tiny CLIP teacher (vocab %d, projection %d) written to %s", vocab_size,
               spec.projection_dim, out_dir)
  return out_dir


def _define_flags():
  """CLI flags, defined only when run as a program (importing this module defines none)."""
  global _OUT, _CAPTIONS, _SEED
  _OUT = flags.DEFINE_string("out", None, "Output directory.")
  _CAPTIONS = flags.DEFINE_string("captions_from", None,
                                  "An EmoSet-layout directory whose captions train the vocabulary.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights.")


def main(argv):
  del argv
  make_tiny_clip(_OUT.value, emoset_captions(_CAPTIONS.value), _SEED.value)
  print(f"tiny CLIP teacher written to {_OUT.value}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["out", "captions_from"])
  app.run(main)
