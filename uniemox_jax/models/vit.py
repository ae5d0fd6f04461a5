"""Vision Transformer building blocks in MAE's conventions (docs/method.md §2).

Pre-norm blocks, LayerNorm eps 1e-6, exact GELU, fused qkv with bias, learned CLS token, fixed
2-D sin-cos position embeddings (MAE's layout), Xavier-uniform linears. Images are NHWC.

The residual stream stays in float32; matrix multiplies run in `dtype` (bfloat16 on
accelerators), and LayerNorm statistics and the attention softmax are computed in float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax import masking

Dtype = Any
LN_EPS = 1e-6

# Compute dtypes by config name (`config.model.dtype`, `config.teacher.dtype`); parameters
# always stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str) -> Dtype:
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
  return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Variant:
  """Sizes of a ViT and of the MAE decoder that goes with it."""
  width: int
  depth: int
  heads: int
  mlp_dim: int
  patch_size: int
  decoder_width: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 16


# Names follow big_vision ("B/16"); the number after the slash is the patch size.
VARIANTS: dict[str, Variant] = {
    "mu": Variant(width=32, depth=2, heads=2, mlp_dim=128, patch_size=8,
                  decoder_width=32, decoder_depth=1, decoder_heads=2),
    "Ti/16": Variant(192, 12, 3, 768, 16),
    "S/16": Variant(384, 12, 6, 1536, 16),
    "B/16": Variant(768, 12, 12, 3072, 16),
    "L/16": Variant(1024, 24, 16, 4096, 16),
    "H/14": Variant(1280, 32, 16, 5120, 14),
}


def get_variant(name: str) -> Variant:
  """Looks a variant up by name; `'mu/4'`-style names override the patch size."""
  if name in VARIANTS:
    return VARIANTS[name]
  base, _, patch = name.partition("/")
  for key, value in VARIANTS.items():
    if key.partition("/")[0] == base and patch.isdigit():
      return dataclasses.replace(value, patch_size=int(patch))
  raise ValueError(f"Unknown ViT variant {name!r}; known: {sorted(VARIANTS)} "
                   "(a different patch size can be given as e.g. 'B/8').")


# --------------------------------------------------------------------------------------
# Position embeddings.


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """`[M, dim]`: sin of position × frequency in the first half, cos in the second."""
  freqs = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = positions.reshape(-1).astype(np.float64)[:, None] * freqs[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, cls_token: bool = False) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding in MAE's layout.

  Patches are numbered row-major (`t = row * grid_w + col`). The first half of each vector
  encodes the column (w) coordinate, the second half the row (h); each half is `[sin | cos]`.

  Args:
    embed_dim: width, a multiple of 4.
    grid_size: `int` for a square grid or `(grid_h, grid_w)`.
    cls_token: prepend an all-zero row for the CLS token.

  Returns:
    `np.ndarray` float32 of shape `[grid_h * grid_w (+1), embed_dim]`.
  """
  if embed_dim % 4:
    raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
  grid_h, grid_w = (grid_size, grid_size) if np.isscalar(grid_size) else tuple(grid_size)
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)],
                       axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
  return emb.astype(np.float32)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`[out, in]` matrix of PyTorch's bicubic resize (A = −0.75, align_corners=False, borders
  clamped, no antialiasing): what MAE's `interpolate_pos_embed` and transformers use, so that
  resized position embeddings match theirs."""
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a     # 1 < |x| < 2
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = scale * (i + 0.5) - 0.5
    x0 = math.floor(src)
    t = src - x0
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[i, min(max(x0 - 1 + k, 0), in_size - 1)] += w
  return m


def resize_pos_embed(pos_embed: np.ndarray, new_grid: Sequence[int],
                     num_prefix: int = 1) -> np.ndarray:
  """Bicubically resizes a learned `[1, prefix + h*w, D]` position embedding to `new_grid`.

  Prefix tokens (CLS) are kept as they are. Used when a checkpoint was trained at another
  image size (the classifier's learned position embedding; the MAE one is recomputed).
  Matches PyTorch's `F.interpolate(mode='bicubic', align_corners=False)`.
  """
  pos_embed = np.asarray(pos_embed)
  prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
  old = int(round(math.sqrt(grid.shape[1])))
  if old * old != grid.shape[1]:
    raise ValueError(f"position embedding of {grid.shape[1]} patches is not a square grid")
  new_h, new_w = new_grid
  if (old, old) == (new_h, new_w):
    return pos_embed
  grid = grid.reshape(old, old, -1).astype(np.float64)
  resized = np.einsum("Hh,hwc,Ww->HWc", bicubic_matrix(old, new_h), grid,
                      bicubic_matrix(old, new_w))
  return np.concatenate([prefix, resized.reshape(1, new_h * new_w, -1).astype(pos_embed.dtype)],
                        axis=1)


# --------------------------------------------------------------------------------------
# Pixels <-> patches.


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """`[B, H, W, C]` → `[B, L, p*p*C]` in MAE's order (row-major patches, then p, q, c)."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid: Sequence[int] | None = None,
               channels: int = 3) -> jax.Array:
  """Inverse of `patchify`: `[B, L, p*p*C]` → `[B, H, W, C]`."""
  b, length, _ = patches.shape
  p = patch_size
  gh, gw = grid if grid is not None else (int(math.isqrt(length)),) * 2
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, gh * p, gw * p, channels)


# --------------------------------------------------------------------------------------
# Layers.

dense_init = nn.initializers.xavier_uniform()


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs):
  """`lax.dot_general` that runs a `[..., D] × [D, F]` product as one 2-D matmul.

  Same result; but the backward pass then contracts one flattened axis instead of (batch,
  tokens), which XLA's CPU backend runs on its fast bfloat16 kernels (a bfloat16 MLP's
  gradient is 3× faster on a CPU with bf16 matrix units); on GPUs and TPUs the reshapes are
  free.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (lhs.ndim > 2 and tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
      and not lhs_batch and not rhs_batch):
    out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                              precision=precision,
                              preferred_element_type=preferred_element_type, **kwargs)
    return out.reshape(*lhs.shape[:-1], *out.shape[1:])
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type, **kwargs)


def Dense(features: int, *, dtype: Dtype = jnp.float32, name: str | None = None,
          kernel_init=dense_init, **kwargs) -> nn.Dense:
  """`nn.Dense` with MAE's Xavier init and `flat_dot_general` (same parameters and names)."""
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, dot_general=flat_dot_general,
                  name=name, **kwargs)


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  # Flax computes the statistics in at least float32 whatever `dtype` is.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample (rng stream 'dropout')."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    bern = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(bern, x / keep, jnp.zeros_like(x))


ATTENTION_IMPLS = ("explicit", "xla", "cudnn")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "explicit",
              causal: bool = False, return_weights: bool = False):
  """Scaled dot-product attention on `[B, T, H, d]` tensors, softmax in float32.

  `impl='explicit'` is plain einsums (bitwise reproducible, used for parity);
  `'xla'` / `'cudnn'` route through `jax.nn.dot_product_attention` (fused kernels on GPU).
  `return_weights=True` (explicit only) also returns the float32 softmax weights
  `[B, H, T_q, T_k]`: `(out, weights)`.
  """
  if impl != "explicit":
    if return_weights:
      raise ValueError(f"attention weights are only computed by attention_impl='explicit', "
                       f"not {impl!r}; build the model with attention_impl='explicit' to "
                       "read attention maps")
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if causal:
    t = logits.shape[-1]
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  return (out, probs) if return_weights else out


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (MAE/timm layout).

  When the caller makes the `'intermediates'` collection mutable
  (`apply(..., mutable=['intermediates'])`), the softmax weights `[B, H, T, T]` (float32) are
  recorded there as `'attention'` (attention maps, rollout); only `impl='explicit'` computes
  them, so other implementations raise then. Otherwise nothing is recorded and the
  computation is unchanged.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    qkv = Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
    if self.is_mutable_collection("intermediates"):
      out, weights = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.impl,
                               return_weights=True)
      self.sow("intermediates", "attention", weights)
    else:
      out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.impl)
    return Dense(d, dtype=self.dtype, name="proj")(out.reshape(b, t, d))


class Mlp(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    y = nn.gelu(y, approximate=False)
    return Dense(d, dtype=self.dtype, name="fc2")(y)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = _layer_norm("norm1", self.dtype)(x)
    y = Attention(self.num_heads, self.dtype, self.attention_impl, name="attn")(y)
    x = x + DropPath(self.drop_path)(y, deterministic=not train)
    y = _layer_norm("norm2", self.dtype)(x)
    y = Mlp(self.mlp_dim, self.dtype, name="mlp")(y)
    return x + DropPath(self.drop_path)(y, deterministic=not train)


def block_class(remat: bool):
  """`Block`, optionally rematerialised (activations recomputed in the backward pass)."""
  return nn.remat(Block, static_argnums=(2,)) if remat else Block


def _patch_embed_init(key, shape, dtype=jnp.float32):
  # MAE initialises the patch projection like a linear layer: Xavier over (p*p*C, D).
  *receptive, out = shape
  fan_in = int(np.prod(receptive))
  limit = math.sqrt(6.0 / (fan_in + out))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


class Encoder(nn.Module):
  """ViT encoder with optional MAE masking.

  Attributes:
    width, depth, num_heads, mlp_dim, patch_size: sizes (see `VARIANTS`).
    image_size: input height = width in pixels.
    pos_embed: `'sincos'` (fixed, MAE pre-training) or `'learn'` (a parameter initialised
      with the sin-cos values, as in MAE fine-tuning).
    final_norm: apply the final LayerNorm (`'norm'`); the fine-tuning classifier pools the
      un-normalised tokens and has its own norm.
    drop_path_rate: stochastic depth, linearly increasing over blocks (fine-tuning).
    remat: recompute block activations in the backward pass to save memory.
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int = 224
  pos_embed: str = "sincos"
  final_norm: bool = True
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str = "explicit"

  @property
  def grid(self) -> tuple[int, int]:
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch "
                       f"size {self.patch_size}")
    g = self.image_size // self.patch_size
    return (g, g)

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  def _position_embedding(self) -> jax.Array:
    table = get_2d_sincos_pos_embed(self.width, self.grid, cls_token=True)[None]
    if self.pos_embed == "sincos":
      return jnp.asarray(table)
    if self.pos_embed == "learn":
      return self.param("pos_embed", lambda *_: jnp.asarray(table))
    raise ValueError(f"pos_embed must be 'sincos' or 'learn', got {self.pos_embed!r}")

  @nn.compact
  def __call__(self, images: jax.Array, *, mask_ratio: float = 0.0,
               noise: jax.Array | None = None, train: bool = False):
    """Encodes (the visible patches of) a batch of images.

    Args:
      images: `[B, H, W, 3]` float, already normalised.
      mask_ratio: static fraction of patches to remove (0 keeps all).
      noise: `[B, L]` masking noise; drawn from the 'masking' rng stream when None.
      train: enables drop path.

    Returns:
      tokens `[B, 1 + K, D]` (CLS first), aux dict with `'mask'` `[B, L]` (1 = removed) and
      `'ids_restore'` `[B, L]` when masking.
    """
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"expected {self.image_size}x{self.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}")
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding="VALID", dtype=self.dtype, kernel_init=_patch_embed_init,
                name="patch_embed")(images)
    b = x.shape[0]
    x = x.reshape(b, -1, self.width)
    pos = self._position_embedding()
    x = x + pos[:, 1:]
    aux = {}
    if mask_ratio > 0.0:
      if noise is None:
        noise = masking.sample_noise(self.make_rng("masking"), b, x.shape[1])
      x, aux["mask"], aux["ids_restore"] = masking.random_masking(x, mask_ratio, noise)
    cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
    cls = jnp.broadcast_to(cls + pos[:, :1], (b, 1, self.width))
    x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    block = block_class(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, float(rates[i]), self.dtype, self.attention_impl,
                name=f"blocks_{i}")(x, train)
    if self.final_norm:
      x = _layer_norm("norm", self.dtype)(x)
    return x, aux


def encoder_from_variant(variant: str, **overrides) -> Encoder:
  """An `Encoder` with the sizes of `variant`; keyword overrides win (e.g. `patch_size`)."""
  v = get_variant(variant)
  fields = dict(width=v.width, depth=v.depth, num_heads=v.heads, mlp_dim=v.mlp_dim,
                patch_size=v.patch_size)
  fields.update({k: val for k, val in overrides.items() if val is not None})
  return Encoder(**fields)
