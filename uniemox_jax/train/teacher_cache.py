"""Teacher text embeddings, computed once per data set (SPEC §6).

The teacher is frozen and each image's caption is fixed, so Λ = CLIP_text(caption) is a
constant per example: it is computed once, stored as `[N, E]` float32 next to the data, and
looked up by example index during training instead of running the text tower every step.

The cache file is keyed by everything that determines its values — the teacher weights' hash,
the tokenizer files, the caption field, the example ids, the context length and the teacher's
compute dtype — so changing any of them never serves stale embeddings (SPEC §8.7).
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging

from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import clip

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def _tokenizer_digest(path: str) -> str:
  digest = hashlib.sha256()
  for name in TOKENIZER_FILES:
    file = os.path.join(path, name)
    if os.path.isfile(file):
      digest.update(name.encode())
      with open(file, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def captions_of(source: Sequence, field: str) -> list[str]:
  """The caption of every example, in source order (fast path when the source has it)."""
  fast = getattr(source, "column", None)
  if fast is not None:
    return list(fast(field))
  return [source[i][field] for i in range(len(source))]


def cache_key(teacher_path: str, tokenizer_path: str, field: str, captions: Sequence[str],
              context_length: int, dtype: str) -> str:
  digest = hashlib.sha256()
  for part in (clip.weights_fingerprint(teacher_path), _tokenizer_digest(tokenizer_path), field,
               str(context_length), dtype):
    digest.update(part.encode())
    digest.update(b"\0")
  for caption in captions:
    digest.update(caption.encode())
    digest.update(b"\n")
  return digest.hexdigest()[:24]


def encode_captions(teacher: clip.CLIP, teacher_params, tokenizer, captions: Sequence[str],
                    context_length: int = 77, batch: int = 256) -> tuple[np.ndarray, int]:
  """Λ for `captions` → (`[N, E]` float32, number of captions truncated to the context)."""
  encode = jax.jit(lambda p, ids: teacher.apply({"params": p}, ids, method="encode_text"))
  out, truncated = [], 0
  for start in range(0, len(captions), batch):
    chunk = list(captions[start:start + batch])
    ids, n_trunc = tokenizer_lib.tokenize(tokenizer, chunk, context_length)
    truncated += n_trunc
    pad = batch - len(chunk)  # one compiled shape for every chunk
    if pad:
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)])
    emb = np.asarray(jax.device_get(encode(teacher_params, ids)), np.float32)
    out.append(emb[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, teacher.spec.projection_dim),
                                                  np.float32), truncated


def text_embeddings(teacher: clip.CLIP, teacher_params, tokenizer_path: str, teacher_path: str,
                    data_config, split: str, source: Sequence, cache_dir: str,
                    context_length: int = 77) -> np.ndarray:
  """Loads the cached `[N, E]` text embeddings of `split`, computing them if needed."""
  field = data_config.caption_field
  captions = captions_of(source, field)
  key = cache_key(teacher_path, tokenizer_path, field, captions, context_length,
                  str(teacher.dtype.__name__ if hasattr(teacher.dtype, "__name__")
                      else teacher.dtype))
  path = os.path.join(cache_dir, f"text_{split.replace('+', '_')}_{key}.npy")
  if os.path.exists(path):
    emb = np.load(path)
    if emb.shape[0] == len(captions):
      logging.info("teacher text embeddings: using cache %s %s", path, emb.shape)
      return emb
    logging.warning("ignoring %s: %d rows for %d captions", path, emb.shape[0], len(captions))
  start = time.perf_counter()
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  emb, truncated = encode_captions(teacher, teacher_params, tokenizer, captions, context_length)
  logging.info("teacher text embeddings of %d captions computed in %.1f s; %d captions were "
               "longer than %d tokens and truncated", len(captions),
               time.perf_counter() - start, truncated, context_length)
  if jax.process_index() == 0:
    try:
      os.makedirs(cache_dir, exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}.npy"
      np.save(tmp, emb)
      os.replace(tmp, path)
    except OSError as e:  # a read-only data directory: recomputed next time, nothing lost
      logging.warning("could not write the text-embedding cache %s (%s)", path, e)
  return emb
