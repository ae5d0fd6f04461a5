"""The CLIP tokenizer helpers: a tiny learned BPE vocabulary, offline loading, fixed-length ids."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax.data import tokenizer as tok_lib
from uniemox_jax.models import clip

CORPUS = [
  'The scene type of this photo is amusement park.',
  'The main subjects are person, tree and car.',
  'The image has a brightness of 0.6 and color saturation of 0.4.',
  'Human facial expression is happy.',
  'The action being performed is running.',
  'The overall emotion conveyed is amusement.',
  'The overall emotion conveyed is sadness.',
  'The overall emotion conveyed is contentment.',
] * 4


@pytest.fixture(scope='module')
def vocab_dir(tmp_path_factory):
  return tok_lib.write_tiny_vocab(tmp_path_factory.mktemp('vocab'), CORPUS, num_merges=300)


@pytest.fixture(scope='module')
def tokenizer(vocab_dir):
  return tok_lib.load_tokenizer(vocab_dir)


def test_tiny_vocab_files(vocab_dir, tmp_path):
  vocab = json.loads((vocab_dir / 'vocab.json').read_text(encoding='utf-8'))
  merges = (vocab_dir / 'merges.txt').read_text(encoding='utf-8').splitlines()
  assert merges[0] == '#version: 0.2' and len(merges) > 1
  assert 514 < len(vocab) <= 2000
  assert sorted(vocab.values()) == list(range(len(vocab)))
  assert vocab['<|endoftext|>'] == len(vocab) - 1 and vocab['<|startoftext|>'] == len(vocab) - 2
  assert vocab['!'] == 0 and vocab['a</w>'] == 256 + vocab['a']
  for line in merges[1:]:
    a, b = line.split(' ')
    assert a + b in vocab
  # Deterministic.
  again = tok_lib.write_tiny_vocab(tmp_path, CORPUS, num_merges=300)
  for name in ('vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'):
    assert (again / name).read_bytes() == (vocab_dir / name).read_bytes()


def test_tokenizer_loads_offline_and_covers_any_text(tokenizer):
  assert tokenizer.bos_token == '<|startoftext|>' and tokenizer.eos_token == '<|endoftext|>'
  assert tokenizer.tokenize('The overall emotion conveyed is amusement.')[:3] == [
    'the</w>',
    'overall</w>',
    'emotion</w>',
  ]  # learned merges are used
  text = 'Zebra-crossing at 12:30, naïve café 😀!'
  pieces = tokenizer.tokenize(text)
  assert len(pieces) > 5
  ids = tokenizer(text, add_special_tokens=False)['input_ids']
  assert tokenizer.decode(ids).replace(' ', '') == text.lower().replace(' ', '')


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='vocab.json'):
    tok_lib.load_tokenizer(tmp_path / 'absent')
  with pytest.raises(FileNotFoundError, match=r'vocab\.json \+ merges\.txt'):
    tok_lib.load_tokenizer(tmp_path)


def test_tokenize_layout(tokenizer):
  texts = ['The overall emotion conveyed is awe.', '', 'A photo.']
  ids, num_truncated = tok_lib.tokenize(tokenizer, texts, context_length=16)
  bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
  assert ids.dtype == np.int32 and ids.shape == (3, 16) and num_truncated == 0
  assert np.all(ids[:, 0] == bos) and np.all(ids < len(tokenizer))
  for row, text in zip(ids, texts):
    n = len(tokenizer(text, add_special_tokens=False)['input_ids'])
    first_eos = int(np.argmax(row == eos))
    assert first_eos == n + 1
    assert np.all(row[first_eos + 1 :] == pad)
  # Same ids as transformers' own padding/truncation for texts that fit.
  ref = tokenizer(texts, padding='max_length', max_length=16, truncation=True)['input_ids']
  np.testing.assert_array_equal(ids, np.asarray(ref))


def test_tokenize_truncates_long_texts(tokenizer):
  long_text = ' '.join(['emotion', 'wonderful', 'scene'] * 67)[:10_000]  # ~200 words
  ids, num_truncated = tok_lib.tokenize(tokenizer, [long_text, 'short', long_text], 77)
  assert num_truncated == 2
  assert ids.shape == (3, 77)
  assert ids[0, 0] == tokenizer.bos_token_id and ids[0, -1] == tokenizer.eos_token_id
  assert np.sum(ids[0] == tokenizer.eos_token_id) == 1
  with pytest.raises(TypeError):
    tok_lib.tokenize(tokenizer, 'not a list')


def test_tiny_teacher_pools_at_the_real_eos(tokenizer, tmp_path):
  """A tiny random CLIP around the tiny vocabulary: padding does not change text features."""
  vocab = len(tokenizer)
  spec = clip.ClipSpec(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    vision_mlp_dim=64,
    vocab_size=vocab,
    context_length=24,
    text_width=32,
    text_layers=1,
    text_heads=2,
    text_mlp_dim=64,
    eos_token_id=tokenizer.eos_token_id,
    bos_token_id=tokenizer.bos_token_id,
    pad_token_id=tokenizer.pad_token_id,
    projection_dim=16,
  )
  clip.save_pretrained(spec, clip.init_params(spec, seed=3), tmp_path)
  model, params = clip.load_clip(tmp_path)
  texts = ['The overall emotion conveyed is awe.', 'A dog.']
  ids, _ = tok_lib.tokenize(tokenizer, texts, spec.context_length)
  feats, aux = model.apply(
    {'params': params}, jnp.asarray(ids), method='encode_text', return_aux=True
  )
  first_eos = np.argmax(ids == tokenizer.eos_token_id, axis=1)
  np.testing.assert_array_equal(aux['eos_index'], first_eos)
  zero_padded = ids.copy()
  for row, e in enumerate(first_eos):
    zero_padded[row, e + 1 :] = 0
  other = model.apply({'params': params}, jnp.asarray(zero_padded), method='encode_text')
  np.testing.assert_allclose(feats, other, rtol=1e-5, atol=1e-6)
