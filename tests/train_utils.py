"""Tiny configs over the generated demo environment, shared by the training tests."""
from __future__ import annotations

import json
import os

from configs import finetune as finetune_cfg
from configs import linear_probe as probe_cfg
from configs import pretrain as pretrain_cfg
from uniemox_jax import metrics


def pretrain_config(env, **overrides):
  return shrink_pretrain(pretrain_cfg.get_config("demo"), env, **overrides)


def finetune_config(env, **overrides):
  return shrink_finetune(finetune_cfg.get_config("emo8,demo"), env, **overrides)


def probe_config(env, init, **overrides):
  return shrink_probe(probe_cfg.get_config("emo8,demo"), env, init, **overrides)


def _tiny(c, env):
  """What every task shares at test size: the `mu` model at 32 px, float32, on the demo data
  read in the main process."""
  c.model.variant = "mu"
  c.model.dtype = "float32"
  c.model.image_size = 32
  c.data.num_workers = 0
  c.data.data_dir = env.tfds
  c.batch_size = 8


def shrink_pretrain(c, env, **overrides):
  """Any pre-training config at test size: the `mu` model at 32 px on the demo data."""
  _tiny(c, env)
  c.total_steps = 4
  c.total_epochs = 10
  c.warmup_epochs = 1
  c.teacher.path = env.clip
  c.checkpoint.every_steps = 2
  c.log.every_steps = 1
  for key, value in overrides.items():
    _set(c, key, value)
  return c


def shrink_finetune(c, env, **overrides):
  _tiny(c, env)
  c.optim.lr = 1e-3
  c.data.eval_resize = 37
  c.total_steps = 6
  c.total_epochs = 2
  c.warmup_epochs = 1
  c.eval.every_epochs = 1
  c.eval.batch_size = 8
  c.init = ""
  c.log.every_steps = 1
  for key, value in overrides.items():
    _set(c, key, value)
  return c


def shrink_probe(c, env, init, **overrides):
  _tiny(c, env)
  c.optim.lr = 3e-3
  c.data.eval_resize = 37
  c.init = init
  c.total_epochs = 5
  c.eval.batch_size = 8
  for key, value in overrides.items():
    _set(c, key, value)
  return c


def _set(config, dotted, value):
  *path, last = dotted.split(".")
  for part in path:
    config = config[part]
  config[last] = value


def losses_by_step(workdir, key="train/loss"):
  """The last logged value of `key` per step (a resumed run re-logs the steps it redoes)."""
  out = {}
  for row in metrics.read_metrics(workdir):
    if key in row:
      out[row["step"]] = row[key]
  return out


def read_json(*parts):
  with open(os.path.join(*parts)) as f:
    return json.load(f)
