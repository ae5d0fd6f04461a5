"""Masked autoencoder (He et al.) as used by UniEmoX (docs/method.md §2).

Parameter tree (flax names):
  encoder/{patch_embed, cls_token, blocks_i/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}}, norm}
  decoder_embed                       Linear D → decoder width (also makes the student token)
  decoder/{mask_token, blocks_i/..., norm, pred}
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax import masking
from uniemox_jax.models import vit

DECODER_OUTPUTS = ("patches", "cls_broadcast")


class Decoder(nn.Module):
  """MAE decoder: mask tokens + fixed position embedding + blocks → per-patch pixels.

  `output='patches'` is standard MAE. `output='cls_broadcast'` reproduces the released UniEmoX
  code, which keeps only the CLS prediction and broadcasts it onto every patch (docs/method.md §3 #1).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  grid: tuple[int, int]
  patch_dim: int
  output: str = "patches"
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """`x` `[B, 1 + K, Dd]` embedded visible tokens (CLS first) → `[B, L, p*p*3]` float32."""
    if self.output not in DECODER_OUTPUTS:
      raise ValueError(f"decoder_output must be one of {DECODER_OUTPUTS}, got {self.output!r}")
    b, length = ids_restore.shape
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width))
    num_masked = length + 1 - x.shape[1]
    filler = jnp.broadcast_to(mask_token.astype(x.dtype), (b, num_masked, self.width))
    patches = masking.unshuffle(jnp.concatenate([x[:, 1:], filler], axis=1), ids_restore)
    x = jnp.concatenate([x[:, :1], patches], axis=1)
    pos = vit.get_2d_sincos_pos_embed(self.width, self.grid, cls_token=True)[None]
    x = x + jnp.asarray(pos)
    block = vit.block_class(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, 0.0, self.dtype, self.attention_impl,
                name=f"blocks_{i}")(x, False)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    x = vit.Dense(self.patch_dim, dtype=self.dtype, name="pred")(x)
    x = x.astype(jnp.float32)
    if self.output == "cls_broadcast":
      return jnp.broadcast_to(x[:, :1], (b, length, self.patch_dim))
    return x[:, 1:]


class MaeFields(nn.Module):
  """The fields that size and configure a masked autoencoder (shared by `MaskedAutoencoder`
  and the UniEmoX model that contains one).

  Attributes:
    variant: a name from `vit.VARIANTS` (`'mu'`, `'Ti/16'`, `'S/16'`, `'B/16'`, `'L/16'`,
      `'H/14'`); the fields below override its sizes when set.
    decoder_output: `'patches'` (default) or `'cls_broadcast'` (released code, docs/method.md §3 #1).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    remat: rematerialise transformer blocks.
  """
  variant: str = "B/16"
  image_size: int = 224
  patch_size: int | None = None
  decoder_width: int | None = None
  decoder_depth: int | None = None
  decoder_heads: int | None = None
  decoder_output: str = "patches"
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str = "explicit"

  @property
  def spec(self) -> vit.Variant:
    v = vit.get_variant(self.variant)
    return vit.Variant(
        width=v.width, depth=v.depth, heads=v.heads, mlp_dim=v.mlp_dim,
        patch_size=self.patch_size or v.patch_size,
        decoder_width=self.decoder_width or v.decoder_width,
        decoder_depth=v.decoder_depth if self.decoder_depth is None else self.decoder_depth,
        decoder_heads=self.decoder_heads or v.decoder_heads)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.spec.patch_size) ** 2

  def mae_fields(self) -> dict[str, Any]:
    """This module's values of `MaeFields`' fields."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(MaeFields)
            if f.name not in ("parent", "name")}


class MaskedAutoencoder(MaeFields):
  """ViT encoder with MAE masking and the MAE decoder (fields: see `MaeFields`)."""

  @nn.compact
  def __call__(self, images: jax.Array, mask_ratio: float = 0.75,
               noise: jax.Array | None = None, train: bool = False, decode: bool = True):
    """Encodes the visible patches and (optionally) predicts all patches' pixels.

    Args:
      images: `[B, H, W, 3]` float, ImageNet-normalised.
      mask_ratio: static fraction of patches removed.
      noise: `[B, L]` masking noise (the 'masking' rng stream is used when None).
      train: enables drop path (none in pre-training by default).
      decode: run the decoder; False skips it (the person view only needs its CLS token).

    Returns:
      pred: `[B, L, p*p*3]` float32 (None when `decode=False`).
      aux: `'cls'` `[B, D]` (encoder CLS after the final norm), `'cls_embed'` `[B, Dd]`
        (`decoder_embed(cls)`: UniEmoX's student token), `'encoded'` `[B, 1+K, D]`,
        `'mask'` `[B, L]` (1 = removed), `'ids_restore'` `[B, L]`.
    """
    s = self.spec
    encoder = vit.Encoder(width=s.width, depth=s.depth, num_heads=s.heads, mlp_dim=s.mlp_dim,
                          patch_size=s.patch_size, image_size=self.image_size,
                          pos_embed="sincos", dtype=self.dtype, remat=self.remat,
                          attention_impl=self.attention_impl, name="encoder")
    if noise is None and mask_ratio > 0.0:
      noise = masking.sample_noise(self.make_rng("masking"), images.shape[0], self.num_patches)
    latent, enc_aux = encoder(images, mask_ratio=mask_ratio, noise=noise, train=train)
    if mask_ratio == 0.0:
      enc_aux = {"mask": jnp.zeros(latent.shape[:1] + (self.num_patches,), jnp.float32),
                 "ids_restore": jnp.broadcast_to(
                     jnp.arange(self.num_patches, dtype=jnp.int32),
                     (latent.shape[0], self.num_patches))}
    embed = vit.Dense(s.decoder_width, dtype=self.dtype, name="decoder_embed")
    aux = dict(enc_aux, encoded=latent, cls=latent[:, 0].astype(jnp.float32))
    if not decode:
      aux["cls_embed"] = embed(latent[:, :1])[:, 0].astype(jnp.float32)
      return None, aux
    x = embed(latent)
    aux["cls_embed"] = x[:, 0].astype(jnp.float32)
    grid = (self.image_size // s.patch_size,) * 2
    pred = Decoder(width=s.decoder_width, depth=s.decoder_depth, num_heads=s.decoder_heads,
                   mlp_dim=4 * s.decoder_width, grid=grid, patch_dim=s.patch_size ** 2 * 3,
                   output=self.decoder_output, dtype=self.dtype, remat=self.remat,
                   attention_impl=self.attention_impl, name="decoder")(x, aux["ids_restore"])
    return pred, aux


def reconstruction_target(images: jax.Array, patch_size: int) -> jax.Array:
  """The L_rec target: the normalised input pixels, patchified in MAE's order `[B, L, p*p*3]`."""
  return vit.patchify(images.astype(jnp.float32), patch_size)


def init_params(model: MaskedAutoencoder, seed: int = 0, batch: int = 1):
  """Random MAE initialisation (Xavier linears, normal(0.02) tokens), as a params tree."""
  images = jnp.zeros((batch, model.image_size, model.image_size, 3), jnp.float32)
  noise = jnp.zeros((batch, model.num_patches), jnp.float32)
  init = jax.jit(lambda key: model.init(key, images, 0.75, noise)["params"])
  return init(jax.random.PRNGKey(seed))


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
