"""Building modules from a mapping of their field values (a config section), and their
parameter shapes without allocating anything."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from uniemox_jax.models import vit

_NOT_FIELDS = ("parent", "name")


def from_config(module_cls, values: Mapping[str, Any], **overrides):
  """`module_cls(**fields)` with every field of the linen dataclass that `values` (e.g.
  `config.model`) has under the same name; dtype names ('bfloat16') become dtypes; `None`
  keeps a field's meaning "the variant's default". `overrides` win."""
  names = [f.name for f in dataclasses.fields(module_cls) if f.name not in _NOT_FIELDS]
  kwargs = {n: values[n] for n in names if n in values}
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = vit.dtype_of(kwargs["dtype"])
  kwargs.update(overrides)
  return module_cls(**kwargs)


def abstract_params(module, *inputs):
  """The parameter shapes of a linen `module` for `inputs` (nothing is allocated)."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs)["params"])


def image_batch(image_size: int, batch: int = 2) -> jax.Array:
  """A dummy `[batch, S, S, 3]` float32 image batch (shapes for initialisation)."""
  return jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
