"""Export of our checkpoints to the official PyTorch layouts and back."""
import jax
import numpy as np


def test_export_round_trips_through_the_official_layout(demo_env, tmp_path):
  import train_utils as tu
  from uniemox_jax import train
  from uniemox_jax.models import convert
  from uniemox_jax.tools import export
  from uniemox_jax import start
  pre = str(tmp_path / "pre")
  train.run(tu.pretrain_config(demo_env, total_steps=1), pre)
  sd = export.export(pre, str(tmp_path / "mae.safetensors"))
  assert "blocks.0.attn.qkv.weight" in sd and sd["pos_embed"].shape == (1, 17, 32)
  ours, _ = start.read_params(pre)
  back = convert.load_mae_checkpoint(str(tmp_path / "mae.safetensors"), "mu", image_size=32)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(ours["mae"]))

  ft = str(tmp_path / "ft")
  train.run(tu.finetune_config(demo_env, total_steps=1, init=pre), ft)
  export.export(ft, str(tmp_path / "cls.npz"))
  back, report = convert.load_classifier_checkpoint(str(tmp_path / "cls.npz"), variant="mu",
                                                    num_classes=8, image_size=32)
  assert not report.missing and not report.unexpected
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(start.read_params(ft)[0]))
