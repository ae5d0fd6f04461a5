"""CLIP weights ↔ our Flax CLIP (`models/clip.py`): the key maps for Hugging Face `CLIPModel`
and OpenAI CLIP state dicts, the size specs read from a `config.json` or inferred from
weight shapes, `load_clip`, `save_pretrained` and the content fingerprint.

Weights come from a Hugging Face `CLIPModel` directory (`config.json` + `model.safetensors`,
sharded safetensors, or `pytorch_model.bin`) or an OpenAI CLIP checkpoint (TorchScript archive
or plain state dict; also open_clip's `{'state_dict': ...}`), whose sizes are inferred from the
weight shapes; `weights.files` reads them. Every weight in a file must land on a parameter and
every parameter must be filled: conversion never drops keys silently (docs/method.md §8 #9).
`save_pretrained` writes the HF layout back (numpy + safetensors, no torch), which is how
tests and the demo make tiny random teachers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax.models.clip import CLIP, ClipSpec, _dummy_inputs
from uniemox_jax.weights import files

PathLike = str | os.PathLike

# Entries of a state dict that are not weights.
_IGNORED_KEY_SUFFIXES = (
  'position_ids',
  'input_resolution',
  'context_length',
  'vocab_size',
  'attn_mask',
)


# --------------------------------------------------------------------------------------------
# Sizes: Hugging Face CLIPConfig and OpenAI state-dict shapes ↔ ClipSpec.

def spec_from_hf_config(config: Mapping[str, Any]) -> ClipSpec:
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
  return ClipSpec(
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

def spec_to_hf_config(spec: ClipSpec) -> dict[str, Any]:
  """The Hugging Face `CLIPConfig` dict (config.json contents) for this spec."""
  common = dict(
    hidden_act=spec.hidden_act,
    layer_norm_eps=spec.layer_norm_eps,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    projection_dim=spec.projection_dim,
  )

  def tower(name):
    return dict(common, hidden_size=getattr(spec, f'{name}_width'),
                intermediate_size=getattr(spec, f'{name}_mlp_dim'),
                num_hidden_layers=getattr(spec, f'{name}_layers'),
                num_attention_heads=getattr(spec, f'{name}_heads'))

  return {
    'architectures': ['CLIPModel'],
    'model_type': 'clip',
    'projection_dim': spec.projection_dim,
    'logit_scale_init_value': spec.logit_scale_init,
    'initializer_factor': 1.0,
    'text_config': dict(
      model_type='clip_text_model', **tower('text'), vocab_size=spec.vocab_size,
      max_position_embeddings=spec.context_length, bos_token_id=spec.bos_token_id,
      eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id),
    'vision_config': dict(
      model_type='clip_vision_model', **tower('vision'), num_channels=3,
      image_size=spec.image_size, patch_size=spec.patch_size),
  }


def spec_from_openai_shapes(shapes: Mapping[str, tuple[int, ...]]) -> ClipSpec:
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
  return ClipSpec(
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


def _is_hf_layout(state: Mapping[str, Any]) -> bool:
  return any(k.startswith(('vision_model.', 'text_model.')) for k in state)


def _hf_config_beside(path: pathlib.Path) -> dict:
  config_file = path.parent / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(
      f'{path} holds Hugging Face-layout weights but there is no config.json beside it '
      f'({config_file}).'
    )
  return json.loads(config_file.read_text())


def _require_clip_dir(path: pathlib.Path) -> None:
  if path.is_dir() and not (path / 'config.json').is_file():
    raise FileNotFoundError(
      f'{path} is a directory without config.json; expected a Hugging Face CLIPModel '
      'directory (config.json + model.safetensors or pytorch_model.bin) or an OpenAI CLIP '
      '.pt file.'
    )


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
  _require_clip_dir(path)
  raw = files.read(path, what='CLIP weights')
  state = raw.tensors
  if raw.groups:
    raise ValueError(f'{path}: holds several state dicts ({["model", *raw.groups]}); expected '
                     'one CLIP state dict')
  config = raw.hf_config
  if config is None and _is_hf_layout(state):
    config = _hf_config_beside(path)

  if config is not None:
    spec = spec or spec_from_hf_config(config)
    params = _hf_to_params(spec, state)
    layout = 'HF'
  else:
    layout = 'OpenAI'
    if spec is None:
      spec = spec_from_openai_shapes(
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
    raw.format,
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
  (out_dir / 'config.json').write_text(json.dumps(spec_to_hf_config(spec), indent=2) + '\n')
  return out_dir


def weights_fingerprint(path: PathLike) -> str:
  """sha256 (hex) of the weights at `path`, to key caches of teacher outputs.

  For a directory: config.json and the weight file(s) that `load_clip` reads, each hashed with
  its name and size; for a file: its bytes. Streamed, so memory stays flat.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'No CLIP weights at {path}.')
  _require_clip_dir(path)
  return files.content_digest(path)
