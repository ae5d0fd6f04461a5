"""Hand-computed cases for uniemox_jax/evaluators/metrics.py (numpy + PIL only, no JAX).

Every expected value below is worked out by hand in the comments next to it.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.evaluators import metrics as m

# Label orders of the data sets (written out here so the test does not depend on the data code).
EMOSET_ORDER = ('amusement', 'awe', 'contentment', 'excitement',
                'anger', 'disgust', 'fear', 'sadness')
SORTED_ORDER = ('amusement', 'anger', 'awe', 'contentment',
                'disgust', 'excitement', 'fear', 'sadness')
EMOTION6 = ('anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise')

# Five classes covering every edge case of recall / precision / F1:
#   class 0, 1: ordinary; class 2: no support but predicted once; class 3: support but never
#   predicted; class 4: neither present nor predicted.
EDGE = np.array([
    [4, 1, 0, 0, 0],   # true 0: n = 5
    [1, 2, 1, 0, 0],   # true 1: n = 4
    [0, 0, 0, 0, 0],   # true 2: n = 0
    [1, 1, 0, 0, 0],   # true 3: n = 2
    [0, 0, 0, 0, 0],   # true 4: n = 0
])
# N = 11; column sums (predictions): 6, 4, 1, 0, 0.


def _close(a, b, tol=1e-12):
  return a == pytest.approx(b, abs=tol)


# ------------------------------------------------------------------ accuracy, recall, F1 ----

def test_top1_from_confusion():
  # trace = 4 + 2 + 0 + 0 + 0 = 6, N = 11.
  assert _close(m.top1_accuracy(EDGE), 6 / 11)
  assert math.isnan(m.top1_accuracy(np.zeros((3, 3))))


def test_per_class_recall_precision_with_missing_classes():
  recall = m.per_class_recall(EDGE)
  # 4/5, 2/4, 0/0 -> nan (no support), 0/2, 0/0 -> nan.
  np.testing.assert_allclose(recall[[0, 1, 3]], [0.8, 0.5, 0.0])
  assert np.isnan(recall[2]) and np.isnan(recall[4])
  precision = m.per_class_precision(EDGE)
  # column 0: 4/6; column 1: 2/4; column 2: 0/1; columns 3, 4 never predicted -> nan.
  np.testing.assert_allclose(precision[:3], [2 / 3, 0.5, 0.0])
  assert np.isnan(precision[3]) and np.isnan(precision[4])


def test_f1_and_macro_f1_edge_cases():
  f1 = m.per_class_f1(EDGE)
  # F1 = 2TP / (2TP + FP + FN):
  #   class 0: TP 4, FP 6-4 = 2, FN 5-4 = 1 -> 8/11 (= 2·(2/3)(4/5) / (2/3 + 4/5) = 16/22)
  #   class 1: TP 2, FP 2, FN 2 -> 4/8 = 1/2
  #   class 2: TP 0, FP 1, FN 0 -> 0 (predicted, no support: a pure error)
  #   class 3: TP 0, FP 0, FN 2 -> 0 (support, never predicted: precision undefined, F1 0)
  #   class 4: 0/0 -> nan (neither present nor predicted: left out)
  np.testing.assert_allclose(f1[:4], [8 / 11, 0.5, 0.0, 0.0])
  assert np.isnan(f1[4])
  # macro over classes 0..3: (8/11 + 1/2 + 0 + 0) / 4 = (16/22 + 11/22) / 4 = 27/88.
  assert _close(m.macro_f1(EDGE), 27 / 88)


def test_all_one_class():
  # Everything true class 1 and predicted class 1: recall of class 1 = 1, the others nan;
  # F1 of class 1 = 2·5 / (2·5) = 1, the others 0/0 -> nan, so macro-F1 = 1.
  c = np.zeros((3, 3), int)
  c[1, 1] = 5
  assert _close(m.top1_accuracy(c), 1.0)
  r = m.per_class_recall(c)
  assert r[1] == 1.0 and np.isnan(r[0]) and np.isnan(r[2])
  assert _close(m.macro_f1(c), 1.0)
  # Everything true class 0 but predicted class 2: F1_0 = 0/(0+0+5) = 0, F1_2 = 0/(0+5+0) = 0,
  # class 1 absent -> macro over {0, 2} = 0.
  c = np.zeros((3, 3), int)
  c[0, 2] = 5
  assert _close(m.macro_f1(c), 0.0)
  assert math.isnan(m.macro_f1(np.zeros((3, 3))))


def test_top_k_accuracy_by_hand():
  probs = np.array([
      [0.5, 0.3, 0.2],   # y=0: top-1 hit
      [0.2, 0.5, 0.3],   # y=2: argmax 1 (miss), top-2 {1, 2} hit
      [0.1, 0.2, 0.7],   # y=0: top-2 {2, 1} miss, top-3 hit
      [0.4, 0.4, 0.2],   # y=1: tie 0/1 -> lower id 0 first: top-1 miss, top-2 {0, 1} hit
  ])
  labels = np.array([0, 2, 0, 1])
  assert _close(m.top_k_accuracy(probs, labels, 1), 1 / 4)
  assert _close(m.top_k_accuracy(probs, labels, 2), 3 / 4)
  assert _close(m.top_k_accuracy(probs, labels, 3), 1.0)
  assert _close(m.top_k_accuracy(probs, labels, 5), 1.0)   # k >= K
  # Top-1 agrees with the argmax confusion matrix (ties to the lower id in both).
  c = m.confusion_from_predictions(labels, probs.argmax(axis=1), 3)
  assert _close(m.top1_accuracy(c), 1 / 4)
  assert math.isnan(m.top_k_accuracy(np.zeros((0, 3)), np.zeros(0, int), 1))


def test_confusion_from_predictions():
  c = m.confusion_from_predictions([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
  np.testing.assert_array_equal(c, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


# ------------------------------------------------------------------------- calibration ----

def _two_class(confs, labels):
  """Rows [c, 1 - c] with c >= 0.5: confidence c, prediction class 0."""
  confs = np.asarray(confs, float)
  return np.stack([confs, 1 - confs], axis=1), np.asarray(labels)


def test_ece_by_hand_three_bins():
  # 15 bins of width 1/15; bin b holds b/15 < conf <= (b+1)/15, i.e. b = ceil(15·conf) - 1.
  #   0.55 -> 8.25 -> bin 8, correct (y=0)      0.58 -> 8.7  -> bin 8, wrong (y=1)
  #   0.75 -> 11.25 -> bin 11, wrong
  #   0.95 -> 14.25 -> bin 14, correct          0.99 -> 14.85 -> bin 14, correct
  probs, labels = _two_class([0.55, 0.58, 0.75, 0.95, 0.99], [0, 1, 1, 0, 0])
  bins = m.reliability_bins(probs, labels)
  expected_counts = np.zeros(15, int)
  expected_counts[[8, 11, 14]] = [2, 1, 2]
  np.testing.assert_array_equal(bins['counts'], expected_counts)
  # bin 8: acc 1/2, conf (0.55+0.58)/2 = 0.565, gap 0.065
  # bin 11: acc 0, conf 0.75, gap 0.75
  # bin 14: acc 1, conf (0.95+0.99)/2 = 0.97, gap 0.03
  np.testing.assert_allclose(bins['accuracy'][[8, 11, 14]], [0.5, 0.0, 1.0])
  np.testing.assert_allclose(bins['confidence'][[8, 11, 14]], [0.565, 0.75, 0.97])
  assert np.isnan(bins['accuracy'][0]) and np.isnan(bins['confidence'][7])
  # ECE = 2/5·0.065 + 1/5·0.75 + 2/5·0.03 = 0.026 + 0.15 + 0.012 = 0.188
  assert _close(m.expected_calibration_error(probs, labels), 0.188)


def test_ece_single_bin_and_perfect():
  # Four examples at confidence 0.7 (10.5 -> bin 10), three correct: |0.75 - 0.7| = 0.05.
  probs, labels = _two_class([0.7] * 4, [0, 0, 0, 1])
  bins = m.reliability_bins(probs, labels)
  assert bins['counts'][10] == 4 and bins['counts'].sum() == 4
  assert _close(m.expected_calibration_error(probs, labels), 0.05)
  # Confidence 1 and always right: acc 1, conf 1 in the last bin, ECE 0.
  probs = np.eye(3)[[0, 1, 2, 1]]
  assert _close(m.expected_calibration_error(probs, np.array([0, 1, 2, 1])), 0.0)
  assert m.reliability_bins(probs, np.array([0, 1, 2, 1]))['counts'][14] == 4
  # Confidence 1 and always wrong: ECE 1.
  assert _close(m.expected_calibration_error(probs, np.array([1, 2, 0, 0])), 1.0)
  assert math.isnan(m.expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)))


def test_ece_bins_are_right_closed():
  # A confidence exactly on the edge 12/15 belongs to bin 11 ((11/15, 12/15]); a tie [0.5, 0.5]
  # has confidence 0.5 (7.5 -> bin 7) and predicts class 0.
  edge = np.linspace(0, 1, 16)[12]
  probs, labels = _two_class([edge, 0.5], [0, 1])
  bins = m.reliability_bins(probs, labels)
  assert bins['counts'][11] == 1 and bins['counts'][12] == 0 and bins['counts'][7] == 1
  assert bins['accuracy'][7] == 0.0   # the tie predicts class 0, the label is 1


def test_reliability_diagram_png(tmp_path):
  # The single-bin case: one bar in bin 10 (conf 0.7), accuracy 0.75 above its confidence.
  probs, labels = _two_class([0.7] * 4, [0, 0, 0, 1])
  path = str(tmp_path / 'sub' / 'reliability.png')
  bins = m.reliability_diagram_png(probs, labels, path, title='hand case')
  np.testing.assert_array_equal(bins['counts'], m.reliability_bins(probs, labels)['counts'])
  img = Image.open(path).convert('RGB')
  assert img.size == (760, 600)
  left, right, top, bottom = m.PLOT_MARGINS
  pw, ph = img.size[0] - left - right, img.size[1] - top - bottom

  def pixel(conf, acc):
    return img.getpixel((int(left + conf * pw), int(top + (1 - acc) * ph)))

  centre = lambda b: (b + 0.5) / 15
  assert pixel(centre(10), 0.3) == m.BAR_COLOR        # the bar, below accuracy 0.75
  assert pixel(centre(10), 0.725) == m.GAP_COLOR      # between conf 0.7 and acc 0.75
  assert pixel(centre(3), 0.3) == (255, 255, 255)     # an empty bin stays blank
  assert pixel(centre(10), 0.9) == (255, 255, 255)     # nothing above the bar and its count
  # Grey (diagonal) pixels exist where accuracy = confidence, in an empty region.
  diag = [pixel(t, t) for t in np.linspace(0.05, 0.35, 31)]
  assert m.DIAGONAL_COLOR in diag
  # Many examples, every bin: still writes (counts abbreviated), empty input too.
  rng = np.random.default_rng(0)
  conf = rng.uniform(0.5, 1.0, 20000)
  probs, labels = _two_class(conf, (rng.uniform(size=conf.size) > conf).astype(int))
  m.reliability_diagram_png(probs, labels, str(tmp_path / 'many.png'))
  m.reliability_diagram_png(np.zeros((0, 2)), np.zeros(0, int), str(tmp_path / 'empty.png'))
  assert Image.open(str(tmp_path / 'empty.png')).size == (760, 600)


# ----------------------------------------------------------------------------- Mikels ----

def test_wheel_order_and_distances():
  assert m.MIKELS_WHEEL == ('amusement', 'excitement', 'anger', 'disgust',
                            'fear', 'sadness', 'awe', 'contentment')
  # Positions: amusement 0, excitement 1, anger 2, disgust 3, fear 4, sadness 5, awe 6,
  # contentment 7; distance = min(|i - j|, 8 - |i - j|).
  assert m.wheel_distance('amusement', 'amusement') == 0
  assert m.wheel_distance('amusement', 'contentment') == 1   # |0-7| = 7 -> 8-7 = 1 (wraps)
  assert m.wheel_distance('amusement', 'fear') == 4          # |0-4| = 4: opposite
  assert m.wheel_distance('excitement', 'awe') == 3          # |1-6| = 5 -> 3
  assert m.wheel_distance('anger', 'contentment') == 3       # |2-7| = 5 -> 3
  assert m.wheel_distance('disgust', 'sadness') == 2
  assert m.wheel_distance('sadness', 'awe') == 1             # neighbours across polarity
  assert m.wheel_distance('Amusement ', 'FEAR') == 4         # names are case-insensitive
  with pytest.raises(ValueError, match='joy'):
    m.wheel_distance('joy', 'fear')
  # The positive emotions fill one half of the wheel, the negative the other.
  positions = [m.MIKELS_WHEEL.index(e) for e in sorted(m.POSITIVE_EMOTIONS)]
  assert sorted((p + 2) % 8 for p in positions) == [0, 1, 2, 3]


def test_wheel_distance_matrix_in_dataset_order():
  d = m.wheel_distance_matrix(EMOSET_ORDER)
  # EmoSet order -> wheel positions [0, 6, 7, 1, 2, 3, 4, 5]; row amusement:
  # to amusement 0, awe |0-6|=6->2, contentment 1, excitement 1, anger 2, disgust 3, fear 4,
  # sadness |0-5|=5->3.
  np.testing.assert_array_equal(d[0], [0, 2, 1, 1, 2, 3, 4, 3])
  assert (d == d.T).all() and (np.diag(d) == 0).all()
  for row in d:  # every emotion sees 0, 1, 1, 2, 2, 3, 3, 4 around the wheel
    assert sorted(row) == [0, 1, 1, 2, 2, 3, 3, 4]


def _hand_mikels_confusion():
  """In SORTED_ORDER: amusement 0(+), anger 1(-), awe 2(+), contentment 3(+), disgust 4(-),
  excitement 5(+), fear 6(-), sadness 7(-)."""
  idx = {n: i for i, n in enumerate(SORTED_ORDER)}
  c = np.zeros((8, 8), int)
  for true, pred, count in [
      ('amusement', 'amusement', 3),     # same polarity, distance 0
      ('amusement', 'excitement', 2),    # same polarity, distance 1
      ('amusement', 'fear', 1),          # polarity wrong, distance 4
      ('anger', 'disgust', 4),           # same polarity, distance 1
      ('anger', 'awe', 1),               # polarity wrong, distance |2-6| = 4
      ('sadness', 'awe', 2),             # polarity wrong, distance |5-6| = 1
      ('contentment', 'sadness', 3),     # polarity wrong, distance |7-5| = 2
  ]:
    c[idx[true], idx[pred]] = count
  return c


def test_polarity_and_wheel_error_by_hand():
  c = _hand_mikels_confusion()
  # N = 3+2+1+4+1+2+3 = 16; polarity right: 3 + 2 + 4 = 9 -> 9/16.
  assert _close(m.polarity_accuracy(c, SORTED_ORDER), 9 / 16)
  # Wheel distance total: 0·3 + 1·2 + 4·1 + 1·4 + 4·1 + 1·2 + 2·3 = 22.
  # Random expectation: every row of D averages 16/8 = 2 -> 2·N = 32.  WWE = 22/32 = 11/16.
  assert _close(m.wheel_weighted_error(c, SORTED_ORDER), 11 / 16)
  assert m.mikels_metrics(c, SORTED_ORDER) == pytest.approx(
      {'polarity_accuracy': 9 / 16, 'wheel_weighted_error': 11 / 16})
  assert _close(m.top1_accuracy(c), 3 / 16)


def test_mikels_metrics_do_not_depend_on_label_order():
  c = _hand_mikels_confusion()
  perm = [SORTED_ORDER.index(n) for n in EMOSET_ORDER]   # EmoSet label i = sorted label perm[i]
  c_emoset = c[np.ix_(perm, perm)]
  assert m.mikels_metrics(c_emoset, EMOSET_ORDER) == pytest.approx(
      m.mikels_metrics(c, SORTED_ORDER))


def test_wheel_error_random_is_one_perfect_is_zero():
  # Uniform-random confusion: every entry equal -> numerator 3·Σ D = 3·8·16 = 384,
  # denominator Σ_i 24·2 = 384 -> 1.
  uniform = np.full((8, 8), 3)
  assert _close(m.wheel_weighted_error(uniform, EMOSET_ORDER), 1.0)
  # Skewed true classes, each row spread uniformly (expected counts n_i / 8): still 1, since
  # every row of D has mean 2 -> numerator Σ_i (n_i/8)·16 = 2·N = denominator.
  n = np.array([8, 16, 0, 24, 8, 8, 40, 8], float)
  assert _close(m.wheel_weighted_error(np.repeat(n[:, None] / 8, 8, axis=1), SORTED_ORDER), 1.0)
  # Uniform random polarity: 4 of the 8 predictions share the polarity -> 1/2.
  assert _close(m.polarity_accuracy(uniform, EMOSET_ORDER), 0.5)
  # Perfect: 0 (and polarity 1).
  perfect = np.diag([5, 1, 2, 3, 4, 5, 6, 7])
  assert m.wheel_weighted_error(perfect, SORTED_ORDER) == 0.0
  assert m.polarity_accuracy(perfect, SORTED_ORDER) == 1.0
  # Always the opposite emotion: distance 4 each -> 4N / 2N = 2.
  opposite = np.zeros((8, 8), int)
  for i, name in enumerate(SORTED_ORDER):
    across = m.MIKELS_WHEEL[(m.MIKELS_WHEEL.index(name) + 4) % 8]
    opposite[i, SORTED_ORDER.index(across)] = 3
  assert _close(m.wheel_weighted_error(opposite, SORTED_ORDER), 2.0)
  assert m.polarity_accuracy(opposite, SORTED_ORDER) == 0.0
  # An actual random classifier on skewed labels scores 1 in expectation.
  rng = np.random.default_rng(0)
  labels = rng.choice(8, size=40000, p=[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
  c = m.confusion_from_predictions(labels, rng.integers(0, 8, labels.size), 8)
  assert abs(m.wheel_weighted_error(c, SORTED_ORDER) - 1.0) < 0.02
  assert math.isnan(m.wheel_weighted_error(np.zeros((8, 8)), SORTED_ORDER))


def test_non_mikels_data_sets():
  c = np.eye(6, dtype=int)
  assert m.mikels_metrics(c, EMOTION6) == {}
  assert m.mikels_metrics(np.eye(8), SORTED_ORDER[:7] + ('joy',)) == {}
  assert not m.is_mikels(SORTED_ORDER[:7])
  assert m.is_mikels([n.capitalize() for n in EMOSET_ORDER])
  with pytest.raises(ValueError, match='8 Mikels emotions'):
    m.polarity_accuracy(c, EMOTION6)
  with pytest.raises(ValueError, match='8 Mikels emotions'):
    m.wheel_weighted_error(c, EMOTION6)


# ------------------------------------------------------------------------------ report ----

def test_report_without_probabilities_is_json():
  r = m.classification_report(EDGE, ['a', 'b', 'c', 'd', 'e'])
  text = json.dumps(r, allow_nan=False)   # raises if any NaN slipped through
  assert json.loads(text) == r
  assert r['num_examples'] == 11 and r['confusion_matrix'] == EDGE.tolist()
  assert _close(r['top1'], 6 / 11) and _close(r['macro_f1'], 27 / 88)
  assert r['per_class_recall'] == pytest.approx(
      {'a': 0.8, 'b': 0.5, 'c': None, 'd': 0.0, 'e': None})
  assert r['per_class_precision']['d'] is None and r['per_class_f1']['e'] is None
  assert 'ece' not in r and 'polarity_accuracy' not in r
  assert all(type(v) is int for row in r['confusion_matrix'] for v in row)


def test_report_with_probabilities_and_mikels():
  # Eight examples in EmoSet order, two-hot rows so that confidence and top-3 are by hand:
  # row = 0.8 on the prediction, 0.2 on a second class.
  pred = np.array([0, 0, 1, 4, 4, 7, 6, 3])
  second = np.array([1, 2, 2, 5, 5, 6, 7, 0])
  labels = np.array([0, 1, 1, 4, 5, 6, 6, 3])
  probs = np.zeros((8, 8))
  probs[np.arange(8), pred] = 0.8
  probs[np.arange(8), second] = 0.2
  c = m.confusion_from_predictions(labels, pred, 8)
  r = m.classification_report(c, EMOSET_ORDER, probs, labels)
  json.dumps(r, allow_nan=False)
  # top-1: right at rows 0, 2, 3, 6, 7 -> 5/8. Top-3 adds row 4 (label 5 = its second
  # class) and row 5 (label 6 = its second class); row 1 ranks 0 (0.8), 2 (0.2), then the
  # zeros by lowest id, so its third class is 1 = its label -> 8/8.
  assert _close(r['top1'], 5 / 8) and _close(r['top3'], 1.0)
  # All confidences 0.8 (12 -> bin 11): acc 5/8 = 0.625 -> ECE = |0.625 - 0.8| = 0.175.
  assert _close(r['ece'], 0.175) and r['ece_bins'] == 15
  assert r['reliability']['counts'][11] == 8 and r['reliability']['accuracy'][0] is None
  # Errors, EmoSet order: (awe -> amusement) d 2, same polarity; (disgust -> anger) d 1, same;
  # (fear -> sadness) d 1, same. Polarity 8/8; WWE = (2 + 1 + 1) / (2·8) = 1/4.
  assert _close(r['polarity_accuracy'], 1.0)
  assert _close(r['wheel_weighted_error'], 0.25)


def test_report_rejects_mismatched_inputs():
  probs, labels = _two_class([0.7] * 4, [0, 0, 0, 1])
  c = m.confusion_from_predictions(labels, probs.argmax(1), 2)
  with pytest.raises(ValueError, match='same examples'):
    m.classification_report(c * 2, ['x', 'y'], probs, labels)
  with pytest.raises(ValueError, match='together'):
    m.classification_report(c, ['x', 'y'], probs)
  with pytest.raises(ValueError, match='class names'):
    m.classification_report(c, ['x'])
  with pytest.raises(ValueError, match='softmax'):
    m.expected_calibration_error(probs * 3 - 1, labels)
  with pytest.raises(ValueError, match='labels must lie'):
    m.top_k_accuracy(probs, np.array([0, 1, 2, 0]), 1)
  with pytest.raises(ValueError, match='square'):
    m.top1_accuracy(np.zeros((2, 3)))
