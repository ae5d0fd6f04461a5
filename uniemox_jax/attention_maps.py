"""Attention maps of a ViT: the last block's CLS-to-patch attention and attention rollout.

The encoder's `Attention` layers record their softmax weights `[B, H, T, T]` in the
`'intermediates'` collection when a caller makes it mutable (`models/vit.py`); only the
`'explicit'` attention implementation computes them. Here they are read back in block order
and reduced to one `[B, gh, gw]` map per image:

  last     the last block's attention from the CLS token to every patch, heads averaged
  rollout  Abnar & Zuidema (2020): per block `0.5 * mean_heads(A) + 0.5 * I`, rows
           renormalised, multiplied from the first block to the last; the CLS row's patch
           entries

Both are scaled to [0, 1] per image (min → 0, max → 1) for display.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"blocks_(\d+)$")


def block_weights(intermediates: Mapping[str, Any], under: Sequence[str] = ("encoder",)
                  ) -> list[jax.Array]:
  """The recorded attention weights of the blocks under `under` (module names from the
  applied module's root), in block order: a list of `[B, H, T, T]` float32 arrays."""
  node = intermediates
  for name in under:
    if name not in node:
      raise KeyError(f"no attention recorded under {'/'.join(under)!r} (found {sorted(node)}); "
                     "apply the model with mutable=['intermediates'] and "
                     "attention_impl='explicit'")
    node = node[name]
  blocks = sorted(((int(m.group(1)), v) for k, v in node.items()
                   if (m := _BLOCK.match(k))), key=lambda kv: kv[0])
  out = [b["attn"]["attention"][0] for _, b in blocks if "attention" in b.get("attn", {})]
  if not out:
    raise KeyError(f"no attention weights under {'/'.join(under)!r}: the model must be built "
                   "with attention_impl='explicit' and applied with mutable=['intermediates']")
  return out


def _scale(maps: jax.Array) -> jax.Array:
  lo = maps.min(axis=1, keepdims=True)
  hi = maps.max(axis=1, keepdims=True)
  return (maps - lo) / jnp.maximum(hi - lo, 1e-12)


def _grid(maps: jax.Array) -> jax.Array:
  """`[B, L]` → `[B, g, g]` for a square patch grid."""
  b, length = maps.shape
  g = math.isqrt(length)
  if g * g != length:
    raise ValueError(f"{length} patches are not a square grid")
  return maps.reshape(b, g, g)


def last_block_cls(weights: Sequence[jax.Array]) -> jax.Array:
  """`[B, g, g]` in [0, 1]: the last block's CLS → patch attention, heads averaged."""
  last = weights[-1].astype(jnp.float32).mean(axis=1)  # [B, T, T]
  return _grid(_scale(last[:, 0, 1:]))


def rollout(weights: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
  """`[B, g, g]` in [0, 1]: attention rollout over all blocks (see the module docstring)."""
  result = None
  for w in weights:
    a = w.astype(jnp.float32).mean(axis=1)  # [B, T, T]
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = residual * a + (1.0 - residual) * eye
    a = a / a.sum(axis=-1, keepdims=True)
    result = a if result is None else jnp.einsum("bij,bjk->bik", a, result)
  return _grid(_scale(result[:, 0, 1:]))


def apply_with_maps(module, params, images: jax.Array, under: Sequence[str] = ("encoder",),
                    **kwargs):
  """`(module output, {'last': [B, g, g], 'rollout': [B, g, g]})` for normalised `images`
  `[B, S, S, 3]`. Raises when the module's attention implementation records no weights."""
  impl = getattr(module, "attention_impl", "explicit")
  if impl != "explicit":
    raise ValueError(f"attention maps need attention_impl='explicit' (the module has "
                     f"{impl!r}); rebuild it with attention_impl='explicit'")
  out, state = module.apply({"params": params}, images, mutable=["intermediates"], **kwargs)
  weights = block_weights(state["intermediates"], under)
  return out, {"last": last_block_cls(weights), "rollout": rollout(weights)}
