"""Fine-tuning classifier (docs/method.md §1): encoder → mean of patch tokens → LayerNorm → Linear.

As in MAE/UniEmoX fine-tuning with global pooling: the encoder's final norm is not used
(`fc_norm` after pooling replaces it), the position embedding is learned (initialised with
the sin-cos table, overwritten by a checkpoint's), drop path is on, and the head starts from
trunc-normal(2e-5). Parameter tree: `encoder/...` (same names as the MAE encoder, plus
`pos_embed`), `fc_norm`, `head`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uniemox_jax.models import vit


class ViTClassifier(nn.Module):
  variant: str = "L/16"
  num_classes: int = 8
  image_size: int = 224
  patch_size: int | None = None
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    """`images` `[B, H, W, 3]` ImageNet-normalised → (logits `[B, C]` float32, aux).

    aux: `'encoded'` `[B, 1+L, D]` block outputs, `'pre_logits'` `[B, D]` (after fc_norm).
    """
    encoder = vit.encoder_from_variant(
        self.variant, patch_size=self.patch_size, image_size=self.image_size,
        pos_embed="learn", final_norm=False, drop_path_rate=self.drop_path_rate,
        dtype=self.dtype, remat=self.remat, attention_impl=self.attention_impl, name="encoder")
    tokens, _ = encoder(images, train=train)
    pooled = tokens[:, 1:].astype(jnp.float32).mean(axis=1)
    pre_logits = nn.LayerNorm(epsilon=vit.LN_EPS, name="fc_norm")(pooled)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=nn.initializers.truncated_normal(2e-5), name="head")(pre_logits)
    return logits.astype(jnp.float32), {"encoded": tokens, "pre_logits": pre_logits}
