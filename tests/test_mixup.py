"""Mixup/CutMix on the device: formulas, box geometry, λ correction, jit, sharding, the loss."""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax.data import mixup as M

B, H, W, C, K = 8, 16, 24, 3, 5

# Every beta draw compiles a gamma sampler (seconds on CPU): tests share this one jitted function
# and otherwise call eagerly, where JAX caches the sampler's compilation across calls.
_mix_jit = jax.jit(functools.partial(M.mixup_cutmix, num_classes=K))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, K, size=B), jnp.int32)
  return images, labels


def _smooth(labels, eps):
  out = np.full((len(labels), K), eps / K)
  out[np.arange(len(labels)), labels] = 1 - eps + eps / K
  return out


def test_smooth_labels():
  labels = jnp.array([0, 4, 2])
  out = M.smooth_labels(labels, K, 0.1)
  assert out.dtype == jnp.float32 and out.shape == (3, K)
  np.testing.assert_allclose(out, _smooth(np.array([0, 4, 2]), 0.1), rtol=1e-6)
  np.testing.assert_array_equal(M.smooth_labels(labels, K, 0.0), np.eye(K)[[0, 4, 2]])


@pytest.mark.parametrize('kwargs', [dict(prob=0.0), dict(mixup_alpha=0.0, cutmix_alpha=0.0)])
def test_no_mixing_returns_images_and_smoothed_one_hot(kwargs):
  images, labels = _batch()
  out, targets = M.mixup_cutmix(jax.random.key(0), images, labels, num_classes=K, **kwargs)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(targets, _smooth(np.asarray(labels), 0.1), rtol=1e-6)


def test_mixup_with_a_given_lambda_is_the_formula():
  images, labels = _batch()
  lam = 0.3
  out, targets, lam_used = M.mix_with_lambda(jax.random.key(1), images, labels, lam, False,
                                             num_classes=K, label_smoothing=0.1)
  x = np.asarray(images)
  np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)
  y = _smooth(np.asarray(labels), 0.1)
  np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-6, atol=1e-7)
  assert float(lam_used) == pytest.approx(lam)
  np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('seed', range(8))
def test_cutmix_pastes_the_box_from_the_reversed_batch_and_corrects_lambda(seed):
  images, labels = _batch(seed)
  key = jax.random.key(seed)
  lam = 0.55
  out, targets, lam_used = M.mix_with_lambda(key, images, labels, lam, True, num_classes=K,
                                             label_smoothing=0.1)
  y0, y1, x0, x1 = (int(v) for v in M.cutmix_box(key, lam, H, W))
  assert 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W
  # Sides before clipping: 2 * (int(side * sqrt(1 - lam)) // 2).
  assert y1 - y0 <= 2 * (int(H * np.sqrt(1 - lam)) // 2)
  assert x1 - x0 <= 2 * (int(W * np.sqrt(1 - lam)) // 2)
  x, o = np.asarray(images), np.asarray(out)
  inside = np.zeros((H, W), bool)
  inside[y0:y1, x0:x1] = True
  np.testing.assert_array_equal(o[:, inside], x[::-1][:, inside])
  np.testing.assert_array_equal(o[:, ~inside], x[:, ~inside])
  expected_lam = 1 - inside.sum() / (H * W)
  assert float(lam_used) == pytest.approx(expected_lam, abs=1e-6)
  y = _smooth(np.asarray(labels), 0.1)
  np.testing.assert_allclose(targets, expected_lam * y + (1 - expected_lam) * y[::-1],
                             rtol=1e-6, atol=1e-7)
  # Without correction λ stays as given.
  _, _, lam_raw = M.mix_with_lambda(key, images, labels, lam, True, num_classes=K,
                                    correct_lam=False)
  assert float(lam_raw) == pytest.approx(lam)


def test_cutmix_boxes_are_clipped_at_the_border_and_empty_at_lambda_one():
  clipped = 0
  for seed in range(50):
    y0, y1, x0, x1 = (int(v) for v in M.cutmix_box(jax.random.key(seed), 0.2, H, W))
    full_h, full_w = 2 * (int(H * np.sqrt(0.8)) // 2), 2 * (int(W * np.sqrt(0.8)) // 2)
    clipped += (y1 - y0 < full_h) or (x1 - x0 < full_w)
  assert clipped > 0
  images, labels = _batch()
  out, _, lam = M.mix_with_lambda(jax.random.key(0), images, labels, 1.0, True, num_classes=K)
  np.testing.assert_array_equal(out, images)
  assert float(lam) == 1.0


def test_mixup_cutmix_is_jittable_deterministic_and_rows_sum_to_one():
  images, labels = _batch()
  a_img, a_t = _mix_jit(jax.random.key(3), images, labels)
  b_img, b_t = _mix_jit(jax.random.key(3), images, labels)
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_t, b_t)
  assert a_img.shape == images.shape and a_img.dtype == images.dtype
  assert a_t.shape == (B, K) and a_t.dtype == jnp.float32
  np.testing.assert_allclose(np.sum(a_t, axis=1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(a_t) > 0)
  c_img, _ = _mix_jit(jax.random.key(4), images, labels)
  assert not np.array_equal(a_img, c_img)
  # Eager gives the same result as jit.
  e_img, e_t = M.mixup_cutmix(jax.random.key(3), images, labels, num_classes=K)
  np.testing.assert_allclose(e_img, a_img, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(e_t, a_t, rtol=1e-6, atol=1e-7)
  # bfloat16 images stay bfloat16; targets stay float32.
  d_img, d_t = M.mixup_cutmix(jax.random.key(3), images.astype(jnp.bfloat16), labels,
                              num_classes=K)
  assert d_img.dtype == jnp.bfloat16 and d_t.dtype == jnp.float32
  with pytest.raises(TypeError, match='floating'):
    M.mixup_cutmix(jax.random.key(0), images.astype(jnp.uint8), labels, num_classes=K)


def test_mixup_cutmix_is_sample_lambda_then_mix_with_lambda():
  images, labels = _batch()
  key = jax.random.key(9)
  out, targets = M.mixup_cutmix(key, images, labels, num_classes=K)
  key_lam, key_box = jax.random.split(key)
  lam, use_cutmix = M.sample_lambda(key_lam)
  ref_out, ref_targets, _ = M.mix_with_lambda(key_box, images, labels, lam, use_cutmix,
                                              num_classes=K)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(targets, ref_targets)


def test_lambda_and_switch_statistics():
  keys = jax.random.split(jax.random.key(0), 4000)
  # Eager vmap: the batched beta sampler compiles once and serves every configuration below.
  lam, use_cutmix = (np.asarray(v) for v in jax.vmap(
      lambda k: M.sample_lambda(k, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                                switch_prob=0.5))(keys))
  assert 0.45 < use_cutmix.mean() < 0.55
  # Beta(α, α) has mean 1/2 and variance 1 / (4 (2α + 1)).
  assert lam[use_cutmix].var() == pytest.approx(1 / 12, abs=0.01)
  assert lam[~use_cutmix].var() == pytest.approx(1 / (4 * 2.6), abs=0.01)
  assert abs(lam.mean() - 0.5) < 0.03
  lam, _ = (np.asarray(v) for v in jax.vmap(lambda k: M.sample_lambda(k, prob=0.3))(keys))
  assert 0.66 < np.mean(lam == 1.0) < 0.74
  _, use_cutmix = jax.vmap(lambda k: M.sample_lambda(k, mixup_alpha=0.0))(keys)
  assert np.all(np.asarray(use_cutmix))
  _, use_cutmix = jax.vmap(lambda k: M.sample_lambda(k, cutmix_alpha=0.0))(keys)
  assert not np.any(np.asarray(use_cutmix))
  lam, _ = M.sample_lambda(keys[0], mixup_alpha=0.0, cutmix_alpha=0.0)
  assert float(lam) == 1.0


def test_soft_cross_entropy_matches_hand_computation():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, K)) * 3
  targets = rng.dirichlet(np.ones(K), size=4)
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  expected = -np.mean(np.sum(targets * log_probs, axis=1))
  got = M.soft_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
  assert got.dtype == jnp.float32 and got.shape == ()
  assert float(got) == pytest.approx(expected, rel=1e-5)
  got = M.soft_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(expected, rel=2e-2)
  # Hard one-hot targets give the usual cross-entropy.
  labels = np.array([0, 3, 1, 4])
  hard = M.soft_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.eye(K)[labels])
  assert float(hard) == pytest.approx(-np.mean(log_probs[np.arange(4), labels]), rel=1e-5)


_SHARDED_SCRIPT = textwrap.dedent("""
  import functools, sys
  import jax
  jax.config.update('jax_num_cpu_devices', 4)
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from uniemox_jax.data import mixup as M

  data = np.load(sys.argv[1])
  mesh = jax.make_mesh((2, 2), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  fn = jax.jit(functools.partial(M.mixup_cutmix, num_classes=int(data['num_classes'])),
               in_shardings=(None, batch, batch), out_shardings=(batch, batch))
  images = jax.device_put(data['images'], batch)
  labels = jax.device_put(data['labels'], batch)
  out = {}
  for seed in range(4):
    mixed, targets = fn(jax.random.key(seed), images, labels)
    assert len(mixed.sharding.device_set) == 4 and mixed.sharding == batch
    out[f'images{seed}'], out[f'targets{seed}'] = np.asarray(mixed), np.asarray(targets)
  np.savez(sys.argv[2], **out)
""")


def test_mixup_cutmix_on_a_batch_sharded_over_devices_matches_unsharded(tmp_path):
  images, labels = _batch(5)
  np.savez(tmp_path / 'in.npz', images=np.asarray(images), labels=np.asarray(labels),
           num_classes=K)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-c', _SHARDED_SCRIPT, str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')],
      capture_output=True, text=True, env=env, cwd=root, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  sharded = np.load(tmp_path / 'out.npz')
  for seed in range(4):
    mixed, targets = _mix_jit(jax.random.key(seed), images, labels)
    # Same pairs and boxes; only float rounding may differ (fusion differs across layouts).
    np.testing.assert_allclose(sharded[f'images{seed}'], mixed, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sharded[f'targets{seed}'], targets, rtol=1e-6, atol=1e-7)
