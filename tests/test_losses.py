"""Losses on hand-computed cases, invariances and gradient flow."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax import losses


def test_reconstruction_counts_only_removed_patches():
  pred = jnp.zeros((1, 3, 2))
  target = jnp.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
  mask = jnp.array([[1.0, 0.0, 1.0]])
  # Per-patch MSE: 1, 4, 9; masked mean over patches 0 and 2: (1 + 9) / 2.
  np.testing.assert_allclose(losses.reconstruction_loss(pred, target, mask), 5.0)


def test_reconstruction_norm_pix_uses_unbiased_per_patch_variance():
  target = jnp.array([[[1.0, 3.0]]])
  pred = jnp.zeros((1, 1, 2))
  mask = jnp.ones((1, 1))
  # mean 2, unbiased var 2 → normalised (-1/√(2+1e-6), 1/√(2+1e-6)); MSE = 1/(2+1e-6).
  got = losses.reconstruction_loss(pred, target, mask, norm_pix=True)
  np.testing.assert_allclose(got, 1.0 / (2.0 + 1e-6), rtol=1e-6)


def test_similarity_loss_hand_cases():
  a = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  np.testing.assert_allclose(losses.similarity_loss(a, a * 3.0), 0.0, atol=1e-7)
  b = jnp.array([[0.0, 1.0], [0.0, -1.0]])
  # cos = 0 and -1 → 1 - mean(0, -1) = 1.5
  np.testing.assert_allclose(losses.similarity_loss(a, b), 1.5, atol=1e-7)


def test_relation_loss_hand_case():
  text = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  student = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  teacher = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # A rows: [1,0],[1,0]; C rows: [1,0],[0,1] → cos 1 and 0 → 1 - 0.5.
  np.testing.assert_allclose(losses.relation_loss(student, teacher, text), 0.5, atol=1e-7)
  np.testing.assert_allclose(losses.relation_loss(teacher, teacher, text), 0.0, atol=1e-7)


def test_relation_loss_is_invariant_to_scaling_either_side():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  s, ti, tt = (jax.random.normal(k, (6, 8)) for k in keys)
  base = losses.relation_loss(s, ti, tt)
  for scaled in (losses.relation_loss(5.0 * s, ti, tt), losses.relation_loss(s, 0.1 * ti, tt),
                 losses.relation_loss(s, ti, 100.0 * tt)):
    np.testing.assert_allclose(scaled, base, rtol=1e-5)


def test_relation_loss_global_vs_local_groups():
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  s, ti, tt = (jax.random.normal(k, (8, 4)) for k in keys)
  local = losses.relation_loss(s, ti, tt, num_groups=2)
  halves = [losses.relation_loss(s[i:i + 4], ti[i:i + 4], tt[i:i + 4]) for i in (0, 4)]
  np.testing.assert_allclose(local, np.mean(halves), rtol=1e-6)
  assert abs(float(local) - float(losses.relation_loss(s, ti, tt))) > 1e-4
  with pytest.raises(ValueError, match="divisible"):
    losses.relation_loss(s, ti, tt, num_groups=3)


def test_gradients_reach_student_and_are_zero_for_stopped_teacher():
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  s, ti, tt = (jax.random.normal(k, (4, 8)) for k in keys)

  def loss(student, teacher_image, teacher_text):
    ti_ = jax.lax.stop_gradient(teacher_image)
    tt_ = jax.lax.stop_gradient(teacher_text)
    return losses.relation_loss(student, ti_, tt_) + losses.similarity_loss(student, ti_)

  gs, gi, gt = jax.grad(loss, argnums=(0, 1, 2))(s, ti, tt)
  assert float(jnp.abs(gs).sum()) > 0
  assert float(jnp.abs(gi).sum()) == 0.0 and float(jnp.abs(gt).sum()) == 0.0

  # Not vacuous: both terms do depend on the teacher's inputs, so the zeros above come from
  # stopping the gradient (as the train step and the frozen CLIP do), not from the losses.
  def unstopped(student, teacher_image, teacher_text):
    return (losses.relation_loss(student, teacher_image, teacher_text)
            + losses.similarity_loss(student, teacher_image))

  _, gi, gt = jax.grad(unstopped, argnums=(0, 1, 2))(s, ti, tt)
  assert float(jnp.abs(gi).sum()) > 0 and float(jnp.abs(gt).sum()) > 0
  # And the pre-training loss, through the frozen teacher module, gives its weights exactly zero
  # gradient: tests/test_clip.py::test_frozen_teacher_passes_no_gradient.


def test_info_nce_hand_case_and_symmetry():
  a = jnp.eye(3)
  # Perfectly aligned pairs with a tiny temperature → loss ~ 0.
  assert float(losses.info_nce(a, a, temperature=0.01)) < 1e-6
  b = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  c = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  np.testing.assert_allclose(losses.info_nce(b, c), losses.info_nce(c, b), rtol=1e-6)
  # Two rows, orthogonal unit vectors, temperature 1: each CE = log(1 + e^-1).
  np.testing.assert_allclose(losses.info_nce(jnp.eye(2), jnp.eye(2), temperature=1.0),
                             np.log(1 + np.exp(-1.0)), rtol=1e-6)


def test_total_loss_weights_and_switches():
  terms = {"con": jnp.float32(1.0), "sim": jnp.float32(2.0), "rec": jnp.float32(4.0),
           "nce": jnp.float32(jnp.nan)}
  np.testing.assert_allclose(losses.total_loss(terms, {"con": 1, "sim": 1, "rec": 1, "nce": 0}),
                             7.0)
  np.testing.assert_allclose(losses.total_loss(terms, {"con": 0, "sim": 0.5, "rec": 1}), 5.0)
  with pytest.raises(ValueError, match="unknown"):
    losses.total_loss(terms, {"bogus": 1})
  with pytest.raises(ValueError, match="not computed"):
    losses.total_loss({"con": jnp.float32(1)}, {"sim": 1})


def test_losses_are_float32_for_bfloat16_inputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8)).astype(jnp.bfloat16)
  assert losses.similarity_loss(x, x).dtype == jnp.float32
  assert losses.relation_loss(x, x, x).dtype == jnp.float32
  zero = jnp.zeros((4, 8))
  assert np.isfinite(float(losses.similarity_loss(zero, x)))
