"""Shared config pieces. Configs are data: this module imports ml_collections only.

Config arguments come after a colon, comma-separated: `configs/pretrain.py:variant=B/16,demo`.
A bare word is a flag set to True (`demo`); `key=value` values are parsed as int, float,
bool or string. A wrong argument raises `ConfigArgumentError` naming it, what was expected
and the closest known names (main.py prints it as one `error: ...` line).
"""
from __future__ import annotations

import difflib

import ml_collections
from ml_collections import config_dict

# The demo writes everything under this directory (relative to where main.py runs).
DEMO_DIR = "demo_out"


class ConfigArgumentError(KeyError, ValueError):
  """A config argument (after the colon) that is unknown or malformed.

  A KeyError for an unknown name and a ValueError for a value that does not parse (both
  bases, so callers may catch either); the message is plain text (no KeyError quoting).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def did_you_mean(word: str, known) -> str:
  """`" (did you mean 'demo'?)"` for the closest of `known` to `word`, or `""`."""
  close = difflib.get_close_matches(str(word), [str(k) for k in known], n=2, cutoff=0.6)
  return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`'variant=L/16,demo,mask_ratio=0.9'` → ConfigDict.

  Raises `ConfigArgumentError` for an unknown key (with the closest known ones) or a value of
  the wrong type (with the expected type and the default).
  """
  out = dict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, eq, value = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigArgumentError(f"unknown config argument {key!r}{did_you_mean(key, defaults)}; "
                                f"known: {', '.join(sorted(defaults))}")
    if not eq:
      if not isinstance(defaults[key], bool):
        raise ConfigArgumentError(f"config argument {key!r} needs a value: {key}=... "
                                  f"(default {defaults[key]!r})")
      out[key] = True
      continue
    try:
      out[key] = _parse_value(value.strip(), defaults[key])
    except ValueError as e:
      raise ConfigArgumentError(f"config argument {key}={value.strip()!r}: {e} "
                                f"(default {defaults[key]!r})") from None
  return ml_collections.ConfigDict(out)


def _parse_value(value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")
  for kind in (int, float):
    if isinstance(default, kind) and not isinstance(default, bool):
      try:
        return kind(value)
      except ValueError:
        raise ValueError(f"expected {'an int' if kind is int else 'a float'}, "
                         f"got {value!r}") from None
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def variant_default():
  """An unset int: the model variant's own value (`None`) until the user sets one."""
  return config_dict.placeholder(int)


def mesh_config() -> ml_collections.ConfigDict:
  # -1: all remaining devices. fsdp > 1 shards parameters and optimizer state (tensors of at
  # least min_shard_size elements, over their largest dimension the fsdp size divides).
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, min_shard_size=2 ** 14))


def optim_config(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(
      base_lr=1e-3,        # lr = base_lr × global batch / 256 (docs/method.md §4), unless lr > 0
      lr=0.0,              # absolute peak lr; 0 derives it from base_lr
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05,   # not applied to biases and norm scales
      no_decay_names=(),   # further parameter names without weight decay
      min_lr=0.0,
      grad_clip=0.0,       # global-norm clipping; 0 disables
      layer_decay=0.0,     # layer-wise lr decay (fine-tuning: 0.75); 0 disables
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def checkpoint_config(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(
      every_steps=1000,    # also saved at the end and on SIGTERM
      keep=3,              # most recent checkpoints kept
      keep_best=0,         # fine-tuning: best by validation top-1, kept besides the latest
      keep_every_epochs=0, # also save and keep for good a checkpoint every this many epochs
      async_save=True,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def log_config(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(every_steps=50, tensorboard=True)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def base_config() -> ml_collections.ConfigDict:
  """Keys every task has."""
  config = ml_collections.ConfigDict()
  config.task = ""
  config.seed = 0
  config.batch_size = 256          # global, over all devices and hosts
  config.total_epochs = 100
  config.warmup_epochs = 5
  config.total_steps = 0           # > 0 overrides total_epochs (smoke tests, benchmarks)
  config.init = ""                 # weights to start from (see README: "Starting points")
  # config.init must provide the encoder the task needs: a load that leaves most of the
  # encoder newly initialised stops the run, unless this is True (you accept it knowingly;
  # the load report is printed either way).
  config.init_allow_partial = False
  config.resume = ""               # another run's workdir or checkpoint to continue from
  config.mesh = mesh_config()
  config.checkpoint = checkpoint_config()
  config.log = log_config()
  return config


def demo_base(config, *, batch_size: int, total_epochs: int) -> None:
  """What every `:demo` config shares: the tiny `mu` model at 64 px in float32, the generated
  data that `bash demo.sh` prepares under DEMO_DIR, read in the main process."""
  config.batch_size = batch_size
  config.total_epochs = total_epochs
  config.model.variant = "mu"
  config.model.image_size = 64
  config.model.dtype = "float32"
  config.data.data_dir = f"{DEMO_DIR}/tfds"
  config.data.num_workers = 0
