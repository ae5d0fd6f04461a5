"""The frozen CLIP teacher: what it must compute (the plan), loading it, the text-embedding
cache, and its targets Ω (image features) and Λ (caption features) for a batch.

The plan is decided once, here, from the loss weights and `config.teacher.cache_text`:

  image tower   runs when L_sim or L_con is on (Ω of the unmasked scene view);
  text          'none' when neither L_con nor L_nce is on; otherwise 'cache' (Λ computed once
                per data set and looked up by example index: the teacher is frozen and each
                image's caption is fixed, docs/method.md §6) or 'tokens' (the pipeline tokenises
                the captions and the text tower runs every step, as the released code does).

The pipeline asks the teacher whether to tokenise (`pipeline_tokenizer`) and what to attach to
each host batch (`host_batch_fn`); the training step asks it for the targets (`targets`).

The cache file is keyed by everything that determines its values — the teacher weights' hash,
the tokenizer files, the caption field, every caption in order, the context length and the teacher's
compute dtype — so changing any of them never serves stale embeddings (docs/method.md §8 #7).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from uniemox_jax import preprocess, sharding
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import clip, vit

TEXT_MODES = ("none", "cache", "tokens")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which towers run, and where the text features come from (see the module docstring)."""
  image: bool
  text: str  # one of TEXT_MODES

  @classmethod
  def from_config(cls, loss_config, cache_text: bool) -> Plan:
    """The one place that reads `config.teacher.cache_text`."""
    need_text = bool(loss_config.con or loss_config.nce)
    return cls(image=bool(loss_config.sim or loss_config.con),
               text="none" if not need_text else "cache" if cache_text else "tokens")


class Teacher:
  """A loaded, replicated teacher with its plan (and text cache when the plan uses one)."""

  def __init__(self, module: clip.CLIP, params: Any, plan: Plan, *, input_norm: str = "clip",
               tokenizer_path: str = "", text_cache: np.ndarray | None = None):
    if input_norm not in preprocess.TEACHER_NORMS:
      raise ValueError(f"teacher input_norm must be one of {sorted(preprocess.TEACHER_NORMS)}")
    self.module, self.params, self.plan = module, params, plan
    self.input_norm, self.tokenizer_path, self.text_cache = input_norm, tokenizer_path, text_cache

  @classmethod
  def load(cls, config, mesh, split: str, source: Sequence) -> Teacher:
    """Loads `config.teacher` replicated over `mesh`; computes (or reads) the text cache of
    `split`'s captions when the plan needs it."""
    t = config.teacher
    plan = Plan.from_config(config.loss, t.cache_text)
    module, params = clip.load_clip(t.path, dtype=vit.dtype_of(t.dtype))
    params = jax.device_put(params, sharding.replicated(mesh))
    tokenizer_path = t.tokenizer or t.path
    cache = None
    if plan.text == "cache":
      cache = text_embeddings(module, params, tokenizer_path, t.path, config.data.caption_field,
                              split, source,
                              cache_dir=os.path.join(config.data.data_dir, "teacher_cache"))
    logging.info("teacher %s: image tower %s, text %s", t.path, "on" if plan.image else "off",
                 {"none": "off", "cache": "from the cache", "tokens": "tower every step"}[
                     plan.text])
    return cls(module, params, plan, input_norm=t.input_norm, tokenizer_path=tokenizer_path,
               text_cache=cache)

  @property
  def dim(self) -> int:
    """The embedding width of Ω and Λ."""
    return self.module.spec.projection_dim

  # ------------------------------------------------------------------------- host side
  def pipeline_tokenizer(self) -> str | None:
    """The tokenizer the pipeline must run on each caption (None: no tokens needed)."""
    return self.tokenizer_path if self.plan.text == "tokens" else None

  def host_batch_fn(self) -> Callable[[dict], dict] | None:
    """Attaches the cached `text_emb` `[B, E]` to each host batch (by its `index`); None when
    the plan reads no cache (or the batches bring their own `text_emb`, as in benchmarks)."""
    if self.plan.text != "cache" or self.text_cache is None:
      return None
    cache = self.text_cache

    def attach(batch: dict) -> dict:
      batch["text_emb"] = cache[batch["index"]]
      return batch

    return attach

  # ------------------------------------------------------------------------- device side
  def targets(self, params, batch: dict) -> tuple[jax.Array | None, jax.Array | None]:
    """Ω `[B, E]` (CLIP image features of the unmasked scene view) and Λ `[B, E]` (caption
    features), float32, gradient-free; each None when the plan does not need it."""
    omega = lam = None
    if self.plan.image:
      pixels = preprocess.teacher_pixels(batch["scene"], self.input_norm,
                                         self.module.spec.image_size)
      omega = self.module.apply({"params": params}, pixels, method="encode_image")
      omega = jax.lax.stop_gradient(omega.astype(jnp.float32))
    if self.plan.text == "cache":
      lam = jax.lax.stop_gradient(batch["text_emb"].astype(jnp.float32))
    elif self.plan.text == "tokens":
      lam = self.module.apply({"params": params}, batch["caption_ids"], method="encode_text")
      lam = jax.lax.stop_gradient(lam.astype(jnp.float32))
    return omega, lam


# --------------------------------------------------------------------------------------
# The text-embedding cache.


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


def encode_captions(module: clip.CLIP, params, tokenizer, captions: Sequence[str],
                    context_length: int = 77, batch: int = 256) -> tuple[np.ndarray, int]:
  """Λ for `captions` → (`[N, E]` float32, number of captions truncated to the context)."""
  encode = jax.jit(lambda p, ids: module.apply({"params": p}, ids, method="encode_text"))
  out, truncated = [], 0
  for start in range(0, len(captions), batch):
    chunk = list(captions[start:start + batch])
    ids, n_trunc = tokenizer_lib.tokenize(tokenizer, chunk, context_length)
    truncated += n_trunc
    pad = batch - len(chunk)  # one compiled shape for every chunk
    if pad:
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)])
    emb = np.asarray(jax.device_get(encode(params, ids)), np.float32)
    out.append(emb[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, module.spec.projection_dim),
                                                  np.float32), truncated


def _dtype_name(dtype) -> str:
  return str(dtype.__name__ if hasattr(dtype, "__name__") else dtype)


def text_embeddings(module: clip.CLIP, params, tokenizer_path: str, teacher_path: str,
                    field: str, split: str, source: Sequence, cache_dir: str,
                    context_length: int = 77) -> np.ndarray:
  """Loads the cached `[N, E]` text embeddings of `split`'s `field` captions, computing them
  if needed."""
  captions = captions_of(source, field)
  key = cache_key(teacher_path, tokenizer_path, field, captions, context_length,
                  _dtype_name(module.dtype))
  path = os.path.join(cache_dir, f"text_{split.replace('+', '_')}_{key}.npy")
  if os.path.exists(path):
    emb = np.load(path)
    if emb.shape[0] == len(captions):
      logging.info("teacher text embeddings: using cache %s %s", path, emb.shape)
      return emb
    logging.warning("ignoring %s: %d rows for %d captions", path, emb.shape[0], len(captions))
  start = time.perf_counter()
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  emb, truncated = encode_captions(module, params, tokenizer, captions, context_length)
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
