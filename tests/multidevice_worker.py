"""Runs in a subprocess with N fake CPU devices (XLA_FLAGS set by the caller) so the rest of
the suite keeps one fast device. Actions:

  train   DEMO_ROOT WORKDIR DATA FSDP STEPS   pre-train on a data×fsdp mesh, dump params
  restore DEMO_ROOT CKPT_DIR DATA FSDP OUT    restore a checkpoint onto that mesh, dump params
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

import conftest  # noqa: E402,F401  (environment defaults)
import train_utils as tu  # noqa: E402
from uniemox_jax import checkpointing, sharding, train  # noqa: E402
from uniemox_jax.models import clip  # noqa: E402
from uniemox_jax.train import loop as loop_lib, pretrain  # noqa: E402


def _env(root):
  return conftest.DemoEnv(root, os.path.join(root, "raw"), os.path.join(root, "tfds"),
                          os.path.join(root, "tiny_clip"))


def _config(env, data, fsdp, steps):
  return tu.pretrain_config(env, total_steps=steps, **{
      "mesh.data": data, "mesh.fsdp": fsdp, "mesh.min_shard_size": 0,
      "checkpoint.every_steps": 2})


def _dump(params, path, extra):
  flat = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in
          traverse_util.flatten_dict(params).items()}
  np.savez(path, **flat)
  with open(path + ".json", "w") as f:
    json.dump(extra, f)


def _sharded_leaves(params):
  return sum(1 for x in jax.tree.leaves(params) if not x.sharding.is_fully_replicated)


def main():
  action, root, target, data, fsdp = sys.argv[1:6]
  env, data, fsdp = _env(root), int(data), int(fsdp)
  if action == "train":
    steps = int(sys.argv[6])
    result = train.run(_config(env, data, fsdp, steps), target)
    directory = os.path.join(target, "checkpoints")
  else:
    directory = target
  config = _config(env, data, fsdp, 4)
  mesh = sharding.make_mesh(data, fsdp)
  teacher = clip.load_clip(env.clip)[0]
  _, _, _, state, shardings = pretrain.init_train_state(config, mesh,
                                                        teacher.spec.projection_dim, 4, 1)
  ckpt = checkpointing.Checkpointer(directory, read_only=True)
  restored = ckpt.restore(loop_lib.abstract_state(state, shardings))
  out = sys.argv[6] if action == "restore" else os.path.join(target, "params.npz")
  _dump(restored.state.params, out, {
      "devices": jax.device_count(), "step": restored.step,
      "sharded_leaves": _sharded_leaves(restored.state.params),
      "status": result["status"] if action == "train" else "restored"})


if __name__ == "__main__":
  main()
