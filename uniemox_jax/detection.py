"""YOLOv3 post-processing as pure jax functions with static shapes, for ``jax.jit`` over batches.

  raw head outputs ─► decode (anchors, sigmoid/exp) ─► confidence = objectness × class prob
    ─► per-class greedy NMS (fixed ``max_boxes``, padded, plus a count)
    ─► boxes mapped from the network input back to pixels of the original image

Conventions (Darknet's, so results match it): a raw output ``[B, h, w, A·(5 + C)]`` holds per
cell and anchor ``tx, ty, tw, th, objectness, class logits``; the box centre is
``((col + σ(tx)) / w, (row + σ(ty)) / h)`` of the input, its size the anchor (input pixels)
times ``exp(tw), exp(th)``; YOLOv3's classes are independent sigmoids. A candidate — a
(box, class) pair — is kept when its confidence is ``>= score_threshold`` (Darknet keeps
``>``; they differ only for exact equality, and ``>=`` is the rule the person boxes file is
read with). NMS is greedy per class in decreasing confidence: a candidate is dropped when its
IoU with a kept one of the same class is ``> iou_threshold``. Ties in confidence go to the
lower candidate index (candidates are ordered by head, then row, column, anchor, class).

Boxes are ``[x0, y0, x1, y1]`` in continuous pixel coordinates (``x1`` exclusive, the way
``PIL.Image.crop`` reads them). IoU is invariant to scaling x and y separately, so NMS in
network-input pixels gives the same result as Darknet's NMS in image-relative coordinates,
for letterboxed and squashed inputs alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PAD_VALUE = 0.5   # Darknet's letterbox grey, in [0, 1] pixels (127.5 of 255)


class Detections(NamedTuple):
  """Up to ``M`` detections per image, best first, padded.

  Attributes:
    boxes: float32 ``[B, M, 4]`` ``x0, y0, x1, y1`` (zeros for padding).
    scores: float32 ``[B, M]`` confidence = objectness × class probability (0 for padding).
    classes: int32 ``[B, M]`` class index (-1 for padding).
    count: int32 ``[B]`` how many of the ``M`` slots are detections.
    more: bool ``[B]`` candidates above the threshold were left unexamined because ``M``
      slots (or ``pre_nms_top_k`` candidates) were full: the list is the best ``M``, not all.
  """
  boxes: jnp.ndarray
  scores: jnp.ndarray
  classes: jnp.ndarray
  count: jnp.ndarray
  more: jnp.ndarray


def network_input(pixels: jnp.ndarray, region: jnp.ndarray) -> jnp.ndarray:
  """uint8 canvases → the network's float input, grey ``PAD_VALUE`` outside the image.

  Args:
    pixels: uint8 ``[B, H, W, 3]``, the (letterboxed or squashed) image on a canvas.
    region: int32 ``[B, 4]`` ``x0, y0, w, h`` of the image inside the canvas, in canvas
      pixels (the whole canvas for squashed inputs).

  Returns:
    float32 ``[B, H, W, 3]`` in [0, 1]: ``pixels / 255`` inside ``region``, 0.5 outside
    (the host sends bytes; the exact Darknet grey 127.5/255 is set here).
  """
  x = pixels.astype(jnp.float32) / 255.0
  _, h, w, _ = pixels.shape
  region = region.astype(jnp.int32)
  cols = jnp.arange(w)[None, None, :]
  rows = jnp.arange(h)[None, :, None]
  x0, y0, rw, rh = (region[:, i, None, None] for i in range(4))
  inside = (cols >= x0) & (cols < x0 + rw) & (rows >= y0) & (rows < y0 + rh)
  return jnp.where(inside[..., None], x, PAD_VALUE)


def decode_head(raw: jnp.ndarray, anchors: jnp.ndarray | Sequence[Sequence[float]],
                input_size: tuple[int, int]
                ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """One head's raw output → boxes, objectness and class probabilities.

  Args:
    raw: ``[B, h, w, A·(5 + C)]`` the head conv's output.
    anchors: ``[A, 2]`` this head's anchors ``(w, h)`` in input pixels (the cfg's masked ones).
    input_size: ``(W, H)`` of the network input in pixels.

  Returns:
    ``boxes`` float32 ``[B, h·w·A, 4]`` (``x0, y0, x1, y1`` input pixels), ``objectness``
    ``[B, h·w·A]`` and ``class_prob`` ``[B, h·w·A, C]``, in the order row, column, anchor.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  a = anchors.shape[0]
  b, h, w, ch = raw.shape
  if ch % a or ch // a < 6:
    raise ValueError(f'decode_head: {ch} channels are not {a} anchors x (5 + classes)')
  r = raw.astype(jnp.float32).reshape(b, h, w, a, ch // a)
  width, height = input_size
  cols = jnp.arange(w, dtype=jnp.float32)[None, None, :, None]
  rows = jnp.arange(h, dtype=jnp.float32)[None, :, None, None]
  cx = (cols + jax.nn.sigmoid(r[..., 0])) / w * width
  cy = (rows + jax.nn.sigmoid(r[..., 1])) / h * height
  bw = jnp.exp(r[..., 2]) * anchors[:, 0]
  bh = jnp.exp(r[..., 3]) * anchors[:, 1]
  boxes = jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
  objectness = jax.nn.sigmoid(r[..., 4])
  class_prob = jax.nn.sigmoid(r[..., 5:])
  n = h * w * a
  return boxes.reshape(b, n, 4), objectness.reshape(b, n), class_prob.reshape(b, n, -1)


def decode(raws: Sequence[jnp.ndarray], anchors: Sequence[Sequence[Sequence[float]]],
           input_size: tuple[int, int]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """All heads → ``boxes`` ``[B, N, 4]`` (input pixels) and confidences ``[B, N, C]``.

  ``anchors[i]`` are head ``i``'s; candidates are concatenated in head order.
  """
  if len(raws) != len(anchors):
    raise ValueError(f'decode: {len(raws)} head outputs but {len(anchors)} anchor sets')
  boxes, scores = [], []
  for raw, anc in zip(raws, anchors):
    bx, obj, prob = decode_head(raw, anc, input_size)
    boxes.append(bx)
    scores.append(obj[..., None] * prob)
  return jnp.concatenate(boxes, axis=1), jnp.concatenate(scores, axis=1)


def iou(box: jnp.ndarray, boxes: jnp.ndarray) -> jnp.ndarray:
  """IoU of ``box`` ``[..., 4]`` with each of ``boxes`` ``[..., K, 4]`` → ``[..., K]``
  (0 where the union is empty)."""
  box = box[..., None, :]

  def extent(lo, hi):
    return jnp.maximum(jnp.minimum(box[..., hi], boxes[..., hi])
                       - jnp.maximum(box[..., lo], boxes[..., lo]), 0)

  def area(b):
    return jnp.maximum(b[..., 2] - b[..., 0], 0) * jnp.maximum(b[..., 3] - b[..., 1], 0)

  inter = extent(0, 2) * extent(1, 3)
  union = area(box) + area(boxes) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, *, score_threshold: float,
        iou_threshold: float, max_boxes: int, pre_nms_top_k: int | None = None
        ) -> Detections:
  """Per-class greedy NMS with static shapes.

  Args:
    boxes: float ``[B, N, 4]`` ``x0, y0, x1, y1``.
    scores: float ``[B, N, C]`` confidence of each box for each class.
    score_threshold: candidates need confidence ``>=`` this (in [0, 1]).
    iou_threshold: a candidate is suppressed by a kept one of its class with IoU ``>`` this.
    max_boxes: ``M``, the detections returned per image.
    pre_nms_top_k: when set, only the best ``K`` of the ``N·C`` candidates enter NMS (a
      stable sort, so ties keep the lower index); the result is then exactly the best
      detections of full NMS as long as ``more`` is False. None: all candidates (exact;
      the cost is ``M`` passes over ``N·C`` values, cheap for one class).

  Returns:
    :class:`Detections` with ``M`` slots, in ``boxes``' coordinates.
  """
  if max_boxes < 1:
    raise ValueError(f'nms: max_boxes must be >= 1, got {max_boxes}')
  if not 0.0 <= score_threshold <= 1.0:
    raise ValueError(f'nms: score_threshold must be in [0, 1], got {score_threshold}')
  b, n, c = scores.shape
  flat = scores.astype(jnp.float32).reshape(b, n * c)
  removed = jnp.float32(-1.0)     # below any confidence: marks dropped candidates
  s = jnp.where(flat >= score_threshold, flat, removed)
  more_pre = jnp.zeros((b,), bool)
  if pre_nms_top_k is not None and pre_nms_top_k < n * c:
    order = jnp.argsort(-s, axis=-1, stable=True)
    ranked = jnp.take_along_axis(s, order, axis=-1)
    more_pre = ranked[:, pre_nms_top_k] >= score_threshold
    order, s = order[:, :pre_nms_top_k], ranked[:, :pre_nms_top_k]
  else:
    order = jnp.broadcast_to(jnp.arange(n * c), (b, n * c))
  k = s.shape[1]
  cand_boxes = jnp.take_along_axis(boxes.astype(jnp.float32), (order // c)[..., None], axis=1)
  cand_cls = (order % c).astype(jnp.int32)
  slots = jnp.arange(k)

  def step(t, carry):
    s, out_boxes, out_scores, out_cls, count = carry
    j = jnp.argmax(s, axis=-1)                       # first of equal maxima: lower index
    best = jnp.take_along_axis(s, j[:, None], axis=-1)[:, 0]
    valid = best >= score_threshold
    box = jnp.take_along_axis(cand_boxes, j[:, None, None], axis=1)[:, 0]
    cls = jnp.take_along_axis(cand_cls, j[:, None], axis=-1)[:, 0]
    overlap = iou(box, cand_boxes) > iou_threshold
    suppress = ((cand_cls == cls[:, None]) & overlap) | (slots[None] == j[:, None])
    s = jnp.where(valid[:, None] & suppress, removed, s)
    out_boxes = out_boxes.at[:, t].set(jnp.where(valid[:, None], box, 0.0))
    out_scores = out_scores.at[:, t].set(jnp.where(valid, best, 0.0))
    out_cls = out_cls.at[:, t].set(jnp.where(valid, cls, -1))
    return s, out_boxes, out_scores, out_cls, count + valid.astype(jnp.int32)

  init = (s, jnp.zeros((b, max_boxes, 4), jnp.float32), jnp.zeros((b, max_boxes), jnp.float32),
          jnp.full((b, max_boxes), -1, jnp.int32), jnp.zeros((b,), jnp.int32))
  s, out_boxes, out_scores, out_cls, count = jax.lax.fori_loop(0, max_boxes, step, init)
  more = jnp.any(s >= score_threshold, axis=-1) | more_pre
  return Detections(out_boxes, out_scores, out_cls, count, more)


def to_original(boxes: jnp.ndarray, region: jnp.ndarray, size: jnp.ndarray) -> jnp.ndarray:
  """Boxes in network-input pixels → pixels of the original image, clipped to it.

  Args:
    boxes: ``[B, M, 4]`` ``x0, y0, x1, y1`` in input pixels.
    region: int ``[B, 4]`` ``x0, y0, w, h``: where the resized image sits in the input.
    size: int ``[B, 2]`` ``(W, H)`` of the original image.

  Returns:
    float32 ``[B, M, 4]`` in original pixels, each coordinate clipped to ``[0, W]`` or
    ``[0, H]``.
  """
  region = region.astype(jnp.float32)
  size = size.astype(jnp.float32)
  sx = size[:, 0] / region[:, 2]
  sy = size[:, 1] / region[:, 3]
  scale = jnp.stack([sx, sy, sx, sy], -1)[:, None]
  offset = jnp.stack([region[:, 0], region[:, 1]] * 2, -1)[:, None]
  limit = jnp.stack([size[:, 0], size[:, 1]] * 2, -1)[:, None]
  return jnp.clip((boxes.astype(jnp.float32) - offset) * scale, 0.0, limit)


def postprocess(raws: Sequence[jnp.ndarray], anchors: Sequence[Sequence[Sequence[float]]],
                input_size: tuple[int, int], region: jnp.ndarray, size: jnp.ndarray, *,
                score_threshold: float, iou_threshold: float, max_boxes: int,
                classes: Sequence[int] | None = None,
                pre_nms_top_k: int | None = None) -> Detections:
  """Raw head outputs → :class:`Detections` in original-image pixels.

  ``classes`` restricts detection to those class indices (e.g. ``(0,)``: COCO's person),
  and the returned ``classes`` are then still the network's class indices. Other arguments
  as in :func:`decode`, :func:`nms` and :func:`to_original`.
  """
  boxes, scores = decode(raws, anchors, input_size)
  if classes is not None:
    scores = scores[..., np.asarray(classes, np.int32)]
  det = nms(boxes, scores, score_threshold=score_threshold, iou_threshold=iou_threshold,
            max_boxes=max_boxes, pre_nms_top_k=pre_nms_top_k)
  cls = det.classes
  if classes is not None:
    table = jnp.asarray(classes, jnp.int32)
    cls = jnp.where(cls >= 0, table[jnp.maximum(cls, 0)], -1)
  filled = (jnp.arange(max_boxes)[None] < det.count[:, None])[..., None]
  boxes = jnp.where(filled, to_original(det.boxes, region, size), 0.0)
  return det._replace(boxes=boxes, classes=cls)
