"""MAE random masking as pure functions.

Per sample, patches are ranked by uniform noise; the lowest-noise `int(L * (1 - r))` are kept.
Everything is a pure function of its inputs, so the same noise always gives the same mask
(the noise is drawn by the caller from an explicit `jax.random` key).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Number of patches kept for `mask_ratio` (the released code's `int(L * (1 - r))`)."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return int(num_patches * (1 - mask_ratio))


def sample_noise(key: jax.Array, batch: int, num_patches: int) -> jax.Array:
  """Uniform [0, 1) noise `[B, L]` that decides which patches are kept."""
  return jax.random.uniform(key, (batch, num_patches), jnp.float32)


def random_masking(x: jax.Array, mask_ratio: float, noise: jax.Array):
  """Keeps a random subset of tokens per sample.

  Args:
    x: `[B, L, D]` tokens (patch embeddings, position embedding already added).
    mask_ratio: fraction of tokens removed; a static Python float.
    noise: `[B, L]` float; the tokens with the smallest noise are kept.

  Returns:
    x_visible: `[B, K, D]` with `K = int(L * (1 - mask_ratio))`, in keep order.
    mask: `[B, L]` float32, 1 where the token was removed, 0 where kept (original order).
    ids_restore: `[B, L]` int32; `take_along_axis(shuffled, ids_restore)` un-shuffles a
      sequence that lists kept tokens first and removed ones after.
  """
  batch, length, _ = x.shape
  if noise.shape != (batch, length):
    raise ValueError(f"noise must have shape {(batch, length)}, got {noise.shape}")
  keep = num_visible(length, mask_ratio)
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :keep]
  x_visible = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  # Rank of each token in the shuffle: kept tokens have rank < keep.
  mask = (ids_restore >= keep).astype(jnp.float32)
  return x_visible, mask, ids_restore


def unshuffle(x_shuffled: jax.Array, ids_restore: jax.Array) -> jax.Array:
  """Puts a `[B, L, D]` sequence in keep-first order back into patch order."""
  return jnp.take_along_axis(x_shuffled, ids_restore[:, :, None], axis=1)
