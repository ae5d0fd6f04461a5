"""UniEmoX losses as pure functions (docs/method.md §1). Every loss is computed in float32.

  L_rec  MSE on the masked patches of the scene view (optionally per-patch normalised target)
  L_sim  1 − mean_i cos(γ_i, Ω_i)                                   (student vs CLIP image)
  L_con  1 − mean_i cos(A_i, C_i), A = γ̂Λ̂ᵀ, C = Ω̂Λ̂ᵀ                (relation to every caption)
  L      w_con·L_con + w_sim·L_sim + w_rec·L_rec (+ w_nce·InfoNCE, off by default)
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

# torch.nn.functional.normalize's eps: keeps a zero vector at zero instead of NaN.
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cosine_similarity(a: jax.Array, b: jax.Array, axis: int = -1) -> jax.Array:
  """Row-wise cosine similarity of two `[..., D]` arrays → `[...]`."""
  return jnp.sum(l2_normalize(a, axis) * l2_normalize(b, axis), axis=axis)


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
                        norm_pix: bool = False) -> jax.Array:
  """L_rec: mean squared error over the removed patches only.

  Args:
    pred: `[B, L, P]` predicted pixels per patch (P = p*p*3).
    target: `[B, L, P]` normalised input pixels patchified in MAE's order.
    mask: `[B, L]`, 1 for removed patches (the ones that count), 0 for visible.
    norm_pix: normalise each target patch by its own mean and (unbiased) variance, as MAE's
      `norm_pix_loss`.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def similarity_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """L_sim = 1 − mean_i cos(student_i, teacher_i); `[B, E]` each."""
  return 1.0 - jnp.mean(cosine_similarity(student, teacher))


def _relation(features: jax.Array, text_hat: jax.Array) -> jax.Array:
  return l2_normalize(features) @ text_hat.T


def relation_loss(student: jax.Array, teacher_image: jax.Array, teacher_text: jax.Array,
                  num_groups: int = 1) -> jax.Array:
  """L_con: the student must relate to every caption as the CLIP image does.

  A = γ̂Λ̂ᵀ and C = Ω̂Λ̂ᵀ are `[B, B]` (row i: image i against every caption of the batch,
  paired on the diagonal); the loss is 1 − mean_i cos(A_i, C_i). Scaling either side by a
  positive factor (e.g. CLIP's logit scale) does not change it.

  Args:
    student: `[B, E]` γ. teacher_image: `[B, E]` Ω. teacher_text: `[B, E]` Λ.
    num_groups: 1 relates each image to the captions of the whole (global) batch, the
      paper's intent. `n > 1` splits the batch into `n` equal consecutive groups (one per
      device, in the order the batch is sharded) and relates only within a group: the
      released code's per-GPU behaviour (docs/method.md §3 #4, `loss.relation_scope='local'`).
  """
  b = student.shape[0]
  if b % num_groups:
    raise ValueError(f"batch {b} is not divisible into {num_groups} relation groups")
  split = lambda x: x.astype(jnp.float32).reshape(num_groups, b // num_groups, -1)
  s, ti, tt = split(student), split(teacher_image), split(teacher_text)
  text_hat = l2_normalize(tt)
  a = jnp.einsum("gid,gjd->gij", l2_normalize(s), text_hat)
  c = jnp.einsum("gid,gjd->gij", l2_normalize(ti), text_hat)
  return 1.0 - jnp.mean(cosine_similarity(a, c))


def info_nce(a: jax.Array, b: jax.Array, temperature: float = 0.07) -> jax.Array:
  """Symmetric InfoNCE between paired rows of `a` and `b` (`[B, E]`): the optional
  contrastive term (released code's `siamese_loss`), mean of both directions' cross-entropy."""
  logits = l2_normalize(a) @ l2_normalize(b).T / temperature
  labels = jnp.arange(logits.shape[0])
  log_p_ab = jax.nn.log_softmax(logits, axis=1)
  log_p_ba = jax.nn.log_softmax(logits, axis=0)
  ce_ab = -jnp.mean(jnp.take_along_axis(log_p_ab, labels[:, None], axis=1))
  ce_ba = -jnp.mean(jnp.take_along_axis(log_p_ba, labels[None, :], axis=0))
  return 0.5 * (ce_ab + ce_ba)


LOSS_TERMS = ("con", "sim", "rec", "nce")


def total_loss(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """Σ weight·term over the terms whose weight is non-zero (switched-off terms are skipped,
  so a NaN in an unused term cannot leak in). Unknown names raise."""
  unknown = set(weights) - set(LOSS_TERMS)
  if unknown:
    raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {LOSS_TERMS}")
  total = jnp.zeros((), jnp.float32)
  for name, weight in weights.items():
    if weight:
      if name not in terms:
        raise ValueError(f"loss term {name!r} has weight {weight} but was not computed")
      total = total + weight * terms[name].astype(jnp.float32)
  return total


RELATION_SCOPES = ("global", "local")


def pretrain_losses(pred: jax.Array, aux: Mapping[str, jax.Array], target: jax.Array,
                    omega: jax.Array | None, lam: jax.Array | None,
                    weights: Mapping[str, float], *, norm_pix: bool = False,
                    relation_groups: int = 1, nce_temperature: float = 0.07):
  """L = Σ w·term over the switched-on terms of one pre-training batch (docs/method.md §1).

  Args:
    pred: `[B, L, p*p*3]` the decoder's prediction of the scene view; `target` the same shape.
    aux: the model's intermediates: `'mask'` `[B, L]`, `'gamma'` `[B, E]` (the student token).
    omega, lam: the teacher's Ω (image) and Λ (caption) features `[B, E]` (None when unused).
    weights: {con, sim, rec, nce} → weight.
    relation_groups: L_con within this many equal slices of the batch (1: the global batch).

  Returns:
    `(total, {term: value})` for the terms with a non-zero weight.
  """
  gamma = aux["gamma"]
  terms = {}
  if weights["rec"]:
    terms["rec"] = reconstruction_loss(pred, target, aux["mask"], norm_pix)
  if weights["sim"]:
    terms["sim"] = similarity_loss(gamma, omega)
  if weights["con"]:
    terms["con"] = relation_loss(gamma, omega, lam, relation_groups)
  if weights["nce"]:
    terms["nce"] = info_nce(gamma, lam, nce_temperature)
  return total_loss(terms, weights), terms
