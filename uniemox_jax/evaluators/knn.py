"""Weighted k-nearest-neighbour classification over frozen features (the kNN read-out).

The memory bank is the training split's features; every query (a val or test image) is
classified by its `k` most similar bank entries, each voting for its own label with weight
`exp(s / T)`, `s` the cosine similarity (Wu et al. 2018; DINO's `eval_knn`, k = 20,
T = 0.07):

    s_ij   = <x̂_i, b̂_j>                        x̂ = x / ‖x‖ (queries and bank alike)
    N_k(i) = the k bank entries with the largest s_ij (ties: the lower bank index)
    v_ic   = Σ_{j ∈ N_k(i), y_j = c} exp(s_ij / T)
    p_ic   = v_ic / Σ_c' v_ic'                 (the "probabilities" the ECE is computed on)

The prediction is `argmax_c v_ic` (ties: the lower class id, as everywhere in the metrics).
Everything here is numpy on the host: a held-out subset (`subset_indices`) keeps the
in-training evaluation cheap, and a full benchmark bank (~20K × 1024 floats) fits easily.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from uniemox_jax.evaluators import classification


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of `x` `[N, D]` scaled to unit length (float64; zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def knn_votes(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
              num_classes: int, k: int = 20, temperature: float = 0.07,
              chunk: int = 512) -> np.ndarray:
  """Class votes `[M, K]` (float64) of `queries` `[M, D]` against `bank` `[N, D]` with
  labels `bank_labels` `[N]`, as in the module docstring. `k` is capped at N. Queries are
  processed `chunk` at a time (memory `chunk × N`)."""
  bank, queries = l2_normalize(bank), l2_normalize(queries)
  bank_labels = np.asarray(bank_labels, np.int64)
  if bank.shape[0] != bank_labels.shape[0]:
    raise ValueError(f"bank {bank.shape} and bank_labels {bank_labels.shape} differ in length")
  if bank.shape[0] == 0:
    raise ValueError("the kNN memory bank is empty")
  if bank.shape[1] != queries.shape[1]:
    raise ValueError(f"bank features are {bank.shape[1]}-d, queries {queries.shape[1]}-d")
  if k < 1 or temperature <= 0:
    raise ValueError(f"k={k} must be >= 1 and temperature={temperature} > 0")
  k = min(int(k), bank.shape[0])
  votes = np.zeros((queries.shape[0], num_classes), np.float64)
  for start in range(0, queries.shape[0], chunk):
    sims = queries[start:start + chunk] @ bank.T                        # [m, N]
    # A stable sort of -s puts equal similarities in bank order: ties go to the lower index.
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]               # [m, k]
    weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
    rows = np.repeat(np.arange(top.shape[0]), k)
    np.add.at(votes[start:start + chunk], (rows, bank_labels[top].ravel()), weights.ravel())
  return votes


def votes_to_probs(votes: np.ndarray) -> np.ndarray:
  """`votes` `[M, K]` normalised to sum 1 per row (`p_ic` of the module docstring)."""
  votes = np.asarray(votes, np.float64)
  return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-300)


def knn_evaluate(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
                 labels: np.ndarray, class_names: Sequence[str], k: int = 20,
                 temperature: float = 0.07) -> tuple[dict, np.ndarray]:
  """The classification result (`classification.Accumulator.result`: top-1/3, confusion,
  `metrics`) of the kNN classifier on `queries` `[M, D]` with true `labels` `[M]`, and its
  probabilities `[M, K]`."""
  votes = knn_votes(bank, bank_labels, queries, len(class_names), k, temperature)
  probs = votes_to_probs(votes)
  return classification.evaluate_probs(probs, labels, class_names), probs


# --------------------------------------------------------------------------------------------
# Held-out subsets (in-training evaluation).


def subset_indices(num_examples: int, max_examples: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a fixed random subset of `max_examples` of `num_examples` examples
  (all of them when `max_examples` is 0 or not smaller). The same arguments give the same
  subset on every machine (numpy's PCG64), so every evaluation of a run sees the same
  images. A random subset rather than a prefix: class-folder data sets are stored class by
  class, so a prefix would hold only the first classes."""
  if max_examples <= 0 or max_examples >= num_examples:
    return np.arange(num_examples)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_examples, size=max_examples, replace=False))


class Subset(Sequence):
  """Random access to `source[indices[i]]` (an evaluation source restricted to a subset)."""

  def __init__(self, source: Sequence, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return int(self._indices.shape[0])

  def __getitem__(self, i):
    return self._source[int(self._indices[int(i)])]
