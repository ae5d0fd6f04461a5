"""Small helpers the task modules share."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
  return DTYPES[name]


def normalize(pixels_u8: jax.Array, mean, std) -> jax.Array:
  """uint8 `[..., 3]` → float32 `(x / 255 − mean) / std` (on the device)."""
  x = pixels_u8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def abstract_params(module, *inputs):
  """The parameter shapes of a linen `module` for `inputs` (nothing is allocated)."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs)["params"])


def image_batch(image_size: int, batch: int = 2) -> jax.Array:
  """A dummy `[batch, S, S, 3]` float32 image batch (shapes for initialisation)."""
  return jnp.zeros((batch, image_size, image_size, 3), jnp.float32)


def keep_period(config, steps_per_epoch: int) -> int:
  """Steps between checkpoints kept for good (`config.checkpoint.keep_every_epochs`; 0: none)."""
  epochs = config.checkpoint.get("keep_every_epochs", 0)
  return max(1, int(round(epochs * steps_per_epoch))) if epochs else 0


def load_split(config, split: str):
  """The random-access source of `config.data.name`/`split` (see `data.builders`)."""
  from uniemox_jax.data import builders
  return builders.load_source(config.data.name, split, config.data.data_dir)


class NotACheckpointError(FileNotFoundError):
  """A path given as one of our checkpoints (config.resume) is not one."""


def checkpoint_location(path: str) -> tuple[str, int | None]:
  """`(checkpoint directory, step or None)` for a workdir, a checkpoints dir or a step dir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
    return path, None
  raise NotACheckpointError(f"{path!r} is not a workdir, a checkpoints directory or a step "
                            "directory of ours")
