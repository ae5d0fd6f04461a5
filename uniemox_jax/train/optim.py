"""Optimizer, learning-rate schedule, weight-decay mask and layer-wise lr decay (docs/method.md §4).

AdamW as PyTorch computes it for a parameter group with learning rate `lr_g`:
`p ← p − lr_g · (adam(g) + wd · p)`. Layer-wise decay gives each layer its own `lr_g`
(`lr · decay^(depth + 1 − layer)`), and the same factor scales its weight decay — exactly as
MAE/BEiT's `param_groups_lrd` do.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def lr_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                min_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
  """Linear warm-up from 0 to `peak_lr`, then a half-cycle cosine down to `min_lr`.

  Matches MAE's per-iteration `adjust_learning_rate` (evaluated at the step count).
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warmup_steps = min(warmup_steps, total_steps)

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    cos = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * jnp.clip(progress, 0, 1)))
    return jnp.where(step < warmup_steps, warm, cos)

  return fn


def scaled_lr(base_lr: float, global_batch: int) -> float:
  """The recipes' `lr = base_lr · batch / 256`."""
  return base_lr * global_batch / 256.0


def _path(keys) -> str:
  return "/".join(str(k) for k in keys)


def weight_decay_mask(params, no_decay_names=()) -> Any:
  """True where weight decay applies: tensors of rank ≥ 2 (kernels, tokens) whose last name is
  not listed in `no_decay_names`. Biases and norm scales (rank 1) never decay (timm's rule)."""
  flat = traverse_util.flatten_dict(params)
  mask = {k: (v.ndim >= 2 and k[-1] not in no_decay_names) for k, v in flat.items()}
  return traverse_util.unflatten_dict(mask)


def vit_layer_id(path: str, depth: int) -> int:
  """Layer index of a classifier parameter for layer-wise decay (BEiT/MAE convention).

  Embeddings (`patch_embed`, `cls_token`, `pos_embed`) → 0, block i → i + 1, everything
  after the blocks (`fc_norm`, `head`, a final norm) → depth + 1.
  """
  match = re.search(r"(?:^|/)blocks_(\d+)/", path)
  if match:
    return int(match.group(1)) + 1
  if re.search(r"(?:^|/)(patch_embed|cls_token|pos_embed)(/|$)", path):
    return 0
  return depth + 1


def layer_decay_scales(params, depth: int, decay: float):
  """Per-parameter lr multipliers `decay^(depth + 1 − layer_id)` (1 for the head)."""
  flat = traverse_util.flatten_dict(params)
  scales = {k: decay ** (depth + 1 - vit_layer_id(_path(k), depth)) for k in flat}
  return traverse_util.unflatten_dict(scales)


class ScaleByTreeState(NamedTuple):
  pass


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by a per-parameter constant (a pytree shaped like the params)."""

  def init(params):
    del params
    return ScaleByTreeState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg, params, *, peak_lr: float, total_steps: int, warmup_steps: int,
                   depth: int | None = None):
  """AdamW with the config's betas, masked weight decay, schedule, clipping and layer decay.

  Args:
    cfg: `config.optim` (b1, b2, eps, weight_decay, min_lr, grad_clip, layer_decay,
      no_decay_names).
    params: the trainable parameters (only their structure is used).
    peak_lr: the absolute peak learning rate (after batch scaling).
    depth: number of transformer blocks, needed when `cfg.layer_decay` is set.

  Returns:
    `(optax.GradientTransformation, lr_fn)`; `lr_fn(step)` is the base schedule for logging.
  """
  lr_fn = lr_schedule(peak_lr, total_steps, warmup_steps, cfg.min_lr)
  parts = []
  if cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(
        cfg.weight_decay, mask=weight_decay_mask(params, tuple(cfg.no_decay_names))))
  parts.append(optax.scale_by_schedule(lambda step: -lr_fn(step)))
  if cfg.layer_decay and cfg.layer_decay != 1.0:
    if depth is None:
      raise ValueError("optim.layer_decay needs the model depth")
    parts.append(scale_by_tree(layer_decay_scales(params, depth, cfg.layer_decay)))
  return optax.chain(*parts), lr_fn
