"""Device-side preprocessing of the pipeline's uint8 views."""
import jax.numpy as jnp
import numpy as np

from uniemox_jax import preprocess


def test_person_input_normalises_twice_only_for_the_released_second_view():
  pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)), jnp.uint8)
  mean = np.asarray([0.485, 0.456, 0.406], np.float32)
  std = np.asarray([0.229, 0.224, 0.225], np.float32)
  once = (np.asarray(pixels, np.float32) / 255.0 - mean) / std
  np.testing.assert_allclose(preprocess.person_input(pixels, "detector_crop"), once, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(preprocess.person_input(pixels, "second_view"), (once - mean) / std,
                             rtol=1e-6, atol=1e-6)
