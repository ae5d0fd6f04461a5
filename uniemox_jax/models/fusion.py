"""Fusion of the scene token α and the person token β into γ (docs/method.md §2).

Every module maps `(alpha [B, C], beta [B, C]) -> gamma [B, C]`. Pick one by name through
`FUSIONS` (an explicit registry: a typo fails at config validation, not hours into a run).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from uniemox_jax.models import vit


def torch_linear_init(fan_in: int) -> Callable:
  """PyTorch's default `nn.Linear` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias.

  Used where the released code keeps PyTorch's defaults, so a fresh run starts alike.
  """
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_dense(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
  init = torch_linear_init(fan_in)
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=init, name=name)


class EasyFusion(nn.Module):
  """γ = ELU(W·(LN(α) + LN(β)) + b): one LayerNorm shared by both inputs, W Xavier, b = 0.

  The released default ("easyfusion", `AttentionFusion`). Its LayerNorm uses PyTorch's
  default eps 1e-5.
  """
  heads: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    norm = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm")
    combined = norm(alpha) + norm(beta)
    y = nn.Dense(alpha.shape[-1], dtype=self.dtype, kernel_init=vit.dense_init,
                 name="linear")(combined)
    return nn.elu(y.astype(jnp.float32))


class _MultiHead(nn.Module):
  """The released multi-head variants' shared fields."""
  heads: int = 3
  dtype: Any = jnp.float32

  def head_scores(self, h: int, width: int, alpha: jax.Array, beta: jax.Array):
    """Head `h`'s scores of α and β: `[B, width]` each, float32 (layers `score_{a,b}_h`)."""
    c = alpha.shape[-1]
    score_a = _torch_dense(width, c, f"score_a_{h}", self.dtype)(alpha).astype(jnp.float32)
    score_b = _torch_dense(width, c, f"score_b_{h}", self.dtype)(beta).astype(jnp.float32)
    return score_a, score_b


class WeightedSumFusion(_MultiHead):
  """γ = LN(Σ_h a_h⊙α + b_h⊙β) + bias, a_h, b_h ~ N(0, 1) (`multihead_weighted_fusion`)."""

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    c = alpha.shape[-1]
    a = self.param("alpha", nn.initializers.normal(1.0), (self.heads, c))
    b = self.param("beta", nn.initializers.normal(1.0), (self.heads, c))
    bias = self.param("bias", nn.initializers.constant(1e-5), (c,))
    fused = jnp.einsum("hc,bc->bc", a, alpha) + jnp.einsum("hc,bc->bc", b, beta)
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm")(fused) + bias


class DualAttentionFusion(_MultiHead):
  """Per-head scalar scores with a swish (`dual_layer_attention_fusion`), as released.

  The released code takes the softmax of each head's `[B, 1]` score over its size-1 axis,
  so every weight is exactly 1 and γ = swish(H·(α + β)) + bias; we compute it the same way
  (the score layers exist, and receive zero gradient) so that released checkpoints load and
  behave identically.
  """

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    c = alpha.shape[-1]
    bias = self.param("bias", nn.initializers.constant(1e-5), (c,))
    fused = jnp.zeros_like(alpha)
    for h in range(self.heads):
      score_a, score_b = self.head_scores(h, 1, alpha, beta)
      fused = fused + jax.nn.softmax(score_a, axis=-1) * alpha
      fused = fused + jax.nn.softmax(score_b, axis=-1) * beta
    return nn.swish(fused) + bias


class MlpGluFusion(_MultiHead):
  """Per-head feature-wise softmax weights, concat → MLP → GLU gate (`mlp_attention_glu`)."""

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    c = alpha.shape[-1]
    heads = []
    for h in range(self.heads):
      score_a, score_b = self.head_scores(h, c, alpha, beta)
      heads.append(jax.nn.softmax(score_a, -1) * alpha + jax.nn.softmax(score_b, -1) * beta)
    x = jnp.concatenate(heads, axis=-1)
    x = _torch_dense(c, c * self.heads, "mlp_0", self.dtype)(x)
    x = _torch_dense(c, c, "mlp_1", self.dtype)(nn.relu(x)).astype(jnp.float32)
    gate = _torch_dense(c, c, "gate", self.dtype)(x).astype(jnp.float32)
    bias = self.param("bias", nn.initializers.constant(1e-5), (c,))
    return nn.relu(x * jax.nn.sigmoid(gate)) + bias


class PriorFusion(nn.Module):
  """The paper figure's γ = Linear(λ⊙α + β), λ a learned prior initialised to ones."""
  heads: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    lam = self.param("prior", nn.initializers.ones, (alpha.shape[-1],))
    y = nn.Dense(alpha.shape[-1], dtype=self.dtype, kernel_init=vit.dense_init,
                 name="linear")(lam * alpha + beta)
    return y.astype(jnp.float32)


class NoFusion(nn.Module):
  """γ = α: the scene token alone (the person view is not needed)."""
  heads: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, alpha: jax.Array, beta: jax.Array | None = None) -> jax.Array:
    return alpha


FUSIONS: dict[str, type[nn.Module]] = {
    "easyfusion": EasyFusion,
    "weighted_sum": WeightedSumFusion,
    "dual_attention": DualAttentionFusion,
    "mlp_glu": MlpGluFusion,
    "prior": PriorFusion,
    "none": NoFusion,
}


def make_fusion(kind: str, heads: int = 3, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
  """Builds the fusion module `kind` (a key of `FUSIONS`); kwargs go to the module (`name`)."""
  if kind not in FUSIONS:
    raise ValueError(f"unknown fusion {kind!r}; choose one of {sorted(FUSIONS)}")
  return FUSIONS[kind](heads=heads, dtype=dtype, **kwargs)
