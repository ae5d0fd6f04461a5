"""The UniEmoX pre-training model (docs/method.md §1): one shared MAE over a scene and a person view.

Parameter tree: `mae/...` (see `mae.py`), `fusion/...`, and `teacher_proj` when the teacher's
embedding width differs from the decoder width (512 for CLIP ViT-B/16: no projection).
The frozen CLIP teacher is not part of this module.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from uniemox_jax.models import fusion as fusion_lib
from uniemox_jax.models import mae, vit


class UniEmoX(mae.MaeFields):
  """Masked image modelling on the scene view plus a fused (scene, person) student token.

  Attributes:
    variant, image_size, patch_size, decoder_*: the MAE (see `mae.MaskedAutoencoder`).
    decoder_output: `'patches'` or `'cls_broadcast'` (docs/method.md §3 #1).
    fusion: a name in `fusion.FUSIONS`; `'none'` uses the scene token alone and skips the
      person view.
    fusion_heads: heads of the multi-head fusion variants (released default 3).
    teacher_dim: the teacher's embedding width; a linear projection is added only when it
      differs from the decoder width.
  """
  variant: str = "L/16"
  fusion: str = "easyfusion"
  fusion_heads: int = 3
  teacher_dim: int = 512

  def mae_module(self) -> mae.MaskedAutoencoder:
    return mae.MaskedAutoencoder(**self.mae_fields(), name="mae")

  @property
  def patch_size_(self) -> int:
    return self.spec.patch_size

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size_) ** 2

  @property
  def uses_person_view(self) -> bool:
    return self.fusion != "none"

  @nn.compact
  def __call__(self, scene: jax.Array, person: jax.Array | None, mask_ratio: float,
               noise_scene: jax.Array | None = None, noise_person: jax.Array | None = None,
               train: bool = False):
    """One forward pass of both views.

    Args:
      scene: `[B, H, W, 3]` the scene view I, ImageNet-normalised.
      person: `[B, H, W, 3]` the person view B (ignored, may be None, when fusion is 'none').
      mask_ratio: static fraction of patches removed from each view (independent masks).
      noise_scene, noise_person: `[B, L]` masking noise; drawn from the 'masking' stream if None.

    Returns:
      pred `[B, L, p*p*3]` float32 (reconstruction of the scene view) and aux with `'mask'`,
      `'ids_restore'`, `'alpha'` `[B, Dd]`, `'beta'` `[B, Dd]` (absent without fusion),
      `'gamma'` `[B, teacher_dim]` (the student token compared with the teacher), `'cls'`.
    """
    model = self.mae_module()
    pred, aux_scene = model(scene, mask_ratio, noise_scene, train=train, decode=True)
    alpha = aux_scene["cls_embed"]
    aux = {"mask": aux_scene["mask"], "ids_restore": aux_scene["ids_restore"],
           "cls": aux_scene["cls"], "alpha": alpha}
    if self.uses_person_view:
      if person is None:
        raise ValueError(f"fusion {self.fusion!r} needs the person view")
      _, aux_person = model(person, mask_ratio, noise_person, train=train, decode=False)
      aux["beta"] = aux_person["cls_embed"]
      gamma = fusion_lib.make_fusion(self.fusion, self.fusion_heads, self.dtype,
                                     name="fusion")(alpha, aux["beta"])
    else:
      gamma = alpha
    if gamma.shape[-1] != self.teacher_dim:
      gamma = nn.Dense(self.teacher_dim, dtype=self.dtype, kernel_init=vit.dense_init,
                       name="teacher_proj")(gamma)
    aux["gamma"] = gamma.astype(jnp.float32)
    return pred, aux


def init_params(model: UniEmoX, seed: int = 0, batch: int = 2):
  """Random parameters of `model` (shapes only depend on the config)."""
  images = jnp.zeros((batch, model.image_size, model.image_size, 3), jnp.float32)
  noise = jnp.zeros((batch, model.num_patches), jnp.float32)
  init = jax.jit(lambda key: model.init(key, images, images, 0.75, noise, noise)["params"])
  return init(jax.random.PRNGKey(seed))
