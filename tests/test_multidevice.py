"""Sharding: the same training on 8 fake CPU devices (data × fsdp mesh) as on one, and
checkpoints that move between device layouts. The 8-device side runs in a subprocess."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import train_utils as tu
from uniemox_jax import checkpointing, sharding, train
from uniemox_jax.models import clip
from uniemox_jax.train import loop as loop_lib, pretrain

pytestmark = pytest.mark.multidevice
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multidevice_worker.py")


def _worker(*args, devices=8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _load(path):
  with np.load(path) as z:
    params = {k: z[k] for k in z.files}
  with open(path + ".json") as f:
    return params, json.load(f)


def _single_device_params(env, directory):
  config = tu.pretrain_config(env)
  mesh = sharding.make_mesh(1, 1)
  teacher = clip.load_clip(env.clip)[0]
  _, _, _, state, shardings = pretrain.init_train_state(config, mesh,
                                                        teacher.spec.projection_dim, 4, 1)
  restored = checkpointing.Checkpointer(directory, read_only=True).restore(
      loop_lib.abstract_state(state, shardings))
  return {"/".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(restored.state.params)).items()}


@pytest.fixture(scope="module")
def eight_device_run(demo_env, tmp_path_factory):
  work = tmp_path_factory.mktemp("eight")
  _worker("train", demo_env.root, work, 4, 2, 4)
  return work


def test_eight_devices_data_fsdp_give_the_same_losses_as_one(demo_env, eight_device_run,
                                                              tmp_path):
  _, info = _load(str(eight_device_run / "params.npz"))
  assert info["devices"] == 8 and info["sharded_leaves"] > 10  # fsdp really shards
  train.run(tu.pretrain_config(demo_env, total_steps=4), str(tmp_path))
  one = tu.losses_by_step(tmp_path)
  eight = tu.losses_by_step(eight_device_run)
  assert sorted(one) == sorted(eight) == [1, 2, 3, 4]
  for step in one:
    assert abs(one[step] - eight[step]) <= 1e-5 * max(1.0, abs(one[step])), (step, one, eight)


def test_saved_on_eight_restores_identically_on_one(demo_env, eight_device_run):
  saved, info = _load(str(eight_device_run / "params.npz"))
  assert info["step"] == 4
  restored = _single_device_params(demo_env, str(eight_device_run / "checkpoints"))
  assert saved.keys() == restored.keys()
  for key in saved:
    np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)


def test_saved_on_one_restores_identically_on_eight(demo_env, tmp_path):
  train.run(tu.pretrain_config(demo_env, total_steps=2), str(tmp_path / "one"))
  expected = _single_device_params(demo_env, str(tmp_path / "one" / "checkpoints"))
  out = str(tmp_path / "on_eight.npz")
  _worker("restore", demo_env.root, tmp_path / "one" / "checkpoints", 2, 4, out)
  restored, info = _load(out)
  assert info["devices"] == 8 and info["sharded_leaves"] > 10
  for key in expected:
    np.testing.assert_array_equal(restored[key], expected[key], err_msg=key)
