"""Masking invariants and the sin-cos position embedding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax import masking
from uniemox_jax.models import vit


@pytest.mark.parametrize("length,ratio", [(196, 0.75), (196, 0.9), (49, 0.5), (16, 0.75)])
def test_keeps_exactly_int_l_times_one_minus_r(length, ratio):
  x = jnp.arange(2 * length * 4, dtype=jnp.float32).reshape(2, length, 4)
  noise = jax.random.uniform(jax.random.PRNGKey(0), (2, length))
  visible, mask, ids_restore = masking.random_masking(x, ratio, noise)
  keep = int(length * (1 - ratio))
  assert visible.shape == (2, keep, 4)
  np.testing.assert_array_equal(mask.sum(axis=1), [length - keep] * 2)
  assert ids_restore.dtype == jnp.int32


def test_visible_tokens_are_the_lowest_noise_ones_and_mask_marks_the_rest():
  length = 20
  x = jnp.arange(length, dtype=jnp.float32).reshape(1, length, 1)
  noise = jax.random.uniform(jax.random.PRNGKey(3), (1, length))
  visible, mask, _ = masking.random_masking(x, 0.75, noise)
  expected = np.argsort(np.asarray(noise[0]))[:5]
  np.testing.assert_array_equal(np.asarray(visible[0, :, 0]), expected.astype(np.float32))
  removed = np.ones(length)
  removed[expected] = 0
  np.testing.assert_array_equal(mask[0], removed)


def test_unshuffle_inverts_the_shuffle():
  length = 32
  x = jax.random.normal(jax.random.PRNGKey(1), (3, length, 5))
  noise = jax.random.uniform(jax.random.PRNGKey(2), (3, length))
  ids_shuffle = jnp.argsort(noise, axis=1)
  shuffled = jnp.take_along_axis(x, ids_shuffle[:, :, None], axis=1)
  _, _, ids_restore = masking.random_masking(x, 0.5, noise)
  np.testing.assert_array_equal(masking.unshuffle(shuffled, ids_restore), x)


def test_different_noise_gives_different_masks_and_same_noise_the_same():
  x = jnp.zeros((4, 64, 2))
  n1 = jax.random.uniform(jax.random.PRNGKey(0), (4, 64))
  n2 = jax.random.uniform(jax.random.PRNGKey(1), (4, 64))
  _, m1, _ = masking.random_masking(x, 0.75, n1)
  _, m1b, _ = masking.random_masking(x, 0.75, n1)
  _, m2, _ = masking.random_masking(x, 0.75, n2)
  np.testing.assert_array_equal(m1, m1b)
  assert not np.array_equal(m1, m2)
  # Per sample too: each row of the batch gets its own mask.
  assert len({tuple(np.asarray(r)) for r in m1}) == 4


def test_bad_ratio_and_noise_shape_raise():
  with pytest.raises(ValueError, match="mask_ratio"):
    masking.num_visible(10, 1.0)
  with pytest.raises(ValueError, match="noise"):
    masking.random_masking(jnp.zeros((2, 8, 1)), 0.5, jnp.zeros((2, 7)))


def test_sincos_matches_closed_form():
  dim, grid = 16, 3
  table = vit.get_2d_sincos_pos_embed(dim, grid, cls_token=True)
  assert table.shape == (1 + grid * grid, dim)
  np.testing.assert_array_equal(table[0], 0.0)
  quarter = dim // 4
  for row in range(grid):
    for col in range(grid):
      vec = table[1 + row * grid + col]
      for k in range(quarter):
        omega = 1.0 / 10000 ** (k / quarter)
        # First half: the column (w) coordinate; second half: the row (h). Each [sin | cos].
        np.testing.assert_allclose(vec[k], np.sin(col * omega), atol=1e-6)
        np.testing.assert_allclose(vec[quarter + k], np.cos(col * omega), atol=1e-6)
        np.testing.assert_allclose(vec[2 * quarter + k], np.sin(row * omega), atol=1e-6)
        np.testing.assert_allclose(vec[3 * quarter + k], np.cos(row * omega), atol=1e-6)


def test_sincos_rectangular_grid_and_bad_width():
  table = vit.get_2d_sincos_pos_embed(8, (2, 3))
  assert table.shape == (6, 8)
  with pytest.raises(ValueError, match="% 4"):
    vit.get_2d_sincos_pos_embed(6, 2)


def test_patchify_order_and_inverse():
  p = 4
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
  patches = vit.patchify(images, p)
  assert patches.shape == (2, 6, p * p * 3)
  # Patch (row 1, col 2) is index 1*3+2 = 5; inside it the order is (p, q, c).
  block = np.asarray(images[0, 4:8, 8:12, :])
  np.testing.assert_array_equal(patches[0, 5], block.reshape(-1))
  np.testing.assert_array_equal(vit.unpatchify(patches, p, grid=(2, 3)), images)
