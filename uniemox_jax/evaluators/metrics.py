"""Emotion-classification metrics: pure numpy functions and one PIL plot.

Inputs are a confusion matrix ``confusion`` ``[K, K]`` (rows = true class, columns =
predicted class; counts, integer or expected/fractional) and/or per-example probabilities
``probs`` ``[N, K]`` (softmax outputs, rows summing to 1) with integer ``labels`` ``[N]``.

* :func:`top1_accuracy` (confusion), :func:`top_k_accuracy` (probabilities).
* :func:`per_class_recall`, :func:`per_class_precision`, :func:`per_class_f1`,
  :func:`macro_f1`. Undefined values (a 0/0) are ``nan`` in the arrays and ``None`` in
  :func:`classification_report`; the rules are in each docstring.
* :func:`reliability_bins`, :func:`expected_calibration_error` (15 equal-width bins),
  :func:`reliability_diagram_png`.
* Mikels' eight emotions (EmoSet, Emo8, FI): :data:`MIKELS_WHEEL`, :func:`wheel_distance`,
  :func:`polarity_accuracy`, :func:`wheel_weighted_error`, :func:`mikels_metrics`.
* :func:`classification_report` gathers everything as plain JSON-able Python types.

This module depends on numpy and PIL only, so tools and notebooks can use it without JAX.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------------------------
# Mikels' eight emotions
# --------------------------------------------------------------------------------------------

MIKELS_WHEEL: tuple[str, ...] = (
    'amusement', 'excitement', 'anger', 'disgust',
    'fear', 'sadness', 'awe', 'contentment',
)
"""Mikels' eight emotion categories in wheel order (counter-clockwise; the list is circular,
so ``contentment`` is next to ``amusement``).

The categories are those of Mikels et al., "Emotional category data on images from the
International Affective Picture System", Behavior Research Methods 37(4), 2005. Their
arrangement on a circle is the "Emotion Circle" of Yang, Li, Li, Wang and Gao, "A
Circular-Structured Representation for Visual Emotion Distribution Learning", CVPR 2021
(arXiv:2106.12450), which places emotion j = 1..8 of this list at the angle
θ_j = (2j − 1)·π/8 (amusement 22.5°, excitement 67.5°, anger 112.5°, disgust 157.5°,
fear 202.5°, sadness 247.5°, awe 292.5°, contentment 337.5°), so that the four positive
emotions fill one half of the circle (awe, contentment, amusement, excitement) and the
four negative ones the other (anger, disgust, fear, sadness). We read this order from a
public re-implementation of that paper (repository
``Moon-shiyue/Research_on_Multi-Label_Emotion_Recognition_Based_on_Visual-Language_Models``,
``emotion_model/circular_head.py``, which cites the paper's Eq. 3); we could not read the
paper's own figure or text to confirm it. A wheel drawn with another order inside each half
changes the distances between emotions, so wheel-weighted errors are comparable only when
they use the same order.

Opposite pairs (distance 4): amusement–fear, excitement–sadness, anger–awe,
disgust–contentment.
"""

POSITIVE_EMOTIONS: frozenset[str] = frozenset(('amusement', 'awe', 'contentment', 'excitement'))
NEGATIVE_EMOTIONS: frozenset[str] = frozenset(('anger', 'disgust', 'fear', 'sadness'))

_WHEEL_POSITION = {name: i for i, name in enumerate(MIKELS_WHEEL)}
assert POSITIVE_EMOTIONS | NEGATIVE_EMOTIONS == set(MIKELS_WHEEL)


def _normalise_name(name: str) -> str:
  return str(name).strip().lower()


def is_mikels(class_names: Sequence[str]) -> bool:
  """True when ``class_names`` are exactly Mikels' eight emotions, in any order (names are
  compared lower-cased and stripped, so ``'Amusement'`` matches)."""
  names = [_normalise_name(n) for n in class_names]
  return len(names) == 8 and set(names) == set(MIKELS_WHEEL)


def _require_mikels(class_names: Sequence[str]) -> list[str]:
  if not is_mikels(class_names):
    raise ValueError(
        f'Mikels metrics need exactly the 8 Mikels emotions {sorted(MIKELS_WHEEL)} as class '
        f'names (any order); got {list(class_names)}. Use mikels_metrics(), which returns {{}} '
        'for other data sets.')
  return [_normalise_name(n) for n in class_names]


def wheel_distance(a: str, b: str) -> int:
  """Steps between emotions ``a`` and ``b`` around :data:`MIKELS_WHEEL` (0..4):
  ``min(|p_a − p_b|, 8 − |p_a − p_b|)`` with ``p`` the wheel position."""
  try:
    pa, pb = _WHEEL_POSITION[_normalise_name(a)], _WHEEL_POSITION[_normalise_name(b)]
  except KeyError as e:
    raise ValueError(f'{e.args[0]!r} is not one of Mikels\' emotions {MIKELS_WHEEL}.') from None
  d = abs(pa - pb)
  return min(d, 8 - d)


def wheel_distance_matrix(class_names: Sequence[str]) -> np.ndarray:
  """``D`` ``[8, 8]`` int, ``D[i, j] = wheel_distance(class_names[i], class_names[j])``: the
  wheel distances in the label order of a data set."""
  names = _require_mikels(class_names)
  return np.array([[wheel_distance(a, b) for b in names] for a in names], np.int64)


def polarity_accuracy(confusion: np.ndarray, class_names: Sequence[str]) -> float:
  """Fraction of examples whose predicted emotion has the true emotion's polarity.

  ``Σ_{i,j: pol(i) = pol(j)} C[i, j] / Σ_{i,j} C[i, j]``, positive = amusement, awe,
  contentment, excitement; negative = anger, disgust, fear, sadness. ``nan`` when the
  confusion matrix is empty.
  """
  c = _check_confusion(confusion)
  names = _require_mikels(class_names)
  if c.shape[0] != 8:
    raise ValueError(f'confusion is {c.shape}, class_names has 8 entries.')
  positive = np.array([n in POSITIVE_EMOTIONS for n in names])
  same = positive[:, None] == positive[None, :]
  n = c.sum()
  return float(c[same].sum() / n) if n > 0 else math.nan


def wheel_weighted_error(confusion: np.ndarray, class_names: Sequence[str]) -> float:
  """Error weighted by wheel distance, normalised so that uniformly random guessing scores 1.

  With ``D`` the :func:`wheel_distance_matrix`, ``n_i = Σ_j C[i, j]`` and ``N = Σ_i n_i``::

      WWE = (Σ_ij C[i, j] · D[i, j]) / (Σ_i n_i · (1/8) Σ_j D[i, j])

  The numerator is the total wheel distance of the predictions (a correct prediction costs 0,
  a neighbouring emotion 1, the opposite emotion 4). The denominator is its expectation for a
  classifier that predicts one of the 8 classes uniformly at random, independently of the
  image, on the same true classes. On the wheel every row of ``D`` holds 0, 1, 1, 2, 2, 3, 3, 4
  (mean 16/8 = 2), so the denominator is ``2·N`` whatever the class distribution and
  ``WWE = mean wheel distance / 2``. 0 = perfect, 1 = chance, 2 = always the opposite emotion.
  ``nan`` when the confusion matrix is empty.
  """
  c = _check_confusion(confusion)
  d = wheel_distance_matrix(class_names).astype(np.float64)
  if c.shape[0] != 8:
    raise ValueError(f'confusion is {c.shape}, class_names has 8 entries.')
  n_i = c.sum(axis=1)
  expected_random = float((n_i * d.mean(axis=1)).sum())
  if expected_random <= 0:
    return math.nan
  return float((c * d).sum() / expected_random)


def mikels_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
  """``{'polarity_accuracy': float, 'wheel_weighted_error': float}`` for a data set whose
  classes are Mikels' eight emotions (any order), ``{}`` for any other data set."""
  if not is_mikels(class_names):
    return {}
  return {
      'polarity_accuracy': polarity_accuracy(confusion, class_names),
      'wheel_weighted_error': wheel_weighted_error(confusion, class_names),
  }


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _check_confusion(confusion: np.ndarray) -> np.ndarray:
  c = np.asarray(confusion, dtype=np.float64)
  if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
    raise ValueError(f'confusion must be a square [K, K] matrix (rows true, columns predicted); '
                     f'got shape {c.shape}.')
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError('confusion must hold finite, non-negative counts.')
  return c


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(probs, dtype=np.float64)
  y = np.asarray(labels)
  if p.ndim != 2 or p.shape[1] == 0:
    raise ValueError(f'probs must be [N, K]; got shape {p.shape}.')
  if y.shape != (p.shape[0],):
    raise ValueError(f'labels must be [N] = [{p.shape[0]}] to match probs {p.shape}; '
                     f'got shape {y.shape}.')
  if y.size and not np.issubdtype(y.dtype, np.integer):
    if not np.all(np.equal(np.mod(y, 1), 0)):
      raise ValueError('labels must be integer class ids.')
  y = y.astype(np.int64)
  if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
    raise ValueError(f'labels must lie in [0, {p.shape[1]}); got min {y.min()}, max {y.max()}.')
  if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1 + 1e-6):
    raise ValueError('probs must be probabilities in [0, 1] (apply softmax to logits first).')
  if p.size and np.max(np.abs(p.sum(axis=1) - 1)) > 1e-3:
    raise ValueError('each row of probs must sum to 1 (apply softmax to logits first); '
                     f'worst row sums to {p.sum(axis=1)[np.argmax(np.abs(p.sum(axis=1) - 1))]}.')
  return p, y


def confusion_from_predictions(labels: np.ndarray, predictions: np.ndarray,
                               num_classes: int) -> np.ndarray:
  """Counts ``C`` ``[K, K]`` int64 with ``C[i, j]`` = examples of true class ``i`` predicted
  as ``j``, from ``labels`` ``[N]`` and ``predictions`` ``[N]`` (class ids)."""
  y, p = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  if y.shape != p.shape or y.ndim != 1:
    raise ValueError(f'labels {y.shape} and predictions {p.shape} must both be [N].')
  for name, a in (('labels', y), ('predictions', p)):
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(f'{name} must lie in [0, {num_classes}).')
  c = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(c, (y, p), 1)
  return c


# --------------------------------------------------------------------------------------------
# Accuracy, recall, precision, F1
# --------------------------------------------------------------------------------------------

def top1_accuracy(confusion: np.ndarray) -> float:
  """``trace(C) / Σ C``; ``nan`` for an empty matrix."""
  c = _check_confusion(confusion)
  n = c.sum()
  return float(np.trace(c) / n) if n > 0 else math.nan


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the ``k`` highest probabilities.

  ``probs`` ``[N, K]``, ``labels`` ``[N]``. Ties are broken towards the lower class id (as
  ``np.argmax`` and ``jax.lax.top_k`` do), so top-1 here equals the argmax confusion's
  :func:`top1_accuracy`. ``k ≥ K`` gives 1. ``nan`` when ``N = 0``.
  """
  p, y = _check_probs_labels(probs, labels)
  if k < 1:
    raise ValueError(f'k must be ≥ 1; got {k}.')
  if p.shape[0] == 0:
    return math.nan
  topk = np.argsort(-p, axis=1, kind='stable')[:, :k]
  return float((topk == y[:, None]).any(axis=1).mean())


def _tp_fp_fn(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  c = _check_confusion(confusion)
  tp = np.diag(c)
  return tp, c.sum(axis=0) - tp, c.sum(axis=1) - tp


def per_class_recall(confusion: np.ndarray) -> np.ndarray:
  """``[K]``: ``TP_k / (TP_k + FN_k)`` = ``C[k, k] / Σ_j C[k, j]`` (per-class accuracy);
  ``nan`` for a class with no true examples (no support)."""
  tp, _, fn = _tp_fp_fn(confusion)
  support = tp + fn
  return np.divide(tp, support, out=np.full(tp.shape, np.nan), where=support > 0)


def per_class_precision(confusion: np.ndarray) -> np.ndarray:
  """``[K]``: ``TP_k / (TP_k + FP_k)`` = ``C[k, k] / Σ_i C[i, k]``; ``nan`` for a class that is
  never predicted."""
  tp, fp, _ = _tp_fp_fn(confusion)
  predicted = tp + fp
  return np.divide(tp, predicted, out=np.full(tp.shape, np.nan), where=predicted > 0)


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
  """``[K]``: ``F1_k = 2·TP_k / (2·TP_k + FP_k + FN_k)`` (the harmonic mean of precision and
  recall, written so that it needs neither to be defined).

  A class with support but no predictions (precision undefined) gets 0, and so does a class
  that is predicted but has no support (recall undefined): both are pure errors. Only a class
  that is neither present nor predicted is ``nan``.
  """
  tp, fp, fn = _tp_fp_fn(confusion)
  denom = 2 * tp + fp + fn
  return np.divide(2 * tp, denom, out=np.full(tp.shape, np.nan), where=denom > 0)


def macro_f1(confusion: np.ndarray) -> float:
  """Unweighted mean of :func:`per_class_f1` over the classes that occur as a true label or as
  a prediction (the convention of scikit-learn's ``f1_score(average='macro')`` without an
  explicit label list). Classes that are neither true nor predicted are left out rather than
  counted as 0 or 1; ``nan`` for an empty matrix."""
  f1 = per_class_f1(confusion)
  present = ~np.isnan(f1)
  return float(f1[present].mean()) if present.any() else math.nan


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict:
  """Equal-width confidence bins of the top-1 prediction.

  Confidence ``conf_n = max_k probs[n, k]``, prediction ``argmax_k probs[n, k]`` (ties to the
  lower class id). Bin ``b`` (0-based) holds the examples with
  ``b/B < conf ≤ (b+1)/B`` (``conf = 0`` goes to bin 0), as in Guo et al., "On Calibration of
  Modern Neural Networks", ICML 2017.

  Returns numpy arrays: ``edges`` ``[B+1]``, ``counts`` ``[B]`` int, ``accuracy`` ``[B]`` and
  ``confidence`` ``[B]`` (mean correctness and mean confidence per bin; ``nan`` for an
  empty bin).
  """
  p, y = _check_probs_labels(probs, labels)
  if num_bins < 1:
    raise ValueError(f'num_bins must be ≥ 1; got {num_bins}.')
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  conf = p.max(axis=1) if p.shape[0] else np.zeros(0)
  correct = (p.argmax(axis=1) == y).astype(np.float64) if p.shape[0] else np.zeros(0)
  # searchsorted(side='left') returns i with edges[i-1] < conf <= edges[i]: right-closed bins.
  idx = np.clip(np.searchsorted(edges, conf, side='left') - 1, 0, num_bins - 1)
  counts = np.bincount(idx, minlength=num_bins).astype(np.int64)
  sum_correct = np.bincount(idx, weights=correct, minlength=num_bins)
  sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
  nan = np.full(num_bins, np.nan)
  return {
      'edges': edges,
      'counts': counts,
      'accuracy': np.divide(sum_correct, counts, out=nan.copy(), where=counts > 0),
      'confidence': np.divide(sum_conf, counts, out=nan.copy(), where=counts > 0),
  }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
  """``ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over the :func:`reliability_bins`
  (empty bins contribute 0), with the max probability as confidence. In [0, 1]; ``nan`` when
  ``N = 0``."""
  bins = reliability_bins(probs, labels, num_bins)
  counts = bins['counts']
  n = counts.sum()
  if n == 0:
    return math.nan
  full = counts > 0
  gap = np.abs(bins['accuracy'][full] - bins['confidence'][full])
  return float((counts[full] / n * gap).sum())


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font.
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
  x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
  return x1 - x0, y1 - y0


def _compact_count(n: int) -> str:
  if n < 1000:
    return str(n)
  if n < 10000:
    return f'{n / 1000:.1f}k'
  if n < 1000000:
    return f'{n // 1000}k'
  return f'{n / 1e6:.1f}M'


BAR_COLOR = (66, 114, 196)
GAP_COLOR = (240, 160, 150)
DIAGONAL_COLOR = (110, 110, 110)
PLOT_MARGINS = (80, 24, 64, 96)  # left, right, top, bottom of the plot area, in pixels


def reliability_diagram_png(probs: np.ndarray, labels: np.ndarray, path: str,
                            num_bins: int = 15, title: str | None = None,
                            size: tuple[int, int] = (760, 600)) -> dict:
  """Writes a reliability diagram to ``path`` (PNG) and returns its :func:`reliability_bins`.

  One bar per non-empty confidence bin whose height is the bin's accuracy (blue), the gap
  up or down to the bin's mean confidence shaded red, the diagonal ``accuracy = confidence``
  (perfect calibration) in grey, and the number of examples of each bin printed above it.
  The title gives the ECE, the number of bins and N.
  """
  bins = reliability_bins(probs, labels, num_bins)
  ece = expected_calibration_error(probs, labels, num_bins)
  width, height = size
  left, right, top, bottom = PLOT_MARGINS
  pw, ph = width - left - right, height - top - bottom
  img = Image.new('RGB', size, 'white')
  draw = ImageDraw.Draw(img)
  f_title, f_axis, f_tick, f_count = _font(18), _font(15), _font(13), _font(11)

  def xy(conf: float, acc: float) -> tuple[float, float]:
    return left + conf * pw, top + (1 - acc) * ph

  n = int(bins['counts'].sum())
  head = title or 'Reliability diagram'
  ece_text = 'n/a' if math.isnan(ece) else f'{ece:.4f}'
  draw.text((left, 10), head, fill='black', font=f_title)
  draw.text((left, 34), f'ECE = {ece_text}   ({num_bins} equal-width bins, N = {n})',
            fill='black', font=f_axis)

  # Grid and ticks every 0.2.
  for t in np.linspace(0, 1, 6):
    gx, _ = xy(t, 0)
    _, gy = xy(0, t)
    draw.line([gx, top, gx, top + ph], fill=(232, 232, 232))
    draw.line([left, gy, left + pw, gy], fill=(232, 232, 232))
    label = f'{t:.1f}'
    tw, th = _text_size(draw, label, f_tick)
    draw.text((gx - tw / 2, top + ph + 6), label, fill='black', font=f_tick)
    draw.text((left - tw - 8, gy - th / 2 - 2), label, fill='black', font=f_tick)

  edges = bins['edges']
  count_labels = []
  for b in range(num_bins):
    count = int(bins['counts'][b])
    if count == 0:
      continue
    acc, conf = float(bins['accuracy'][b]), float(bins['confidence'][b])
    x0, _ = xy(edges[b], 0)
    x1, _ = xy(edges[b + 1], 0)
    _, y_acc = xy(0, acc)
    _, y_conf = xy(0, conf)
    _, y_zero = xy(0, 0)
    if acc > 0:
      draw.rectangle([x0 + 1, y_acc, x1 - 1, y_zero], fill=BAR_COLOR, outline=(30, 60, 120))
    if abs(y_conf - y_acc) >= 1:
      # The gap between accuracy and mean confidence, above the bar (over-confident bin) or
      # over its top part (under-confident bin).
      draw.rectangle([x0 + 1, min(y_acc, y_conf), x1 - 1, max(y_acc, y_conf)],
                     fill=GAP_COLOR, outline=(200, 90, 80))
    text = _compact_count(count)
    tw, th = _text_size(draw, text, f_count)
    ty = min(y_acc, y_conf) - th - 8
    if ty < top + 2:  # no room above a bar that reaches the top: write inside it
      ty = top + 4
    count_labels.append(((x0 + x1) / 2 - tw / 2, ty, text, tw, th))

  # Perfect calibration: the diagonal, dashed so that bars under it stay visible.
  steps = 40
  for s in range(0, steps, 2):
    a, c = s / steps, (s + 1) / steps
    draw.line([*xy(a, a), *xy(c, c)], fill=DIAGONAL_COLOR, width=2)
  draw.rectangle([left, top, left + pw, top + ph], outline='black')
  # Counts last, on a white patch, so that neither bars nor the diagonal hide them.
  for tx, ty, text, tw, th in count_labels:
    draw.rectangle([tx - 2, ty, tx + tw + 2, ty + th + 5], fill='white')
    draw.text((tx, ty), text, fill='black', font=f_count)

  xl = 'confidence (max probability)'
  tw, _ = _text_size(draw, xl, f_axis)
  draw.text((left + pw / 2 - tw / 2, top + ph + 28), xl, fill='black', font=f_axis)
  yl = 'accuracy'
  tw, th = _text_size(draw, yl, f_axis)
  label_img = Image.new('RGB', (tw + 4, th + 8), 'white')
  ImageDraw.Draw(label_img).text((2, 0), yl, fill='black', font=f_axis)
  label_img = label_img.rotate(90, expand=True)
  img.paste(label_img, (14, int(top + ph / 2 - label_img.height / 2)))

  # Legend below the x label.
  lx, ly = left, height - 30
  for swatch, name in ((BAR_COLOR, 'accuracy in bin'), (GAP_COLOR, 'gap to mean confidence'),
                       (None, 'perfect calibration'), (None, 'number above bar = examples')):
    if swatch is not None:
      draw.rectangle([lx, ly + 2, lx + 14, ly + 14], fill=swatch)
      lx += 20
    elif name == 'perfect calibration':
      draw.line([lx, ly + 8, lx + 18, ly + 8], fill=DIAGONAL_COLOR, width=2)
      lx += 24
    draw.text((lx, ly), name, fill='black', font=f_tick)
    lx += _text_size(draw, name, f_tick)[0] + 22

  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  img.save(path)
  return bins


# --------------------------------------------------------------------------------------------
# Everything, for results.json
# --------------------------------------------------------------------------------------------

def _json_float(x) -> float | None:
  x = float(x)
  return None if math.isnan(x) else x


def _by_name(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
  return {str(name): _json_float(v) for name, v in zip(names, values)}


def classification_report(confusion: np.ndarray, class_names: Sequence[str],
                          probs: np.ndarray | None = None, labels: np.ndarray | None = None,
                          num_bins: int = 15) -> dict:
  """Every metric of one evaluation as plain JSON-able Python (``json.dump`` writes it as is).

  Args:
    confusion: ``[K, K]`` counts, rows = true class, columns = predicted (top-1) class.
    class_names: ``K`` names in label order.
    probs: optional ``[N, K]`` softmax probabilities of the same examples; with ``labels``
      it adds ``top3``, ``ece`` and the ``reliability`` bins.
    labels: optional ``[N]`` true class ids (required with ``probs``).
    num_bins: confidence bins of the ECE (15 by default).

  Returns:
    ``num_examples``, ``class_names``, ``confusion_matrix`` (list of lists), ``top1``,
    ``per_class_recall`` / ``per_class_precision`` / ``per_class_f1`` (dicts name → value),
    ``macro_f1``; with probabilities also ``top3``, ``ece``, ``ece_bins`` and ``reliability``
    (``counts``, ``accuracy``, ``confidence`` per bin); for Mikels' eight emotions also
    ``polarity_accuracy`` and ``wheel_weighted_error``. Undefined values (0/0) are ``None``.
  """
  c = _check_confusion(confusion)
  names = [str(n) for n in class_names]
  if len(names) != c.shape[0]:
    raise ValueError(f'{len(names)} class names for a {c.shape} confusion matrix.')
  total = c.sum()
  integral = bool(np.all(c == np.round(c)))
  report: dict = {
      'num_examples': int(round(total)) if integral else float(total),
      'class_names': names,
      'confusion_matrix': (c.astype(np.int64).tolist() if integral else c.tolist()),
      'top1': _json_float(top1_accuracy(c)),
      'per_class_recall': _by_name(per_class_recall(c), names),
      'per_class_precision': _by_name(per_class_precision(c), names),
      'per_class_f1': _by_name(per_class_f1(c), names),
      'macro_f1': _json_float(macro_f1(c)),
  }
  if (probs is None) != (labels is None):
    raise ValueError('Pass probs and labels together (or neither).')
  if probs is not None:
    p, y = _check_probs_labels(probs, labels)
    if p.shape[1] != c.shape[0]:
      raise ValueError(f'probs has {p.shape[1]} classes, the confusion matrix {c.shape[0]}.')
    if not math.isclose(p.shape[0], total):
      raise ValueError(f'probs has {p.shape[0]} examples, the confusion matrix counts {total}: '
                       'they must describe the same examples.')
    bins = reliability_bins(p, y, num_bins)
    report.update({
        'top3': _json_float(top_k_accuracy(p, y, 3)),
        'ece': _json_float(expected_calibration_error(p, y, num_bins)),
        'ece_bins': int(num_bins),
        'reliability': {
            'counts': [int(v) for v in bins['counts']],
            'accuracy': [_json_float(v) for v in bins['accuracy']],
            'confidence': [_json_float(v) for v in bins['confidence']],
        },
    })
  report.update({k: _json_float(v) for k, v in mikels_metrics(c, names).items()})
  return report
