"""The weighted kNN classifier on constructed features, with hand-computed votes."""
import math

import numpy as np
import pytest

from uniemox_jax.evaluators import knn

# Bank on the unit circle (scaled entries are normalised away): labels 0, 1, 0, 1.
BANK = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
BANK_LABELS = np.array([0, 1, 0, 1])


def test_votes_are_the_temperature_weighted_sums_of_the_k_nearest():
  query = np.array([[3.0, 0.0]])  # cosine: 1, 0, 1/sqrt(2), -1
  votes = knn.knn_votes(BANK, BANK_LABELS, query, num_classes=2, k=2, temperature=0.5)
  # The two nearest are bank 0 (s = 1) and bank 2 (s = 0.7071), both class 0.
  np.testing.assert_allclose(votes, [[math.exp(2.0) + math.exp(math.sqrt(0.5) / 0.5), 0.0]])
  votes = knn.knn_votes(BANK, BANK_LABELS, query, num_classes=2, k=3, temperature=0.5)
  np.testing.assert_allclose(votes, [[7.38905610 + 4.11325038, 1.0]], rtol=1e-7)  # + e^(0/0.5)
  probs = knn.votes_to_probs(votes)
  np.testing.assert_allclose(probs.sum(1), 1.0)
  np.testing.assert_allclose(probs[0, 1], 1.0 / (7.38905610 + 4.11325038 + 1.0), rtol=1e-7)


def test_temperature_decides_between_one_close_and_two_far_neighbours():
  bank = np.array([[1.0, 0.0], [0.2, 1.0], [0.2, -1.0]])
  labels = np.array([0, 1, 1])
  query = np.array([[1.0, 0.0]])
  s = 0.2 / math.sqrt(1.04)
  sharp = knn.knn_votes(bank, labels, query, 2, k=3, temperature=0.07)
  np.testing.assert_allclose(sharp, [[math.exp(1 / 0.07), 2 * math.exp(s / 0.07)]])
  assert sharp.argmax() == 0           # the close neighbour wins at T = 0.07
  flat = knn.knn_votes(bank, labels, query, 2, k=3, temperature=100.0)
  assert flat.argmax() == 1            # a near-uniform vote is the majority


def test_ties_go_to_the_lower_bank_index_and_k_is_capped():
  bank = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
  labels = np.array([2, 1, 0])
  votes = knn.knn_votes(bank, labels, np.array([[0.0, 5.0]]), 3, k=1, temperature=1.0)
  np.testing.assert_allclose(votes, [[0.0, 0.0, math.e]])  # bank 0 (label 2), not bank 1
  votes = knn.knn_votes(bank, labels, np.array([[0.0, 5.0]]), 3, k=50, temperature=1.0)
  np.testing.assert_allclose(votes, [[1.0, math.e, math.e]])  # all 3 bank entries vote


def test_chunks_do_not_change_the_votes():
  rng = np.random.default_rng(0)
  bank, queries = rng.normal(size=(40, 8)), rng.normal(size=(23, 8))
  labels = rng.integers(0, 4, size=40)
  whole = knn.knn_votes(bank, labels, queries, 4, k=5, chunk=1000)
  np.testing.assert_allclose(knn.knn_votes(bank, labels, queries, 4, k=5, chunk=7), whole)
  # Against a direct loop over queries.
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  for i, q in enumerate(queries / np.linalg.norm(queries, axis=1, keepdims=True)):
    s = b @ q
    top = np.argsort(-s, kind="stable")[:5]
    expect = np.zeros(4)
    for j in top:
      expect[labels[j]] += math.exp(s[j] / 0.07)
    np.testing.assert_allclose(whole[i], expect)


def test_knn_evaluate_reports_predictions_and_calibration():
  # Two well separated clusters: every query is classified right.
  bank = np.array([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
  labels = np.array([0, 0, 1, 1])
  queries = np.array([[2.0, 0.0], [-2.0, 0.3], [-1.0, -0.2]])
  result, probs = knn.knn_evaluate(bank, labels, queries, np.array([0, 1, 1]), ["joy", "fear"],
                                   k=2, temperature=0.07)
  assert result["top1"] == 1.0 and result["num_examples"] == 3
  assert result["confusion_matrix"] == [[1, 0], [0, 2]]
  assert result["metrics"]["macro_f1"] == 1.0
  np.testing.assert_allclose(probs, [[1, 0], [0, 1], [0, 1]])
  assert result["metrics"]["ece"] == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="empty"):
    knn.knn_votes(np.zeros((0, 2)), np.zeros(0), np.ones((1, 2)), 2)
  with pytest.raises(ValueError, match="2-d, queries 3-d"):
    knn.knn_votes(np.ones((2, 2)), np.zeros(2), np.ones((1, 3)), 2)


def test_subsets_are_fixed_random_and_spread_over_the_source():
  a = knn.subset_indices(100, 10, seed=3)
  np.testing.assert_array_equal(a, knn.subset_indices(100, 10, seed=3))
  assert len(a) == 10 and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
  assert not np.array_equal(a, knn.subset_indices(100, 10, seed=4))
  assert a.max() >= 50  # not a prefix (class-folder data is stored class by class)
  np.testing.assert_array_equal(knn.subset_indices(5, 0), np.arange(5))
  np.testing.assert_array_equal(knn.subset_indices(5, 9), np.arange(5))
  source = [f"x{i}" for i in range(100)]
  sub = knn.Subset(source, a)
  assert len(sub) == 10 and sub[0] == f"x{a[0]}" and sub[9] == f"x{a[9]}"
