"""The one reader of weight files: every format and wrapping it promises, in one place."""
import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from uniemox_jax.weights import files


def _sd():
  rng = np.random.default_rng(0)
  return {"a.weight": rng.normal(size=(3, 2)).astype(np.float32),
          "b.bias": rng.normal(size=(4,)).astype(np.float32)}


def test_sharded_hf_directory_with_config(tmp_path):
  sd = _sd()
  save_file({"a.weight": sd["a.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
  save_file({"b.bias": sd["b.bias"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "a.weight": "model-00001-of-00002.safetensors",
      "b.bias": "model-00002-of-00002.safetensors"}}))
  (tmp_path / "config.json").write_text('{"model_type": "x"}')
  got = files.read(tmp_path)
  assert got.hf_config == {"model_type": "x"} and len(got.files) == 2
  assert got.format == "HF model-00001-of-00002.safetensors (+1 shards)"
  for k, v in sd.items():
    np.testing.assert_array_equal(got.tensors[k], v)
  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="listed in the shard index"):
    files.read(tmp_path)


def test_bfloat16_safetensors_become_float32(tmp_path):
  import jax.numpy as jnp
  from safetensors.flax import save_file as save_jax
  value = np.arange(6, dtype=np.float32).reshape(2, 3)
  save_jax({"w": jnp.asarray(value, jnp.bfloat16)}, str(tmp_path / "w.safetensors"))
  got = files.read(tmp_path / "w.safetensors")
  assert got.tensors["w"].dtype == np.float32
  np.testing.assert_array_equal(got.tensors["w"], value.astype(ml_dtypes.bfloat16))


def test_npz_and_flat_groups_and_module_prefixes(tmp_path):
  sd = _sd()
  np.savez(tmp_path / "w.npz", **{f"module.model.{k}": v for k, v in sd.items()},
           **{"att_fusion.linear.weight": np.ones((2, 2), np.float32)})
  got = files.read(tmp_path / "w.npz")
  assert got.format == "npz" and set(got.tensors) == set(sd)
  assert set(got.groups) == {"att_fusion"} and got.groups["att_fusion"]["linear.weight"].shape == (2, 2)


def test_missing_path_and_empty_directory_name_what_was_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="CLIP weights not found.*does not exist"):
    files.read(tmp_path / "nowhere", what="CLIP weights")
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    files.read(tmp_path)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:`torch.jit.(script|save)` is deprecated:DeprecationWarning")
def test_torch_pickles_and_torchscript_archives(tmp_path):
  import argparse
  import torch
  sd = {k: torch.from_numpy(v) for k, v in _sd().items()}
  torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3,
              "args": argparse.Namespace(lr=1e-3)}, tmp_path / "ckpt.pth")
  got = files.read(tmp_path / "ckpt.pth")
  assert got.format == "torch" and set(got.tensors) == set(sd) and not got.groups

  class M(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.a = torch.nn.Linear(2, 3)

    def forward(self, x):
      return self.a(x)

  torch.jit.save(torch.jit.script(M()), str(tmp_path / "m.pt"))
  got = files.read(tmp_path / "m.pt")
  assert got.format == "torchscript" and set(got.tensors) == {"a.weight", "a.bias"}
