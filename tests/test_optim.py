"""The optimizer: schedule, weight-decay mask, layer-wise decay (really applied)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from uniemox_jax.models import classifier
from uniemox_jax.train import optim


def test_lr_schedule_warmup_then_half_cosine():
  fn = optim.lr_schedule(1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
  np.testing.assert_allclose([fn(0), fn(5), fn(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(fn(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # half way: cos(π/2) = 0
  np.testing.assert_allclose(fn(110), 0.1, atol=1e-6)
  assert optim.scaled_lr(1e-3, 512) == pytest.approx(2e-3)


def test_weight_decay_mask_spares_biases_norms_and_named_tokens():
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 4)), "pos_embed": jnp.zeros((1, 5, 4)),
                        "blocks_0": {"attn": {"qkv": {"kernel": jnp.zeros((4, 12)),
                                                      "bias": jnp.zeros((12,))}},
                                     "norm1": {"scale": jnp.ones((4,))}}}}
  mask = optim.weight_decay_mask(params)
  assert mask["encoder"]["blocks_0"]["attn"]["qkv"] == {"kernel": True, "bias": False}
  assert mask["encoder"]["blocks_0"]["norm1"]["scale"] is False
  assert mask["encoder"]["cls_token"] is True  # MAE pre-training decays tokens
  mask = optim.weight_decay_mask(params, ("pos_embed", "cls_token"))  # fine-tuning
  assert not mask["encoder"]["cls_token"] and not mask["encoder"]["pos_embed"]


def test_layer_ids_follow_the_beit_convention():
  depth = 12
  assert optim.vit_layer_id("encoder/patch_embed/kernel", depth) == 0
  assert optim.vit_layer_id("encoder/cls_token", depth) == 0
  assert optim.vit_layer_id("encoder/pos_embed", depth) == 0
  assert optim.vit_layer_id("encoder/blocks_0/attn/qkv/kernel", depth) == 1
  assert optim.vit_layer_id("encoder/blocks_11/mlp/fc2/bias", depth) == 12
  assert optim.vit_layer_id("fc_norm/scale", depth) == 13
  assert optim.vit_layer_id("head/kernel", depth) == 13


def _optim_cfg(**kw):
  return common.optim_config(**kw)


def test_layer_decay_is_really_applied():
  """One AdamW step from zero-initialised moments moves every parameter by ≈ lr_layer (the
  first Adam update is ±1): the embedding moves decay^(depth+1) times as far as the head."""
  model = classifier.ViTClassifier(variant="mu", image_size=16, patch_size=8, num_classes=3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  depth, decay = 2, 0.5
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.0, layer_decay=decay), params,
                               peak_lr=1.0, total_steps=10, warmup_steps=0, depth=depth)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = lambda *path: float(jnp.abs(_get(updates, path)).mean())
  head = step("head", "kernel")
  np.testing.assert_allclose(step("encoder", "blocks_1", "mlp", "fc1", "kernel"), head * decay,
                             rtol=1e-3)
  np.testing.assert_allclose(step("encoder", "blocks_0", "mlp", "fc1", "kernel"),
                             head * decay ** 2, rtol=1e-3)
  np.testing.assert_allclose(step("encoder", "patch_embed", "kernel"), head * decay ** 3,
                             rtol=1e-3)
  # Without layer decay every layer moves alike.
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.0), params, peak_lr=1.0,
                               total_steps=10, warmup_steps=0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(jnp.abs(updates["encoder"]["patch_embed"]["kernel"]).mean()),
                             float(jnp.abs(updates["head"]["kernel"]).mean()), rtol=1e-3)


def test_weight_decay_is_scaled_by_the_layer_lr_like_pytorch_param_groups():
  params = {"encoder": {"blocks_0": {"w": jnp.full((2, 2), 2.0)}}, "head": {"w": jnp.full((2, 2), 2.0)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.1, layer_decay=0.5), params,
                               peak_lr=1.0, total_steps=10, warmup_steps=0, depth=1)
  updates, _ = tx.update(zero, tx.init(params), params)
  # Zero gradient: the update is −lr_layer · wd · p.
  np.testing.assert_allclose(updates["head"]["w"], -0.1 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["encoder"]["blocks_0"]["w"], -0.5 * 0.1 * 2.0, rtol=1e-6)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree
