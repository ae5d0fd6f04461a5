"""CLIP tokenization: a local CLIPTokenizerFast, fixed-length id arrays, and a tiny vocabulary.

    tok = load_tokenizer('/path/to/clip')            # local directory only, works offline
    ids, n_cut = tokenize(tok, captions, 77)         # int32 [N, 77]: BOS ... EOS pad...

`write_tiny_vocab` learns a small, real CLIP-style byte-level BPE vocabulary from a corpus, so
tests and the demo can build a tokenizer (and a tiny random CLIP around it) with no download.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ['BOS_TOKEN', 'EOS_TOKEN', 'load_tokenizer', 'tokenize', 'write_tiny_vocab']

BOS_TOKEN = '<|startoftext|>'
EOS_TOKEN = '<|endoftext|>'
_END_OF_WORD = '</w>'
_EXPECTED_FILES = 'vocab.json + merges.txt, or tokenizer.json'


def _has_tokenizer_files(directory: pathlib.Path) -> bool:
  return (directory / 'tokenizer.json').is_file() or (
    (directory / 'vocab.json').is_file() and (directory / 'merges.txt').is_file()
  )


def load_tokenizer(path: str | os.PathLike) -> Any:
  """`transformers.CLIPTokenizerFast` from a local directory (never the hub).

  Raises:
    FileNotFoundError: `path` is not a directory holding vocab.json + merges.txt or
      tokenizer.json.
  """
  directory = pathlib.Path(path).expanduser()
  if not directory.is_dir():
    raise FileNotFoundError(
      f'CLIP tokenizer directory {directory} does not exist; expected a '
      f'local directory with {_EXPECTED_FILES}.'
    )
  if not _has_tokenizer_files(directory):
    raise FileNotFoundError(
      f'{directory} has no CLIP tokenizer files; expected '
      f'{_EXPECTED_FILES} (a Hugging Face CLIP directory has them).'
    )
  # Only the tokenizer is used: transformers' advice that PyTorch is missing is noise here.
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
  from transformers import CLIPTokenizerFast  # pylint: disable=g-import-not-at-top

  return CLIPTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def tokenize(
  tokenizer: Any, texts: Sequence[str], context_length: int = 77
) -> tuple[np.ndarray, int]:
  """Texts -> CLIP input ids.

  Each row is BOS + tokens + EOS, padded to `context_length` with the tokenizer's pad id (EOS
  when it has none). Padding comes after the first EOS, so pooling at the first EOS (or at the
  argmax id, as legacy configs do, since EOS is the largest id and argmax takes the first)
  still picks the real end of the text. Over-long texts are cut so that EOS is the last token.

  Returns:
    (ids int32 [N, context_length], number of texts that were cut).
  """
  if isinstance(texts, str):
    raise TypeError('tokenize expects a sequence of texts, not a single string.')
  if context_length < 2:
    raise ValueError(f'context_length={context_length} leaves no room for BOS and EOS.')
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  if bos is None or eos is None:
    raise ValueError(
      'The tokenizer has no BOS/EOS token; expected a CLIP tokenizer with '
      f'{BOS_TOKEN} and {EOS_TOKEN}.'
    )
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
  texts = [str(t) for t in texts]
  ids = np.full((len(texts), context_length), pad, dtype=np.int32)
  if not texts:
    return ids, 0
  # verbose=False: long texts are expected here (we cut them), no length warning.
  pieces = tokenizer(texts, add_special_tokens=False, verbose=False)['input_ids']
  num_truncated = 0
  for row, tokens in enumerate(pieces):
    if len(tokens) > context_length - 2:
      tokens = tokens[: context_length - 2]
      num_truncated += 1
    seq = [bos, *tokens, eos]
    ids[row, : len(seq)] = seq
  return ids, num_truncated


# --------------------------------------------------------------------------------------------
# A tiny byte-level BPE vocabulary in CLIP's format.


def _bytes_to_unicode() -> dict[int, str]:
  """Byte -> printable character, as CLIP's / GPT-2's byte-level BPE maps them: printable
  Latin-1 bytes stand for themselves, the rest take code points from 256 up. Ordered as
  CLIP's vocabulary lists them: printable bytes first ('!' is id 0), then the others."""
  printable = (
    list(range(ord('!'), ord('~') + 1))
    + list(range(ord('¡'), ord('¬') + 1))
    + list(range(ord('®'), ord('ÿ') + 1))
  )
  mapping = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in mapping]
  mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
  return mapping


def _learn_merges(
  word_counts: collections.Counter, num_merges: int, min_frequency: int
) -> list[tuple[str, str]]:
  """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
  words = {tuple(w[:-1]) + (w[-1] + _END_OF_WORD,): c for w, c in word_counts.items() if w}
  merges = []
  while len(merges) < num_merges:
    pairs = collections.Counter()
    for symbols, count in words.items():
      for pair in zip(symbols, symbols[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    if pairs[best] < min_frequency:
      break
    merges.append(best)
    joined = best[0] + best[1]
    merged_words = {}
    for symbols, count in words.items():
      out, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          out.append(joined)
          i += 2
        else:
          out.append(symbols[i])
          i += 1
      merged_words[tuple(out)] = merged_words.get(tuple(out), 0) + count
    words = merged_words
  return merges


def _write_files(out_dir: pathlib.Path, merges: list[tuple[str, str]], context_length: int):
  chars = list(_bytes_to_unicode().values())
  tokens = chars + [c + _END_OF_WORD for c in chars] + [a + b for a, b in merges]
  tokens += [BOS_TOKEN, EOS_TOKEN]
  vocab = {}
  for token in tokens:  # a merge can recreate an existing token; keep its first id
    vocab.setdefault(token, len(vocab))
  (out_dir / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
  lines = ['#version: 0.2'] + [f'{a} {b}' for a, b in merges]
  (out_dir / 'merges.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
  special = {
    'bos_token': BOS_TOKEN,
    'eos_token': EOS_TOKEN,
    'unk_token': EOS_TOKEN,
    'pad_token': EOS_TOKEN,
  }
  config = dict(
    special,
    tokenizer_class='CLIPTokenizer',
    model_max_length=context_length,
    do_lower_case=True,
    errors='replace',
    add_prefix_space=False,
    clean_up_tokenization_spaces=False,
  )
  (out_dir / 'tokenizer_config.json').write_text(json.dumps(config, indent=2) + '\n')
  (out_dir / 'special_tokens_map.json').write_text(json.dumps(special, indent=2) + '\n')
  return len(vocab)


def write_tiny_vocab(
  out_dir: str | os.PathLike,
  corpus: Iterable[str],
  num_merges: int = 400,
  min_frequency: int = 2,
  context_length: int = 77,
) -> pathlib.Path:
  """Learns a small CLIP-style byte-level BPE from `corpus` and writes a tokenizer directory.

  Files: vocab.json (256 byte characters, their `</w>` forms, one token per merge,
  `<|startoftext|>`, `<|endoftext|>` last, so EOS id = vocab size - 1), merges.txt
  (`#version: 0.2` header), tokenizer_config.json, special_tokens_map.json. Words are split
  exactly as `CLIPTokenizerFast` splits them (its own normaliser and pre-tokeniser), so the
  merges apply; any text tokenises, unseen words falling back to smaller pieces down to bytes.
  Deterministic for a given corpus. Vocabulary size is at most 514 + num_merges.

  Returns:
    out_dir, loadable with `load_tokenizer`.
  """
  if num_merges < 0:
    raise ValueError(f'num_merges={num_merges} must be >= 0.')
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  corpus = list(corpus)
  # Split words with the tokenizer that will use the merges: a merge-less vocabulary first.
  with tempfile.TemporaryDirectory() as tmp:
    _write_files(pathlib.Path(tmp), [], context_length)
    backend = load_tokenizer(tmp).backend_tokenizer
    counts = collections.Counter()
    for text in corpus:
      normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
      for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
        if word not in (BOS_TOKEN, EOS_TOKEN):
          counts[word] += 1
  merges = _learn_merges(counts, num_merges, min_frequency)
  _write_files(out_dir, merges, context_length)
  return out_dir
