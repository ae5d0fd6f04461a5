"""CLIP (ViT image tower + causal text tower) in flax.linen, and its weight loaders.

The frozen teacher of UniEmoX (SPEC §1): `encode_image` gives Ω, `encode_text` gives Λ.

    clip_model, clip_params = load_clip(path)   # HF CLIP directory or OpenAI .pt file
    img = clip_model.apply({'params': clip_params}, pixels, method='encode_image')    # [B, E]
    txt = clip_model.apply({'params': clip_params}, input_ids, method='encode_text')  # [B, E]

Pixels are `[B, H, W, 3]` floats already normalised with `CLIP_MEAN` / `CLIP_STD`; outputs are the
projected features, not L2-normalised, always float32.

Weights come from a Hugging Face `CLIPModel` directory (`config.json` + `model.safetensors`,
sharded safetensors, or `pytorch_model.bin`) or an OpenAI CLIP checkpoint (TorchScript archive
or plain state dict; also open_clip's `{'state_dict': ...}`), whose sizes are inferred from the
weight shapes. Every weight in a file must land on a parameter and every parameter must be
filled: conversion never drops keys silently (SPEC §8.9). `save_pretrained` writes the HF layout
back (numpy + safetensors, no torch), which is how tests and the demo make tiny random teachers.

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
import hashlib
import json
import math
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax.models import vit

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

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Hugging Face configs written before transformers PR #24773 carry eos_token_id == 2; for them
# transformers pools at argmax(input_ids) (the EOS id is the largest in CLIP's vocabulary).
LEGACY_EOS_TOKEN_ID = 2

# Entries of a state dict that are not weights.
_IGNORED_KEY_SUFFIXES = (
  'position_ids',
  'input_resolution',
  'context_length',
  'vocab_size',
  'attn_mask',
)

_ACTIVATIONS = ('quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh')

Array = Any
PathLike = str | os.PathLike


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

  # -- Hugging Face CLIPConfig ---------------------------------------------------------------

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any]) -> ClipSpec:
    """Reads a Hugging Face `CLIPConfig` dict (the contents of its config.json).

    Fields that are absent take transformers' defaults, as `CLIPConfig` would.
    """
    config = dict(config)
    if config.get('model_type', 'clip') != 'clip':
      raise ValueError(
        f"config.json has model_type={config['model_type']!r}; expected "
        "'clip' (a CLIPModel with both towers)."
      )
    vision = dict(config.get('vision_config') or {})
    vision.update(config.get('vision_config_dict') or {})
    text = dict(config.get('text_config') or {})
    text.update(config.get('text_config_dict') or {})

    def square(name, value):
      if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
          raise ValueError(
            f'vision_config.{name}={value} is not square; only '
            'square images and patches are supported.'
          )
        value = value[0]
      return int(value)

    eos = text.get('eos_token_id', 49407)
    if isinstance(eos, (list, tuple)):
      if len(eos) != 1:
        raise ValueError(f'text_config.eos_token_id={eos}: expected a single id.')
      eos = eos[0]
    v_eps = float(vision.get('layer_norm_eps', 1e-5))
    t_eps = float(text.get('layer_norm_eps', 1e-5))
    if v_eps != t_eps:
      raise ValueError(
        f'vision_config.layer_norm_eps={v_eps} differs from '
        f'text_config.layer_norm_eps={t_eps}; ClipSpec has one eps.'
      )
    v_act = vision.get('hidden_act', 'quick_gelu')
    t_act = text.get('hidden_act', 'quick_gelu')
    if v_act != t_act:
      raise ValueError(
        f'vision_config.hidden_act={v_act!r} differs from '
        f'text_config.hidden_act={t_act!r}; ClipSpec has one activation.'
      )
    if int(vision.get('num_channels', 3)) != 3:
      raise ValueError(f"vision_config.num_channels={vision['num_channels']}; expected 3.")
    return cls(
      image_size=square('image_size', vision.get('image_size', 224)),
      patch_size=square('patch_size', vision.get('patch_size', 32)),
      vision_width=int(vision.get('hidden_size', 768)),
      vision_layers=int(vision.get('num_hidden_layers', 12)),
      vision_heads=int(vision.get('num_attention_heads', 12)),
      vision_mlp_dim=int(vision.get('intermediate_size', 3072)),
      vocab_size=int(text.get('vocab_size', 49408)),
      context_length=int(text.get('max_position_embeddings', 77)),
      text_width=int(text.get('hidden_size', 512)),
      text_layers=int(text.get('num_hidden_layers', 12)),
      text_heads=int(text.get('num_attention_heads', 8)),
      text_mlp_dim=int(text.get('intermediate_size', 2048)),
      eos_token_id=int(eos),
      bos_token_id=int(text['bos_token_id'] if text.get('bos_token_id') is not None else 49406),
      pad_token_id=int(text['pad_token_id'] if text.get('pad_token_id') is not None else 1),
      projection_dim=int(config.get('projection_dim', 512)),
      layer_norm_eps=v_eps,
      logit_scale_init=float(config.get('logit_scale_init_value', 2.6592)),
      hidden_act=str(v_act),
    )

  def to_hf_config(self) -> dict[str, Any]:
    """The Hugging Face `CLIPConfig` dict (config.json contents) for this spec."""
    common = dict(
      hidden_act=self.hidden_act,
      layer_norm_eps=self.layer_norm_eps,
      attention_dropout=0.0,
      initializer_range=0.02,
      initializer_factor=1.0,
      projection_dim=self.projection_dim,
    )
    return {
      'architectures': ['CLIPModel'],
      'model_type': 'clip',
      'projection_dim': self.projection_dim,
      'logit_scale_init_value': self.logit_scale_init,
      'initializer_factor': 1.0,
      'text_config': dict(
        model_type='clip_text_model',
        vocab_size=self.vocab_size,
        hidden_size=self.text_width,
        intermediate_size=self.text_mlp_dim,
        num_hidden_layers=self.text_layers,
        num_attention_heads=self.text_heads,
        max_position_embeddings=self.context_length,
        bos_token_id=self.bos_token_id,
        eos_token_id=self.eos_token_id,
        pad_token_id=self.pad_token_id,
        **common,
      ),
      'vision_config': dict(
        model_type='clip_vision_model',
        hidden_size=self.vision_width,
        intermediate_size=self.vision_mlp_dim,
        num_hidden_layers=self.vision_layers,
        num_attention_heads=self.vision_heads,
        num_channels=3,
        image_size=self.image_size,
        patch_size=self.patch_size,
        **common,
      ),
    }

  # -- OpenAI state dicts --------------------------------------------------------------------

  @classmethod
  def from_openai_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> ClipSpec:
    """Infers the spec from the shapes of an OpenAI CLIP (ViT) state dict, as OpenAI does.

    Args:
      shapes: key -> shape, e.g. `{k: v.shape for k, v in state_dict.items()}`.
    """
    if 'visual.layer1.0.conv1.weight' in shapes or 'visual.attnpool.c_proj.weight' in shapes:
      raise ValueError(
        'This is an OpenAI CLIP ResNet checkpoint; only ViT CLIP models are supported.'
      )

    def need(key):
      if key not in shapes:
        raise ValueError(
          f'Cannot infer the CLIP sizes: key {key!r} is missing from the OpenAI-layout checkpoint.'
        )
      return tuple(int(s) for s in shapes[key])

    def count_layers(prefix):
      pat = re.compile(re.escape(prefix) + r'(\d+)\.')
      ids = {int(m.group(1)) for k in shapes for m in [pat.match(k)] if m}
      if not ids:
        raise ValueError(f'Cannot infer the CLIP sizes: no {prefix}N.* keys.')
      return max(ids) + 1

    embed_dim = need('text_projection')[1]
    conv = need('visual.conv1.weight')  # [W, 3, p, p]
    vision_width, patch = conv[0], conv[-1]
    n_pos = need('visual.positional_embedding')[0]
    grid = round(math.sqrt(n_pos - 1))
    if grid * grid + 1 != n_pos:
      raise ValueError(f'visual.positional_embedding has {n_pos} rows, which is not grid**2 + 1.')
    vocab, text_width = need('token_embedding.weight')
    context_length = need('positional_embedding')[0]
    return cls(
      image_size=patch * grid,
      patch_size=patch,
      vision_width=vision_width,
      vision_layers=count_layers('visual.transformer.resblocks.'),
      vision_heads=max(vision_width // 64, 1),
      vision_mlp_dim=need('visual.transformer.resblocks.0.mlp.c_fc.weight')[0],
      vocab_size=vocab,
      context_length=context_length,
      text_width=text_width,
      text_layers=count_layers('transformer.resblocks.'),
      text_heads=max(text_width // 64, 1),
      text_mlp_dim=need('transformer.resblocks.0.mlp.c_fc.weight')[0],
      eos_token_id=vocab - 1,
      bos_token_id=vocab - 2,
      projection_dim=embed_dim,
    )


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
    fc1_std = (2 * self.width) ** -0.5
    fc2_std = self.width**-0.5 * (2 * self.num_layers) ** -0.5
    x = nn.Dense(
      self.mlp_dim,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(fc1_std),
      name='fc1',
    )(x)
    x = _activation(self.hidden_act)(x)
    return nn.Dense(
      self.width,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(fc2_std),
      name='fc2',
    )(x)


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


class VisionTower(nn.Module):
  """CLIP ViT: patch conv (no bias), class token, learned positions, pre-LN, blocks,
  post-LN on the class token, projection (no bias)."""

  spec: ClipSpec
  dtype: Any = jnp.float32
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
    for i in range(s.vision_layers):
      x = Block(
        s.vision_width,
        s.vision_heads,
        s.vision_mlp_dim,
        s.vision_layers,
        s.layer_norm_eps,
        s.hidden_act,
        self.dtype,
        name=f'block_{i}',
      )(x)
    pooled = LayerNorm(s.layer_norm_eps, self.dtype, name='ln_post')(x[:, 0])
    features = _projection(s.projection_dim, s.vision_width, self.dtype)(pooled)
    return features, {'encoded': x, 'pooled': pooled}


def _projection(dim: int, width: int, dtype) -> nn.Dense:
  """A tower's bias-free output projection `width → dim` (CLIP's init: normal(width^-0.5))."""
  return nn.Dense(dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(width**-0.5), name='projection')


class TextTower(nn.Module):
  """CLIP text transformer: token + position embeddings, causal blocks, final LN, pooled at
  the first `eos_token_id` of each row (argmax of the ids for legacy eos id 2), projection."""

  spec: ClipSpec
  dtype: Any = jnp.float32

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
    for i in range(s.text_layers):
      x = Block(
        s.text_width,
        s.text_heads,
        s.text_mlp_dim,
        s.text_layers,
        s.layer_norm_eps,
        s.hidden_act,
        self.dtype,
        name=f'block_{i}',
      )(x, causal=True)
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


def _param_shapes(spec: ClipSpec) -> dict[tuple[str, ...], tuple[int, ...]]:
  shapes = jax.eval_shape(CLIP(spec).init, jax.random.key(0), *_dummy_inputs(spec))
  flat = traverse_util.flatten_dict(shapes['params'])
  return {k: tuple(v.shape) for k, v in flat.items()}


# --------------------------------------------------------------------------------------------
# Hugging Face <-> our parameter names.

# How a checkpoint array becomes ours: 'linear' [out, in] -> [in, out]; 'conv' [O, I, kh, kw]
# -> [kh, kw, I, O]; 'raw' unchanged.
_TO_OURS = {
  'raw': lambda a: a,
  'linear': lambda a: a.T,
  'conv': lambda a: a.transpose(2, 3, 1, 0),
}
_FROM_OURS = {
  'raw': lambda a: a,
  'linear': lambda a: a.T,
  'conv': lambda a: a.transpose(3, 2, 0, 1),
}


def _hf_table(spec: ClipSpec) -> list[tuple[tuple[str, ...], str, str]]:
  """(our param path, HF key, transform) for every parameter."""
  table = []

  def ln(ours, hf):
    table.append((ours + ('scale',), hf + '.weight', 'raw'))
    table.append((ours + ('bias',), hf + '.bias', 'raw'))

  def linear(ours, hf, bias=True):
    table.append((ours + ('kernel',), hf + '.weight', 'linear'))
    if bias:
      table.append((ours + ('bias',), hf + '.bias', 'raw'))

  def blocks(tower, hf_tower, n):
    for i in range(n):
      ours, hf = (tower, f'block_{i}'), f'{hf_tower}.encoder.layers.{i}'
      ln(ours + ('ln_1',), hf + '.layer_norm1')
      ln(ours + ('ln_2',), hf + '.layer_norm2')
      for name, hf_name in (
        ('query', 'q_proj'),
        ('key', 'k_proj'),
        ('value', 'v_proj'),
        ('out', 'out_proj'),
      ):
        linear(ours + ('attn', name), f'{hf}.self_attn.{hf_name}')
      linear(ours + ('mlp', 'fc1'), hf + '.mlp.fc1')
      linear(ours + ('mlp', 'fc2'), hf + '.mlp.fc2')

  table.append(
    (('vision', 'patch_embed', 'kernel'), 'vision_model.embeddings.patch_embedding.weight', 'conv')
  )
  table.append((('vision', 'class_embedding'), 'vision_model.embeddings.class_embedding', 'raw'))
  table.append(
    (('vision', 'pos_embedding'), 'vision_model.embeddings.position_embedding.weight', 'raw')
  )
  ln(('vision', 'ln_pre'), 'vision_model.pre_layrnorm')  # sic: transformers' spelling
  blocks('vision', 'vision_model', spec.vision_layers)
  ln(('vision', 'ln_post'), 'vision_model.post_layernorm')
  linear(('vision', 'projection'), 'visual_projection', bias=False)

  table.append(
    (
      ('text', 'token_embedding', 'embedding'),
      'text_model.embeddings.token_embedding.weight',
      'raw',
    )
  )
  table.append(
    (('text', 'pos_embedding'), 'text_model.embeddings.position_embedding.weight', 'raw')
  )
  blocks('text', 'text_model', spec.text_layers)
  ln(('text', 'ln_final'), 'text_model.final_layer_norm')
  linear(('text', 'projection'), 'text_projection', bias=False)
  table.append((('logit_scale',), 'logit_scale', 'raw'))
  return table


@dataclasses.dataclass
class _Source:
  """Where an HF-layout array came from, for error messages."""

  key: str  # key in the file
  shape: tuple[int, ...]  # its shape in the file
  expected: Callable[[tuple[int, ...]], tuple[int, ...]]  # HF-layout shape -> file shape


_SAME = lambda shape: shape

_OPENAI_BLOCK = {
  'ln_1.weight': 'layer_norm1.weight',
  'ln_1.bias': 'layer_norm1.bias',
  'ln_2.weight': 'layer_norm2.weight',
  'ln_2.bias': 'layer_norm2.bias',
  'attn.out_proj.weight': 'self_attn.out_proj.weight',
  'attn.out_proj.bias': 'self_attn.out_proj.bias',
  'mlp.c_fc.weight': 'mlp.fc1.weight',
  'mlp.c_fc.bias': 'mlp.fc1.bias',
  'mlp.c_proj.weight': 'mlp.fc2.weight',
  'mlp.c_proj.bias': 'mlp.fc2.bias',
}
# OpenAI key -> (HF key, transposed?)
_OPENAI_SIMPLE = {
  'visual.conv1.weight': ('vision_model.embeddings.patch_embedding.weight', False),
  'visual.class_embedding': ('vision_model.embeddings.class_embedding', False),
  'visual.positional_embedding': ('vision_model.embeddings.position_embedding.weight', False),
  'visual.ln_pre.weight': ('vision_model.pre_layrnorm.weight', False),
  'visual.ln_pre.bias': ('vision_model.pre_layrnorm.bias', False),
  'visual.ln_post.weight': ('vision_model.post_layernorm.weight', False),
  'visual.ln_post.bias': ('vision_model.post_layernorm.bias', False),
  'visual.proj': ('visual_projection.weight', True),
  'token_embedding.weight': ('text_model.embeddings.token_embedding.weight', False),
  'positional_embedding': ('text_model.embeddings.position_embedding.weight', False),
  'ln_final.weight': ('text_model.final_layer_norm.weight', False),
  'ln_final.bias': ('text_model.final_layer_norm.bias', False),
  'text_projection': ('text_projection.weight', True),
  'logit_scale': ('logit_scale', False),
}
_RESBLOCK = re.compile(r'(visual\.)?transformer\.resblocks\.(\d+)\.(.+)')


def _openai_to_hf(state: Mapping[str, np.ndarray]):
  """Renames an OpenAI-layout state dict to the HF layout (fused in_proj split into q/k/v).

  Returns (hf_state, sources: hf key -> _Source, unexpected keys).
  """
  out, sources, unexpected = {}, {}, []

  def put(hf_key, value, src_key, expected):
    out[hf_key] = value
    sources[hf_key] = _Source(src_key, tuple(state[src_key].shape), expected)

  for key, value in state.items():
    m = _RESBLOCK.fullmatch(key)
    if m:
      prefix = f"{'vision' if m.group(1) else 'text'}_model.encoder.layers.{m.group(2)}."
      rest = m.group(3)
      if rest in ('attn.in_proj_weight', 'attn.in_proj_bias'):
        kind = rest.rsplit('_', 1)[1]
        fused = lambda shape: (3 * shape[0],) + tuple(shape[1:])
        if value.shape[0] % 3:
          # Cannot split: report it against the q part's expected shape.
          put(f'{prefix}self_attn.q_proj.{kind}', value, key, fused)
          continue
        for name, part in zip('qkv', np.split(value, 3, axis=0)):
          put(f'{prefix}self_attn.{name}_proj.{kind}', part, key, fused)
      elif rest in _OPENAI_BLOCK:
        put(prefix + _OPENAI_BLOCK[rest], value, key, _SAME)
      else:
        unexpected.append(key)
    elif key in _OPENAI_SIMPLE:
      hf_key, transposed = _OPENAI_SIMPLE[key]
      if transposed:
        put(hf_key, value.T, key, lambda shape: tuple(reversed(shape)))
      else:
        put(hf_key, value, key, _SAME)
    else:
      unexpected.append(key)
  return out, sources, unexpected


_HF_BLOCK = re.compile(r'(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)')
_OPENAI_NAME_OF_HF = {hf: oa for oa, (hf, _) in _OPENAI_SIMPLE.items()}
_OPENAI_NAME_OF_HF_BLOCK = {hf: oa for oa, hf in _OPENAI_BLOCK.items()}


def _openai_name(hf_key: str) -> str:
  """The OpenAI-layout key that holds (part of) an HF-layout key, for error messages."""
  if hf_key in _OPENAI_NAME_OF_HF:
    return _OPENAI_NAME_OF_HF[hf_key]
  m = _HF_BLOCK.fullmatch(hf_key)
  if not m:
    return hf_key
  prefix = f"{'visual.' if m.group(1) == 'vision' else ''}transformer.resblocks.{m.group(2)}."
  rest = m.group(3)
  qkv = re.fullmatch(r'self_attn\.[qkv]_proj\.(weight|bias)', rest)
  if qkv:
    return f'{prefix}attn.in_proj_{qkv.group(1)}'
  return prefix + _OPENAI_NAME_OF_HF_BLOCK.get(rest, rest)


def _is_ignored(key: str) -> bool:
  return key.rsplit('.', 1)[-1] in _IGNORED_KEY_SUFFIXES


def _hf_to_params(
  spec: ClipSpec,
  hf_state: Mapping[str, np.ndarray],
  sources: Mapping[str, _Source] | None = None,
  unexpected: list[str] | None = None,
  name_of: Callable[[str], str] = lambda key: key,
) -> dict[str, Any]:
  """Maps an HF-layout state dict onto our parameter tree; raises on any unmapped key.

  `sources` / `name_of` give the file's own key names for error messages when the state dict
  was renamed from another layout.
  """
  sources = dict(sources or {})
  unexpected = list(unexpected or [])
  expected_shapes = _param_shapes(spec)
  table = _hf_table(spec)
  assert {t[0] for t in table} == set(expected_shapes), 'HF table does not cover the params'
  flat, missing, mismatched = {}, [], []
  used = set()
  for ours, hf_key, kind in table:
    if hf_key not in hf_state:
      missing.append(name_of(hf_key))
      continue
    used.add(hf_key)
    value = _TO_OURS[kind](np.asarray(hf_state[hf_key]))
    want = expected_shapes[ours]
    if tuple(value.shape) != want:
      want_hf = tuple(_FROM_OURS[kind](np.empty(want, np.bool_)).shape)
      src = sources.get(hf_key, _Source(hf_key, tuple(hf_state[hf_key].shape), _SAME))
      mismatched.append(
        f'{src.key}: checkpoint shape {src.shape}, expected '
        f"{src.expected(want_hf)} (parameter {'/'.join(ours)})"
      )
      continue
    flat[ours] = np.asarray(value, dtype=np.float32)
  for key in hf_state:
    if key not in used and not _is_ignored(key):
      unexpected.append(sources[key].key if key in sources else key)
  problems = []
  if mismatched:
    problems.append('shape mismatches:\n  ' + '\n  '.join(dict.fromkeys(mismatched)))
  if unexpected:
    problems.append(
      'unexpected keys (no CLIP parameter takes them): ' + ', '.join(sorted(set(unexpected)))
    )
  if missing:
    problems.append(
      'missing keys (parameters with no weight in the checkpoint): '
      + ', '.join(dict.fromkeys(missing))
    )
  if problems:
    raise ValueError(
      f'CLIP checkpoint does not match the model ({_describe(spec)}):\n' + '\n'.join(problems)
    )
  return traverse_util.unflatten_dict(flat)


def _params_to_hf(spec: ClipSpec, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(dict(params))
  table = _hf_table(spec)
  expected_shapes = _param_shapes(spec)
  missing = [ours for ours, _, _ in table if ours not in flat]
  extra = [k for k in flat if k not in expected_shapes]
  wrong = [
    f"{'/'.join(k)}: {tuple(np.shape(flat[k]))} != {v}"
    for k, v in expected_shapes.items()
    if k in flat and tuple(np.shape(flat[k])) != v
  ]
  if missing or extra or wrong:
    raise ValueError(
      'params do not match the spec: missing '
      f"{['/'.join(k) for k in missing]}, extra {['/'.join(k) for k in extra]}, "
      f'wrong shapes {wrong}.'
    )
  # np.array(order='C'), not np.ascontiguousarray: the latter turns logit_scale [] into [1].
  return {
    hf_key: np.array(_FROM_OURS[kind](np.asarray(flat[ours], np.float32)), order='C')
    for ours, hf_key, kind in table
  }


def _describe(spec: ClipSpec) -> str:
  return (
    f'vision {spec.vision_width}w x {spec.vision_layers}L/{spec.vision_heads}h, patch '
    f'{spec.patch_size} @ {spec.image_size}px; text {spec.text_width}w x '
    f'{spec.text_layers}L/{spec.text_heads}h, context {spec.context_length}, vocab '
    f'{spec.vocab_size}, eos {spec.eos_token_id}; embed {spec.projection_dim}'
  )


# --------------------------------------------------------------------------------------------
# Reading files.

_HF_WEIGHT_FILES = (
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
)


def _to_numpy(value) -> np.ndarray:
  """A torch tensor / numpy array / number -> numpy; floats become float32."""
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch here
    import torch  # pylint: disable=g-import-not-at-top

    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.to(torch.float32)
    return value.numpy()
  arr = np.asarray(value)
  if arr.dtype.kind == 'f' or arr.dtype.name == 'bfloat16':
    arr = arr.astype(np.float32)
  return arr


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  return {k: _to_numpy(v) for k, v in load_file(str(path)).items()}


def _read_torch_pickle(path: pathlib.Path) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top

  return torch.load(str(path), map_location='cpu', weights_only=True)


def _read_openai_pt(path: pathlib.Path) -> tuple[dict[str, Any], str]:
  """TorchScript archive first (OpenAI's released files), then a plain state dict."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'Reading {path} needs PyTorch (it is a torch checkpoint); install '
      'torch or convert it to a Hugging Face directory with safetensors.'
    ) from e
  try:
    with warnings.catch_warnings():
      # OpenAI's released files are TorchScript archives; torch marks the reader
      # deprecated but it is the only way to open them.
      warnings.filterwarnings('ignore', message='.*torch.jit.load.*', category=DeprecationWarning)
      module = torch.jit.load(str(path), map_location='cpu')
    return dict(module.state_dict()), 'torchscript'
  except Exception as jit_error:  # pylint: disable=broad-except
    try:
      return _read_torch_pickle(path), 'torch state dict'
    except Exception as pickle_error:
      raise ValueError(
        f'Could not read {path} as a TorchScript archive ({jit_error}) nor '
        f'as a torch state dict ({pickle_error}).'
      ) from pickle_error


def _unwrap_state(obj: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']  # open_clip / training checkpoints
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict.')
  state = {}
  for key, value in obj.items():
    key = key[len('module.') :] if key.startswith('module.') else key
    state[key] = _to_numpy(value)
  return state


def _hf_weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  for name in _HF_WEIGHT_FILES:
    path = directory / name
    if path.is_file():
      if name.endswith('.index.json'):
        weight_map = json.loads(path.read_text())['weight_map']
        return [directory / f for f in sorted(set(weight_map.values()))]
      return [path]
  raise FileNotFoundError(
    f'{directory} has no CLIP weights: expected one of {", ".join(_HF_WEIGHT_FILES)} next '
    'to config.json (a Hugging Face CLIPModel directory).'
  )


def _read_weight_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  if path.suffix == '.safetensors':
    return _read_safetensors(path)
  return _unwrap_state(_read_torch_pickle(path), path)


def _is_hf_layout(state: Mapping[str, Any]) -> bool:
  return any(k.startswith(('vision_model.', 'text_model.')) for k in state)


def load_clip(
  path: PathLike, dtype: Any = jnp.float32, *, frozen: bool = True, spec: ClipSpec | None = None
) -> tuple[CLIP, dict[str, Any]]:
  """Loads CLIP weights into our module.

  Args:
    path: a Hugging Face CLIPModel directory (config.json + model.safetensors[.index.json] or
      pytorch_model.bin), or an OpenAI CLIP checkpoint file (.pt TorchScript archive or plain
      state dict; a .safetensors file in OpenAI layout also works).
    dtype: compute dtype of the returned module; parameters are always float32.
    frozen: see `CLIP.frozen`.
    spec: overrides the sizes read from config.json / inferred from shapes (e.g. an OpenAI
      checkpoint whose heads are not width // 64).
  Returns:
    (CLIP module, params): params is a nested dict of float32 numpy arrays on the host.
  Raises:
    FileNotFoundError: the path, or the files expected in it, do not exist.
    ValueError: any checkpoint key without a parameter, parameter without a key, or shape
      mismatch (all named), or an unreadable file.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(
      f'CLIP weights not found at {path}: expected a Hugging Face '
      'CLIPModel directory or an OpenAI CLIP .pt file.'
    )
  if path.is_dir():
    config_file = path / 'config.json'
    if not config_file.is_file():
      raise FileNotFoundError(
        f'{path} is a directory without config.json; expected a '
        'Hugging Face CLIPModel directory (config.json + '
        'model.safetensors or pytorch_model.bin).'
      )
    files = _hf_weight_files(path)
    state = {}
    for f in files:
      if not f.is_file():
        raise FileNotFoundError(f'{f} (listed in the shard index) does not exist.')
      state.update(_read_weight_file(f))
    source = f'HF {files[0].name}' + (f' (+{len(files) - 1} shards)' if len(files) > 1 else '')
    config = json.loads(config_file.read_text())
  else:
    if path.suffix == '.safetensors':
      state, source = _read_safetensors(path), 'safetensors'
    else:
      raw, source = _read_openai_pt(path)
      state = _unwrap_state(raw, path)
    config = None
    if _is_hf_layout(state):
      config_file = path.parent / 'config.json'
      if not config_file.is_file():
        raise FileNotFoundError(
          f'{path} holds Hugging Face-layout weights but there is '
          f'no config.json beside it ({config_file}).'
        )
      config = json.loads(config_file.read_text())

  if config is not None:
    spec = spec or ClipSpec.from_hf_config(config)
    params = _hf_to_params(spec, state)
    layout = 'HF'
  else:
    layout = 'OpenAI'
    if spec is None:
      spec = ClipSpec.from_openai_shapes(
        {k: tuple(v.shape) for k, v in state.items() if not _is_ignored(k)}
      )
    hf_state, sources, unexpected = _openai_to_hf(
      {k: v for k, v in state.items() if not _is_ignored(k)}
    )
    params = _hf_to_params(spec, hf_state, sources, unexpected, name_of=_openai_name)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  ignored = sorted(k for k in state if _is_ignored(k))
  logging.info(
    'Loaded CLIP from %s (%s layout, %s): %s; %.2fM params, %d tensors mapped%s.',
    path,
    layout,
    source,
    _describe(spec),
    n_params / 1e6,
    len(jax.tree.leaves(params)),
    f', ignored non-weights {ignored}' if ignored else '',
  )
  return CLIP(spec, dtype=dtype, frozen=frozen), params


def save_pretrained(spec: ClipSpec, params: Mapping[str, Any], out_dir: PathLike) -> pathlib.Path:
  """Writes a Hugging Face CLIPModel directory: config.json + model.safetensors.

  `transformers.CLIPModel.from_pretrained(out_dir)` and `load_clip(out_dir)` both read it.
  Returns the directory.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(out_dir)
  tensors = _params_to_hf(spec, params)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out_dir / 'model.safetensors'), metadata={'format': 'pt'})
  (out_dir / 'config.json').write_text(json.dumps(spec.to_hf_config(), indent=2) + '\n')
  return out_dir


def weights_fingerprint(path: PathLike, chunk_bytes: int = 1 << 24) -> str:
  """sha256 (hex) of the weights at `path`, to key caches of teacher outputs.

  For a directory: config.json and the weight file(s) that `load_clip` reads, each hashed with
  its name and size; for a file: its bytes. Streamed, so memory stays flat.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'No CLIP weights at {path}.')
  if path.is_dir():
    if not (path / 'config.json').is_file():
      raise FileNotFoundError(
        f'{path} has no config.json; expected a Hugging Face CLIPModel directory.'
      )
    files = [path / 'config.json'] + _hf_weight_files(path)
    index = [path / n for n in _HF_WEIGHT_FILES if n.endswith('.index.json')]
    files += [f for f in index if f.is_file()]
  else:
    files = [path]
  digest = hashlib.sha256()
  for f in files:
    if path.is_dir():
      digest.update(f'{f.name}\0{f.stat().st_size}\0'.encode())
    with open(f, 'rb') as fh:
      while chunk := fh.read(chunk_bytes):
        digest.update(chunk)
  return digest.hexdigest()
