"""Mixup / CutMix on the device, with label smoothing and the matching soft-target loss.

Pure JAX with static shapes (the CutMix box is a mask, not a dynamic slice), so it runs inside
the jitted fine-tuning step on a batch sharded over devices; randomness comes from an explicit
key (e.g. `jax.random.fold_in(key, step)`).

Semantics are timm's `Mixup(mode='batch')` as used by the released fine-tuning recipe
(mixup 0.8, cutmix 1.0, prob 1, switch 0.5, label smoothing 0.1):
  - one λ per batch; with probability `prob` the batch is mixed, by CutMix with probability
    `switch_prob` (when both alphas > 0) else by Mixup, λ ~ Beta(α, α) of the chosen method;
  - the partner of sample i is sample B-1-i (the batch mixed with its reverse, `x.flip(0)`);
  - Mixup: x ← λ·x + (1-λ)·x_rev;
  - CutMix: a box of sides `int(H·sqrt(1-λ))`, `int(W·sqrt(1-λ))` centred at a uniform pixel,
    half-sides `side // 2`, clipped to the image, is pasted from x_rev; with `correct_lam`, λ
    becomes 1 - (box area / image area) after clipping;
  - targets = λ·smooth(y) + (1-λ)·smooth(y_rev), smooth = (1-ε)·one_hot + ε/K.

The batch's global order decides the pairs, so the result does not depend on how the batch is
sharded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """Integer labels `[B]` → float32 `[B, K]`: `1 - ε + ε/K` on the label, `ε/K` elsewhere."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return jnp.where(one_hot > 0, jnp.float32(on), jnp.float32(off))


def soft_cross_entropy(logits: jax.Array, soft_targets: jax.Array) -> jax.Array:
  """Mean over the batch of `-Σ_k t_k log softmax(logits)_k`; `[B, K]` each; float32 scalar."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(soft_targets.astype(jnp.float32) * log_probs, axis=-1))


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm's `rand_bbox`: `(y0, y1, x0, x1)` int32 scalars, y1/x1 exclusive, clipped to the image.

  The unclipped box has sides `2 * (int(H·sqrt(1-λ)) // 2)` (and the same for W) around a centre
  drawn uniformly from the pixel grid, so λ = 1 gives an empty box.
  """
  ratio = jnp.sqrt(jnp.clip(1.0 - jnp.asarray(lam, jnp.float32), 0.0, 1.0))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height, dtype=jnp.int32)
  cx = jax.random.randint(key_x, (), 0, width, dtype=jnp.int32)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)
  y1 = jnp.clip(cy + cut_h // 2, 0, height)
  x0 = jnp.clip(cx - cut_w // 2, 0, width)
  x1 = jnp.clip(cx + cut_w // 2, 0, width)
  return y0, y1, x0, x1


def mix_with_lambda(
    key: jax.Array, images: jax.Array, labels: jax.Array, lam: jax.Array | float,
    use_cutmix: jax.Array | bool, *, num_classes: int, label_smoothing: float = 0.1,
    correct_lam: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes the batch with its reverse for a given λ and method.

  Args:
    key: draws the CutMix box centre (:func:`cutmix_box` with the same key gives the box).
    images: `[B, H, W, C]` floating point (normalised pixels).
    labels: `[B]` integer class ids.
    lam: the mixing weight λ of the original sample (1 = unchanged).
    use_cutmix: bool (Python or traced): CutMix instead of Mixup.
  Returns:
    `(images, soft_targets [B, K] float32, lam)`, `lam` being the λ the targets used (for CutMix
    with `correct_lam`, 1 - box area fraction).
  """
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f'mix_with_lambda: images must be floating point (normalise them first), '
                    f'got {images.dtype}.')
  if images.ndim != 4:
    raise ValueError(f'mix_with_lambda: images must be [B, H, W, C], got {images.shape}.')
  _, height, width, _ = images.shape
  lam = jnp.asarray(lam, jnp.float32)
  use_cutmix = jnp.asarray(use_cutmix, jnp.bool_)
  reversed_images = images[::-1]

  y0, y1, x0, x1 = cutmix_box(key, lam, height, width)
  rows = jnp.arange(height, dtype=jnp.int32)[:, None]
  cols = jnp.arange(width, dtype=jnp.int32)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)       # [H, W]
  paste = use_cutmix & inside[None, :, :, None]                           # [1, H, W, 1]

  lam_img = lam.astype(images.dtype)
  blended = images * lam_img + reversed_images * (1 - lam_img)
  # CutMix keeps the original outside the box; Mixup blends everywhere.
  mixed = jnp.where(paste, reversed_images, jnp.where(use_cutmix, images, blended))

  if correct_lam:
    box_fraction = ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    lam = jnp.where(use_cutmix, 1.0 - box_fraction, lam)
  smoothed = smooth_labels(labels, num_classes, label_smoothing)
  targets = lam * smoothed + (1.0 - lam) * smoothed[::-1]
  return mixed, targets, lam


def sample_lambda(key: jax.Array, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                  prob: float = 1.0, switch_prob: float = 0.5
                  ) -> tuple[jax.Array, jax.Array]:
  """timm's `_params_per_batch`: `(lam float32, use_cutmix bool)`; λ = 1 when not mixing."""
  key_apply, key_switch, key_lam = jax.random.split(key, 3)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return jnp.float32(1.0), use_cutmix
  # One Beta draw with the chosen method's α (a gamma sampler compiles to a while loop: one
  # instead of two keeps compile time and work down).
  alpha = jnp.where(use_cutmix, jnp.float32(cutmix_alpha), jnp.float32(mixup_alpha))
  lam = jax.random.beta(key_lam, alpha, alpha).astype(jnp.float32)
  if prob < 1.0:
    lam = jnp.where(jax.random.uniform(key_apply) < prob, lam, jnp.float32(1.0))
  return lam, use_cutmix


def mixup_cutmix(
    key: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int,
    mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
    switch_prob: float = 0.5, label_smoothing: float = 0.1, correct_lam: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Mixup or CutMix of a batch with its reverse (timm `Mixup`, 'batch' mode).

  Args:
    key: a fresh key per step.
    images: `[B, H, W, C]` floating point.
    labels: `[B]` integer class ids.
  Returns:
    `(images [B, H, W, C] in the input dtype, soft_targets [B, num_classes] float32)`.
    With `prob <= 0` or both alphas 0: images unchanged and smoothed one-hot targets.
  """
  if prob <= 0 or (mixup_alpha <= 0 and cutmix_alpha <= 0):
    return images, smooth_labels(labels, num_classes, label_smoothing)
  key_lam, key_box = jax.random.split(key)
  lam, use_cutmix = sample_lambda(key_lam, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                  prob=prob, switch_prob=switch_prob)
  mixed, targets, _ = mix_with_lambda(key_box, images, labels, lam, use_cutmix,
                                      num_classes=num_classes, label_smoothing=label_smoothing,
                                      correct_lam=correct_lam)
  return mixed, targets
