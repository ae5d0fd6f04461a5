"""Sharding rules of the parameters and the mesh."""
import jax
import pytest

from uniemox_jax import sharding


def test_param_sharding_rule():
  assert sharding.param_spec((1024, 4096), 4) == jax.sharding.PartitionSpec(None, "fsdp")
  assert sharding.param_spec((4096, 1024), 4) == jax.sharding.PartitionSpec("fsdp", None)
  assert sharding.param_spec((1000, 3), 8) == jax.sharding.PartitionSpec()  # nothing divides
  assert sharding.param_spec((64,), 4) == jax.sharding.PartitionSpec()      # too small
  assert sharding.param_spec((64,), 4, min_size=0) == jax.sharding.PartitionSpec("fsdp")
  assert sharding.param_spec((1024, 4096), 1) == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="does not match"):
    sharding.make_mesh(3, 1)
