"""CLIP (ViT image tower + causal text tower) in flax.linen.

The frozen teacher of UniEmoX (docs/method.md §1): `encode_image` gives Ω, `encode_text` gives Λ.

    clip_model, clip_params = load_clip(path)   # HF CLIP directory or OpenAI .pt file
    img = clip_model.apply({'params': clip_params}, pixels, method='encode_image')    # [B, E]
    txt = clip_model.apply({'params': clip_params}, input_ids, method='encode_text')  # [B, E]

Pixels are `[B, H, W, 3]` floats already normalised with `CLIP_MEAN` / `CLIP_STD`; outputs are the
projected features, not L2-normalised, always float32.

Reading and writing weights (Hugging Face and OpenAI layouts, the key maps, the fingerprint)
is `uniemox_jax.weights.clip`'s job; `load_clip`, `save_pretrained` and `weights_fingerprint`
here delegate to it.

Parameter tree (`[in, out]` kernels, NHWC conv kernel `[p, p, 3, W]`):
    vision/{patch_embed/kernel, class_embedding [W], pos_embedding [N+1, W], ln_pre,
            block_i/{ln_1, attn/{query,key,value,out}/{kernel,bias}, ln_2, mlp/{fc1,fc2}},
            ln_post, projection/kernel [W, E]}
    text/{token_embedding/embedding [V, W], pos_embedding [T, W], block_i/..., ln_final,
          projection/kernel [W, E]}
    logit_scale []
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from uniemox_jax.models import vit
from uniemox_jax.preprocess import CLIP_MEAN, CLIP_STD

__all__ = [
  'CLIP',
  'CLIP_MEAN',
  'CLIP_STD',
  'ClipSpec',
  'LEGACY_EOS_TOKEN_ID',
  'init_params',
  'load_clip',
  'resize_pos_embedding',
  'save_pretrained',
  'weights_fingerprint',
]

# Hugging Face configs written before transformers PR #24773 carry eos_token_id == 2; for them
# transformers pools at argmax(input_ids) (the EOS id is the largest in CLIP's vocabulary).
LEGACY_EOS_TOKEN_ID = 2

_ACTIVATIONS = ('quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh')

Array = Any


# --------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Sizes of a CLIP model. Defaults are OpenAI's ViT-B/16."""

  # Vision tower.
  image_size: int = 224
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 3072
  # Text tower.
  vocab_size: int = 49408
  context_length: int = 77
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 2048
  eos_token_id: int = 49407
  bos_token_id: int = 49406
  pad_token_id: int = 1  # metadata only (transformers' default); pooling uses eos_token_id
  # Shared.
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5
  logit_scale_init: float = 2.6592  # log(1 / 0.07)
  hidden_act: str = 'quick_gelu'

  def __post_init__(self):
    for name in ('vision', 'text'):
      width, heads = getattr(self, f'{name}_width'), getattr(self, f'{name}_heads')
      if heads <= 0 or width % heads:
        raise ValueError(
          f'ClipSpec: {name}_width={width} is not divisible by {name}_heads={heads}.'
        )
    if self.image_size < self.patch_size:
      raise ValueError(
        f'ClipSpec: image_size={self.image_size} is smaller than patch_size={self.patch_size}.'
      )
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'ClipSpec: hidden_act={self.hidden_act!r} is not one of {_ACTIVATIONS}.')
    if not 0 <= self.eos_token_id < self.vocab_size:
      raise ValueError(
        f'ClipSpec: eos_token_id={self.eos_token_id} is outside the '
        f'vocabulary [0, {self.vocab_size}).'
      )

  @property
  def grid_size(self) -> int:
    """Patches per side at `image_size`."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size**2

  # Sizes from other projects' files: see `uniemox_jax.weights.clip`.

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any]) -> ClipSpec:
    """Reads a Hugging Face `CLIPConfig` dict (the contents of its config.json)."""
    from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

    return clip_weights.spec_from_hf_config(config)

  def to_hf_config(self) -> dict[str, Any]:
    """The Hugging Face `CLIPConfig` dict (config.json contents) for this spec."""
    from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

    return clip_weights.spec_to_hf_config(self)

  @classmethod
  def from_openai_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> ClipSpec:
    """Infers the spec from the shapes of an OpenAI CLIP (ViT) state dict, as OpenAI does."""
    from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

    return clip_weights.spec_from_openai_shapes(shapes)


# --------------------------------------------------------------------------------------------
# Modules.


def _activation(name: str) -> Callable[[Array], Array]:
  if name == 'quick_gelu':
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == 'gelu':
    return functools.partial(jax.nn.gelu, approximate=False)
  return functools.partial(jax.nn.gelu, approximate=True)  # gelu_new / gelu_pytorch_tanh


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with statistics in float32; returns `dtype`."""

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with separate q/k/v/out projections (with bias).

  Softmax runs in float32 whatever `dtype` is.
  """

  width: int
  heads: int
  num_layers: int  # of the tower; only sets the init scale
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, causal: bool = False) -> Array:
    """x: [B, L, W] -> [B, L, W]; `causal`: each token attends to itself and earlier ones."""
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    in_std = self.width**-0.5 * (2 * self.num_layers) ** -0.5
    dense = functools.partial(nn.Dense, self.width, dtype=self.dtype, param_dtype=jnp.float32)
    split = lambda y: y.reshape(batch, length, self.heads, head_dim)
    q = split(dense(kernel_init=nn.initializers.normal(in_std), name='query')(x))
    k = split(dense(kernel_init=nn.initializers.normal(in_std), name='key')(x))
    v = split(dense(kernel_init=nn.initializers.normal(in_std), name='value')(x))
    out = vit.attention(q, k, v, causal=causal).reshape(batch, length, self.width)
    return dense(kernel_init=nn.initializers.normal(self.width**-0.5), name='out')(out)


class Mlp(nn.Module):
  width: int
  mlp_dim: int
  num_layers: int
  hidden_act: str = 'quick_gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., W] -> [..., W]."""
    dense = lambda features, std, name: nn.Dense(
      features, dtype=self.dtype, param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(std), name=name)
    x = dense(self.mlp_dim, (2 * self.width) ** -0.5, 'fc1')(x)
    x = _activation(self.hidden_act)(x)
    return dense(self.width, self.width**-0.5 * (2 * self.num_layers) ** -0.5, 'fc2')(x)


class Block(nn.Module):
  """Pre-LN transformer block."""

  width: int
  heads: int
  mlp_dim: int
  num_layers: int
  eps: float
  hidden_act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, causal: bool = False) -> Array:
    """x: [B, L, W] -> [B, L, W]."""
    y = LayerNorm(self.eps, self.dtype, name='ln_1')(x)
    x = x + SelfAttention(self.width, self.heads, self.num_layers, self.dtype, name='attn')(
      y, causal
    )
    y = LayerNorm(self.eps, self.dtype, name='ln_2')(x)
    return x + Mlp(
      self.width, self.mlp_dim, self.num_layers, self.hidden_act, self.dtype, name='mlp'
    )(y)


def resize_pos_embedding(pos: Array, old_grid: int, new_grid: tuple[int, int]) -> Array:
  """Bicubic resize of ViT position embeddings, class row kept.

  Args:
    pos: [1 + old_grid**2, W].
    old_grid: patches per side that `pos` was trained for.
    new_grid: (rows, cols) of patches wanted.
  Returns:
    [1 + rows * cols, W], in float32.
  """
  width = pos.shape[-1]
  patch_pos = pos[1:].astype(jnp.float32).reshape(old_grid, old_grid, width)
  mh = jnp.asarray(vit.bicubic_matrix(old_grid, new_grid[0]), jnp.float32)
  mw = jnp.asarray(vit.bicubic_matrix(old_grid, new_grid[1]), jnp.float32)
  patch_pos = jnp.einsum('Hh,hwc,Ww->HWc', mh, patch_pos, mw, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([pos[:1].astype(jnp.float32), patch_pos.reshape(-1, width)], axis=0)


class _Tower(nn.Module):
  """What both towers share: the sizes, the compute dtype and the stack of blocks."""

  spec: ClipSpec
  dtype: Any = jnp.float32

  def blocks(self, x: Array, tower: str, causal: bool = False) -> Array:
    """`x` through the `{tower}_layers` pre-LN blocks `block_i` of `tower`'s sizes."""
    s = self.spec
    width, heads, mlp_dim, layers = (getattr(s, f'{tower}_{k}')
                                     for k in ('width', 'heads', 'mlp_dim', 'layers'))
    for i in range(layers):
      x = Block(width, heads, mlp_dim, layers, s.layer_norm_eps, s.hidden_act, self.dtype,
                name=f'block_{i}')(x, causal)
    return x


class VisionTower(_Tower):
  """CLIP ViT: patch conv (no bias), class token, learned positions, pre-LN, blocks,
  post-LN on the class token, projection (no bias)."""

  resize_pos_embed: bool = True

  @nn.compact
  def __call__(self, pixels: Array) -> tuple[Array, dict[str, Array]]:
    """pixels: [B, H, W, 3] CLIP-normalised. -> ([B, E], aux{'encoded' [B, 1+N, W],
    'pooled' [B, W]})."""
    s = self.spec
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f'encode_image expects pixels [B, H, W, 3]; got shape {pixels.shape}.')
    batch, height, width_px, _ = pixels.shape
    p = s.patch_size
    x = nn.Conv(
      s.vision_width,
      (p, p),
      strides=(p, p),
      padding='VALID',
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(0.02),
      name='patch_embed',
    )(pixels.astype(self.dtype))
    grid = (x.shape[1], x.shape[2])
    x = x.reshape(batch, grid[0] * grid[1], s.vision_width)
    cls = self.param(
      'class_embedding',
      nn.initializers.normal(s.vision_width**-0.5),
      (s.vision_width,),
      jnp.float32,
    )
    pos = self.param(
      'pos_embedding',
      nn.initializers.normal(0.01),
      (s.num_patches + 1, s.vision_width),
      jnp.float32,
    )
    if (height, width_px) != (s.image_size, s.image_size):
      if not self.resize_pos_embed:
        raise ValueError(
          f'encode_image got {height}x{width_px} images but this CLIP was built for '
          f'{s.image_size}x{s.image_size}; resize the images or build CLIP with '
          'resize_pos_embed=True to interpolate its position embeddings.'
        )
      if grid != (s.grid_size, s.grid_size):
        logging.info(
          'CLIP: interpolating position embeddings from %dx%d to %dx%d patches for %dx%d images.',
          s.grid_size,
          s.grid_size,
          *grid,
          height,
          width_px,
        )
        pos = resize_pos_embedding(pos, s.grid_size, grid)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, s.vision_width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
    x = LayerNorm(s.layer_norm_eps, self.dtype, name='ln_pre')(x)
    x = self.blocks(x, 'vision')
    pooled = LayerNorm(s.layer_norm_eps, self.dtype, name='ln_post')(x[:, 0])
    features = _projection(s.projection_dim, s.vision_width, self.dtype)(pooled)
    return features, {'encoded': x, 'pooled': pooled}


def _projection(dim: int, width: int, dtype) -> nn.Dense:
  """A tower's bias-free output projection `width → dim` (CLIP's init: normal(width^-0.5))."""
  return nn.Dense(dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(width**-0.5), name='projection')


class TextTower(_Tower):
  """CLIP text transformer: token + position embeddings, causal blocks, final LN, pooled at
  the first `eos_token_id` of each row (argmax of the ids for legacy eos id 2), projection."""

  @nn.compact
  def __call__(self, input_ids: Array) -> tuple[Array, dict[str, Array]]:
    """input_ids: int [B, T], T <= context_length. -> ([B, E], aux{'encoded' [B, T, W],
    'pooled' [B, W], 'eos_index' [B]}).

    A row without the EOS id pools at position 0, as transformers does.
    """
    s = self.spec
    if input_ids.ndim != 2:
      raise ValueError(f'encode_text expects input_ids [B, T]; got shape {input_ids.shape}.')
    batch, length = input_ids.shape
    if length > s.context_length:
      raise ValueError(
        f'encode_text got sequences of {length} tokens; this CLIP takes at '
        f'most context_length={s.context_length}.'
      )
    tokens = nn.Embed(
      s.vocab_size,
      s.text_width,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=nn.initializers.normal(0.02),
      name='token_embedding',
    )(input_ids)
    pos = self.param(
      'pos_embedding', nn.initializers.normal(0.01), (s.context_length, s.text_width), jnp.float32
    )
    x = tokens + pos[:length].astype(self.dtype)
    x = self.blocks(x, 'text', causal=True)
    x = LayerNorm(s.layer_norm_eps, self.dtype, name='ln_final')(x)
    if s.eos_token_id == LEGACY_EOS_TOKEN_ID:
      eos_index = jnp.argmax(input_ids, axis=-1)
    else:
      eos_index = jnp.argmax(input_ids == s.eos_token_id, axis=-1)
    pooled = x[jnp.arange(batch), eos_index]
    features = _projection(s.projection_dim, s.text_width, self.dtype)(pooled)
    return features, {'encoded': x, 'pooled': pooled, 'eos_index': eos_index}


class CLIP(nn.Module):
  """Both CLIP towers and the logit scale.

  Attributes:
    spec: the sizes.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32, softmax and
      LayerNorm statistics run in float32, outputs are float32.
    frozen: outputs go through `stop_gradient`, so no gradient reaches the teacher.
    resize_pos_embed: accept images of another size by bicubic interpolation of the position
      embeddings (as transformers' `interpolate_pos_encoding`); when False such images raise.
  """

  spec: ClipSpec
  dtype: Any = jnp.float32
  frozen: bool = True
  resize_pos_embed: bool = True

  def setup(self):
    self.vision = VisionTower(self.spec, self.dtype, self.resize_pos_embed)
    self.text = TextTower(self.spec, self.dtype)
    self.logit_scale = self.param(
      'logit_scale', nn.initializers.constant(self.spec.logit_scale_init), (), jnp.float32
    )

  def _finish(self, features, aux, return_aux):
    features = features.astype(jnp.float32)
    if self.frozen:
      features, aux = jax.lax.stop_gradient((features, aux))
    return (features, aux) if return_aux else features

  def encode_image(self, pixels: Array, return_aux: bool = False):
    """pixels: [B, H, W, 3] float, CLIP-normalised (`CLIP_MEAN`/`CLIP_STD`).

    Returns the projected image features [B, E] (not normalised), or
    `(features, aux)` with aux {'encoded' [B, 1+N, W], 'pooled' [B, W]} if `return_aux`.
    """
    features, aux = self.vision(pixels)
    return self._finish(features, aux, return_aux)

  def encode_text(self, input_ids: Array, return_aux: bool = False):
    """input_ids: int [B, T] (BOS ... EOS, padded), T <= context_length.

    Returns the projected text features [B, E] (not normalised), or `(features, aux)` with
    aux {'encoded' [B, T, W], 'pooled' [B, W], 'eos_index' [B]} if `return_aux`.
    """
    features, aux = self.text(input_ids)
    return self._finish(features, aux, return_aux)

  def __call__(self, pixels: Array, input_ids: Array):
    """-> ((image features [B, E], text features [B', E]), {'logit_scale': []})."""
    image = self.encode_image(pixels)
    text = self.encode_text(input_ids)
    logit_scale = self.logit_scale
    if self.frozen:
      logit_scale = jax.lax.stop_gradient(logit_scale)
    return (image, text), {'logit_scale': logit_scale}


def _dummy_inputs(spec: ClipSpec):
  return (
    jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32),
    jnp.zeros((1, spec.context_length), jnp.int32),
  )


def init_params(spec: ClipSpec, seed: int = 0) -> dict[str, Any]:
  """Random CLIP parameters (CLIP-like init scales), float32."""
  model = CLIP(spec)
  variables = jax.jit(model.init)(jax.random.key(seed), *_dummy_inputs(spec))
  return variables['params']


# --------------------------------------------------------------------------------------------
# Weights: loaders live in `uniemox_jax.weights.clip`; these names delegate there.


def load_clip(path, dtype: Any = jnp.float32, *, frozen: bool = True,
              spec: ClipSpec | None = None) -> tuple[CLIP, dict[str, Any]]:
  """See `uniemox_jax.weights.clip.load_clip`."""
  from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

  return clip_weights.load_clip(path, dtype, frozen=frozen, spec=spec)


def save_pretrained(spec: ClipSpec, params: Mapping[str, Any], out_dir):
  """See `uniemox_jax.weights.clip.save_pretrained`."""
  from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

  return clip_weights.save_pretrained(spec, params, out_dir)


def weights_fingerprint(path) -> str:
  """See `uniemox_jax.weights.clip.weights_fingerprint`."""
  from uniemox_jax.weights import clip as clip_weights  # pylint: disable=g-import-not-at-top

  return clip_weights.weights_fingerprint(path)
