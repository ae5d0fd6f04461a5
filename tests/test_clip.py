"""Our CLIP against transformers' PyTorch CLIP, its loaders, save_pretrained and the frozen teacher.

Tests marked `torch` use PyTorch (transformers' CLIPModel as the reference); the rest run without
it. Sizes are tiny (widths 32-128, 2 layers, 32-px images).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from uniemox_jax.models import clip
from uniemox_jax.weights import clip as clip_weights

SPEC = clip.ClipSpec(
  image_size=32,
  patch_size=8,
  vision_width=64,
  vision_layers=2,
  vision_heads=2,
  vision_mlp_dim=128,
  vocab_size=100,
  context_length=16,
  text_width=32,
  text_layers=2,
  text_heads=2,
  text_mlp_dim=64,
  eos_token_id=99,
  bos_token_id=98,
  projection_dim=24,
)
# OpenAI checkpoints carry no config: heads are inferred as width // 64.
OPENAI_SPEC = dataclasses.replace(
  SPEC,
  vision_width=128,
  vision_heads=2,
  vision_mlp_dim=256,
  text_width=64,
  text_heads=1,
  text_mlp_dim=128,
)
TOL = 1e-5


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def make_pixels(n=3, height=32, width=32, seed=0):
  return np.random.RandomState(seed).randn(n, height, width, 3).astype(np.float32)


def make_ids(spec, seed=1):
  """int32 [4, T]: BOS, random tokens, the end marker (id vocab-1) at different places, then
  padding with the marker, with 0, or none. The marker is EOS for real configs and the
  argmax id for legacy (eos_token_id == 2) ones."""
  rng = np.random.RandomState(seed)
  t, marker = spec.context_length, spec.vocab_size - 1
  ids = rng.randint(0, spec.vocab_size - 2, size=(4, t))
  ids[:, 0] = spec.vocab_size - 2
  ids[0, 4:] = marker  # padded with EOS: pooling must take the first one
  ids[1, 7] = marker
  ids[1, 8:] = 0  # padded with 0
  ids[2, t - 1] = marker  # full row
  ids[3, 2] = marker  # short text, random tokens after it
  ids[3, 3:] = rng.randint(0, spec.vocab_size - 2, size=t - 3)
  return ids.astype(np.int32)


def encode(model, params, pixels, ids):
  img = model.apply({'params': params}, jnp.asarray(pixels), method='encode_image')
  txt = model.apply({'params': params}, jnp.asarray(ids), method='encode_text')
  return np.asarray(img), np.asarray(txt)


def to_openai_layout(hf):
  """HF CLIPModel state dict (numpy) -> OpenAI CLIP layout, written independently of the
  loader: fused in_proj, [width, E] projections."""
  out = {}
  rename = {
    'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
    'vision_model.embeddings.class_embedding': 'visual.class_embedding',
    'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
    'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight',
    'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
    'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
    'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'text_model.final_layer_norm.weight': 'ln_final.weight',
    'text_model.final_layer_norm.bias': 'ln_final.bias',
    'logit_scale': 'logit_scale',
  }
  for k, v in rename.items():
    out[v] = hf[k]
  out['visual.proj'] = hf['visual_projection.weight'].T.copy()
  out['text_projection'] = hf['text_projection.weight'].T.copy()
  for tower, prefix in (('vision_model', 'visual.transformer'), ('text_model', 'transformer')):
    i = 0
    while f'{tower}.encoder.layers.{i}.layer_norm1.weight' in hf:
      src, dst = f'{tower}.encoder.layers.{i}.', f'{prefix}.resblocks.{i}.'
      for kind in ('weight', 'bias'):
        out[dst + f'attn.in_proj_{kind}'] = np.concatenate(
          [hf[src + f'self_attn.{n}_proj.{kind}'] for n in 'qkv'], axis=0
        )
        out[dst + f'attn.out_proj.{kind}'] = hf[src + f'self_attn.out_proj.{kind}']
        out[dst + f'ln_1.{kind}'] = hf[src + f'layer_norm1.{kind}']
        out[dst + f'ln_2.{kind}'] = hf[src + f'layer_norm2.{kind}']
        out[dst + f'mlp.c_fc.{kind}'] = hf[src + f'mlp.fc1.{kind}']
        out[dst + f'mlp.c_proj.{kind}'] = hf[src + f'mlp.fc2.{kind}']
      i += 1
  return out


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """(directory, params) of a random tiny CLIP written by save_pretrained."""
  params = clip.init_params(SPEC, seed=0)
  out = clip.save_pretrained(SPEC, params, tmp_path_factory.mktemp('tiny_clip'))
  return out, params


# --------------------------------------------------------------------------------------------
# PyTorch reference (transformers' CLIPModel).


def torch_clip(spec, seed=0, **config_overrides):
  """A random transformers CLIPModel with every parameter perturbed (so LayerNorms and biases
  are not trivially 1/0). The config is written with transformers' own names here."""
  import torch  # the `torch` marker keeps this test out of runs without it
  import transformers  # the `torch` marker keeps this test out of runs without it

  common = dict(hidden_act='quick_gelu', layer_norm_eps=1e-5)
  text = dict(
    vocab_size=spec.vocab_size,
    hidden_size=spec.text_width,
    intermediate_size=spec.text_mlp_dim,
    num_hidden_layers=spec.text_layers,
    num_attention_heads=spec.text_heads,
    max_position_embeddings=spec.context_length,
    eos_token_id=spec.eos_token_id,
    bos_token_id=spec.bos_token_id,
    **common,
  )
  vision = dict(
    hidden_size=spec.vision_width,
    intermediate_size=spec.vision_mlp_dim,
    num_hidden_layers=spec.vision_layers,
    num_attention_heads=spec.vision_heads,
    image_size=spec.image_size,
    patch_size=spec.patch_size,
    **common,
  )
  config = transformers.CLIPConfig(
    text_config=text, vision_config=vision, projection_dim=spec.projection_dim, **config_overrides
  )
  torch.manual_seed(seed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def torch_features(model, pixels, ids, **kwargs):
  import torch  # pylint: disable=g-import-not-at-top

  def pooled(out):  # transformers 5: BaseModelOutputWithPooling; 4: a tensor
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()

  with torch.no_grad():
    img = model.get_image_features(
      pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()), **kwargs
    )
    txt = model.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
  return pooled(img), pooled(txt)


def torch_state_numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.torch
@pytest.mark.parametrize('eos', ['real', 'legacy'])
@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_hf_parity(tmp_path, fmt, eos):
  spec = SPEC if eos == 'real' else dataclasses.replace(SPEC, eos_token_id=2)
  ref = torch_clip(spec)
  if fmt == 'safetensors':
    ref.save_pretrained(tmp_path)
    assert (tmp_path / 'model.safetensors').is_file()
  else:
    # transformers 5 only writes safetensors; older HF directories hold a pickled
    # state dict named pytorch_model.bin next to the same config.json.
    import torch  # pylint: disable=g-import-not-at-top

    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / 'pytorch_model.bin')

  model, params = clip.load_clip(tmp_path)
  assert model.spec == spec
  pixels, ids = make_pixels(), make_ids(spec)
  img, txt = encode(model, params, pixels, ids)
  ref_img, ref_txt = torch_features(ref, pixels, ids)
  assert img.shape == (3, spec.projection_dim) and txt.shape == (4, spec.projection_dim)
  assert rel_err(img, ref_img) <= TOL
  assert rel_err(txt, ref_txt) <= TOL
  # Padding with EOS (row 0) vs first-EOS pooling: the pooled position is the first EOS.
  _, aux = model.apply({'params': params}, jnp.asarray(ids), method='encode_text', return_aux=True)
  np.testing.assert_array_equal(aux['eos_index'], [4, 7, spec.context_length - 1, 2])


@pytest.mark.torch
def test_hf_parity_interpolated_position_embeddings(tmp_path):
  ref = torch_clip(SPEC)
  ref.save_pretrained(tmp_path)
  model, params = clip.load_clip(tmp_path)
  pixels = make_pixels(n=2, height=48, width=40)
  ours = model.apply({'params': params}, jnp.asarray(pixels), method='encode_image')
  ref_img, _ = torch_features(ref, pixels, make_ids(SPEC), interpolate_pos_encoding=True)
  assert rel_err(ours, ref_img) <= TOL


def _torchscript_archive(state, path):
  """Saves `state` as a TorchScript archive of a module tree holding those parameters, the way
  OpenAI's released .pt files are archives whose state_dict() has OpenAI's keys."""
  import torch  # pylint: disable=g-import-not-at-top

  class Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
      return x

  root = Holder()
  for key, value in state.items():
    *path_parts, leaf = key.split('.')
    module = root
    for part in path_parts:
      if part not in module._modules:  # pylint: disable=protected-access
        module.add_module(part, Holder())
      module = module._modules[part]  # pylint: disable=protected-access
    module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
  torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.torch
@pytest.mark.filterwarnings('ignore:`torch.jit.(script|save)` is deprecated:DeprecationWarning')
@pytest.mark.parametrize('kind', ['pickle', 'torchscript', 'open_clip_wrapped', 'fp16'])
def test_openai_layout_parity(tmp_path, kind):
  import torch  # the `torch` marker keeps this test out of runs without it

  ref = torch_clip(OPENAI_SPEC)
  openai = {k: torch.from_numpy(v) for k, v in to_openai_layout(torch_state_numpy(ref)).items()}
  path = tmp_path / 'ViT-tiny.pt'
  if kind == 'pickle':
    torch.save(openai, path)
  elif kind == 'open_clip_wrapped':
    torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in openai.items()}}, path)
  elif kind == 'fp16':
    torch.save({k: v.half() for k, v in openai.items()}, path)
  else:
    _torchscript_archive(openai, path)

  model, params = clip.load_clip(path)
  assert model.spec == OPENAI_SPEC
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  pixels, ids = make_pixels(), make_ids(OPENAI_SPEC)
  img, txt = encode(model, params, pixels, ids)
  ref_img, ref_txt = torch_features(ref, pixels, ids)
  tol = 2e-2 if kind == 'fp16' else TOL
  assert rel_err(img, ref_img) <= tol
  assert rel_err(txt, ref_txt) <= tol
  if kind == 'fp16':  # exactly the fp16 values, widened
    want = openai['visual.proj'].half().float().numpy()
    np.testing.assert_array_equal(params['vision']['projection']['kernel'], want)


@pytest.mark.torch
def test_save_pretrained_loads_in_transformers(saved):
  import torch  # noqa: F401
  import transformers  # the `torch` marker keeps this test out of runs without it

  out, params = saved
  ref, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
  ref.eval()
  assert not info['missing_keys'], info
  assert not info['unexpected_keys'], info
  assert not info.get('mismatched_keys'), info
  model = clip.CLIP(SPEC)
  pixels, ids = make_pixels(), make_ids(SPEC)
  img, txt = encode(model, params, pixels, ids)
  ref_img, ref_txt = torch_features(ref, pixels, ids)
  assert rel_err(img, ref_img) <= TOL
  assert rel_err(txt, ref_txt) <= TOL


# --------------------------------------------------------------------------------------------
# Without torch.


def test_spec_config_round_trips():
  assert clip.ClipSpec.from_hf_config(SPEC.to_hf_config()) == SPEC
  assert clip.ClipSpec.from_hf_config(json.loads(json.dumps(SPEC.to_hf_config()))) == SPEC
  abstract = jax.eval_shape(
    clip.CLIP(OPENAI_SPEC).init,
    jax.random.key(0),
    jnp.zeros((1, 32, 32, 3)),
    jnp.zeros((1, 16), jnp.int32),
  )
  params = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract['params'])
  hf = clip_weights._params_to_hf(OPENAI_SPEC, params)  # pylint: disable=protected-access
  shapes = {k: v.shape for k, v in to_openai_layout(hf).items()}
  assert clip.ClipSpec.from_openai_shapes(shapes) == OPENAI_SPEC
  # ViT-B/16 sizes from shapes alone (no arrays needed).
  b16 = clip.ClipSpec()
  shapes = {
    'text_projection': (512, 512),
    'visual.conv1.weight': (768, 3, 16, 16),
    'visual.positional_embedding': (197, 768),
    'token_embedding.weight': (49408, 512),
    'positional_embedding': (77, 512),
    'visual.transformer.resblocks.0.mlp.c_fc.weight': (3072, 768),
    'transformer.resblocks.0.mlp.c_fc.weight': (2048, 512),
    **{f'visual.transformer.resblocks.{i}.ln_1.weight': (768,) for i in range(12)},
    **{f'transformer.resblocks.{i}.ln_1.weight': (512,) for i in range(12)},
  }
  assert clip.ClipSpec.from_openai_shapes(shapes) == b16
  with pytest.raises(ValueError, match='not divisible'):
    dataclasses.replace(SPEC, vision_heads=3)


def test_save_pretrained_round_trip(saved):
  out, params = saved
  assert (out / 'config.json').is_file() and (out / 'model.safetensors').is_file()
  model, loaded = clip.load_clip(out)
  assert model.spec == SPEC
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(np.asarray, params))
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
  pixels, ids = make_pixels(), make_ids(SPEC)
  np.testing.assert_array_equal(
    encode(model, loaded, pixels, ids)[0], encode(clip.CLIP(SPEC), params, pixels, ids)[0]
  )


def test_openai_layout_without_torch(saved, tmp_path):
  """The OpenAI mapping (fused qkv, transposed projections), via a safetensors file."""
  out, params = saved
  openai = to_openai_layout(load_file(str(out / 'model.safetensors')))
  save_file(openai, str(tmp_path / 'openai.safetensors'))
  # Widths 64/32 would infer 1 head each; the override gives the real sizes.
  model, loaded = clip.load_clip(tmp_path / 'openai.safetensors', spec=SPEC)
  assert model.spec == SPEC
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def _rewrite(src_dir, dst_dir, edit):
  dst_dir.mkdir()
  (dst_dir / 'config.json').write_text((src_dir / 'config.json').read_text())
  state = load_file(str(src_dir / 'model.safetensors'))
  edit(state)
  save_file(state, str(dst_dir / 'model.safetensors'), metadata={'format': 'pt'})
  return dst_dir


def test_unmapped_keys_raise(saved, tmp_path):
  out, _ = saved
  key = 'vision_model.encoder.layers.1.mlp.fc2.bias'

  def extra(s):
    s['vision_model.encoder.layers.1.mlp.fc3.weight'] = np.zeros((2, 2), np.float32)

  def missing(s):
    del s[key]

  def wrong(s):
    s[key] = np.zeros((65,), np.float32)

  def ignored(s):  # older checkpoints store position ids: not weights, not an error
    s['text_model.embeddings.position_ids'] = np.arange(16, dtype=np.int64)[None]

  with pytest.raises(ValueError, match=r'unexpected keys.*layers\.1\.mlp\.fc3\.weight'):
    clip.load_clip(_rewrite(out, tmp_path / 'extra', extra))
  with pytest.raises(ValueError, match=r'missing keys.*' + key.replace('.', r'\.')):
    clip.load_clip(_rewrite(out, tmp_path / 'missing', missing))
  with pytest.raises(ValueError, match=key.replace('.', r'\.') + r'.*\(65,\).*\(64,\)'):
    clip.load_clip(_rewrite(out, tmp_path / 'wrong', wrong))
  clip.load_clip(_rewrite(out, tmp_path / 'ignored', ignored))


def test_unmapped_openai_keys_raise(saved, tmp_path):
  out, _ = saved
  base = to_openai_layout(load_file(str(out / 'model.safetensors')))

  def load(name, edit):
    state = dict(base)
    edit(state)
    save_file(state, str(tmp_path / name))
    return clip.load_clip(tmp_path / name, spec=SPEC)

  with pytest.raises(ValueError, match=r'unexpected keys.*visual\.attnpool\.k_proj\.weight'):
    load(
      'extra.safetensors',
      lambda s: s.update({'visual.attnpool.k_proj.weight': np.zeros(3, np.float32)}),
    )
  with pytest.raises(ValueError, match=r'missing keys.*resblocks\.1\.attn\.in_proj_bias'):
    load('missing.safetensors', lambda s: s.pop('transformer.resblocks.1.attn.in_proj_bias'))
  with pytest.raises(
    ValueError,
    match=r'visual\.proj: checkpoint shape \(64, 25\), expected '
    r'\(64, 24\)',
  ):
    load('wrong.safetensors', lambda s: s.update({'visual.proj': np.zeros((64, 25), np.float32)}))


def test_missing_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match='CLIP weights not found'):
    clip.load_clip(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='config.json'):
    clip.load_clip(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(SPEC.to_hf_config()))
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    clip.load_clip(tmp_path)


def test_frozen_teacher_passes_no_gradient(saved):
  _, params = saved
  teacher = clip.CLIP(SPEC)  # frozen=True by default
  pixels = jnp.asarray(make_pixels(n=2))
  ids = jnp.asarray(make_ids(SPEC)[:2])
  student_w = jax.random.normal(jax.random.key(0), (32 * 32 * 3, SPEC.projection_dim))

  def loss(teacher_params, w, pixels):
    img = teacher.apply({'params': teacher_params}, pixels, method='encode_image')
    txt = teacher.apply({'params': teacher_params}, ids, method='encode_text')
    student = pixels.reshape(pixels.shape[0], -1) @ w
    return jnp.sum((student - img) ** 2) + jnp.sum(student * txt)

  g_teacher, g_student = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, student_w, pixels)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teacher))
  assert float(jnp.abs(g_student).max()) > 0
  # Unfrozen, gradient does reach the same parameters.
  unfrozen = clip.CLIP(SPEC, frozen=False)
  g = jax.jit(
    jax.grad(lambda p: jnp.sum(unfrozen.apply({'params': p}, pixels, method='encode_image') ** 2))
  )(params)
  assert float(jnp.abs(g['vision']['projection']['kernel']).max()) > 0


def test_bfloat16_close_to_float32(saved):
  _, params = saved
  pixels, ids = make_pixels(), make_ids(SPEC)
  f32 = encode(clip.CLIP(SPEC), params, pixels, ids)
  bf16 = encode(clip.CLIP(SPEC, dtype=jnp.bfloat16), params, pixels, ids)
  for a, b in zip(f32, bf16):
    assert b.dtype == np.float32
    cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert np.all(cos > 0.99), cos


def test_jit_and_image_size_checks(saved):
  _, params = saved
  model = clip.CLIP(SPEC)
  pixels = jnp.asarray(make_pixels())
  eager = model.apply({'params': params}, pixels, method='encode_image')
  jitted = jax.jit(lambda p, x: model.apply({'params': p}, x, method='encode_image'))
  np.testing.assert_allclose(jitted(params, pixels), eager, rtol=1e-5, atol=1e-6)
  # A size with the same patch grid needs no interpolation; a new grid interpolates.
  out = model.apply(
    {'params': params}, jnp.asarray(make_pixels(height=48, width=48)), method='encode_image'
  )
  assert out.shape == (3, SPEC.projection_dim) and np.all(np.isfinite(out))
  strict = clip.CLIP(SPEC, resize_pos_embed=False)
  with pytest.raises(ValueError, match=r'48x40 images.*32x32'):
    strict.apply(
      {'params': params}, jnp.asarray(make_pixels(height=48, width=40)), method='encode_image'
    )
  with pytest.raises(ValueError, match='context_length=16'):
    model.apply({'params': params}, jnp.zeros((1, 17), jnp.int32), method='encode_text')


def test_resize_pos_embedding_identity_and_constant():
  pos = jax.random.normal(jax.random.key(0), (1 + 16, 8))
  np.testing.assert_allclose(clip.resize_pos_embedding(pos, 4, (4, 4)), pos, atol=1e-6)
  const = jnp.ones((1 + 16, 8))  # bicubic weights sum to one
  np.testing.assert_allclose(
    clip.resize_pos_embedding(const, 4, (7, 5)), jnp.ones((1 + 35, 8)), atol=1e-5
  )


def test_weights_fingerprint(saved, tmp_path):
  out, _ = saved
  fp = clip.weights_fingerprint(out)
  assert len(fp) == 64 and fp == clip.weights_fingerprint(out)
  changed = _rewrite(
    out, tmp_path / 'changed', lambda s: s.update(logit_scale=np.array(s['logit_scale'] + 1))
  )
  assert clip.weights_fingerprint(changed) != fp
  same = _rewrite(out, tmp_path / 'same', lambda s: None)  # same bytes, other directory
  assert clip.weights_fingerprint(same) == fp
