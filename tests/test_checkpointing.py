"""Checkpoint retention and recovery: keeping the best never evicts the latest, the best
survives restarts, unreadable checkpoints are set aside, restores need an abstract target."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax import checkpointing


def _state(value):
  return {"w": jnp.full((4, 4), float(value)), "step": jnp.int32(value)}


def _abstract():
  return jax.eval_shape(lambda: _state(0))


def test_keep_best_never_evicts_the_latest_and_survives_restarts(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, keep_best=1)
  for step, top1 in [(1, 0.5), (2, 0.9), (3, 0.1)]:
    ckpt.save(step, _state(step), metrics={"val_top1": top1})
    ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
  ckpt.close()
  # A restarted run (new manager): the best is remembered, not deleted as "without metrics".
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, keep_best=1)
  for step, top1 in [(4, 0.2), (5, 0.3)]:
    ckpt.save(step, _state(step), metrics={"val_top1": top1})
    ckpt.wait()
  assert ckpt.all_steps() == [2, 5] and ckpt.best_step() == 2
  ckpt.save(6, _state(6))  # a pre-emption save without metrics is kept as the latest
  ckpt.wait()
  assert ckpt.all_steps() == [2, 6] and ckpt.latest_step() == 6
  ckpt.record_metrics(6, {"val_top1": 0.95})  # its evaluation, redone after a resume
  assert ckpt.best_step() == 6 and ckpt.metrics(6) == {"val_top1": 0.95}


def test_restore_round_trip_with_data_and_meta(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(7, _state(7), data={"next_index": 56}, meta={"epoch": 1.5})
  ckpt.wait()
  restored = ckpt.restore(_abstract())
  assert restored.step == 7 and restored.data == {"next_index": 56}
  assert restored.meta == {"epoch": 1.5}
  np.testing.assert_array_equal(restored.state["w"], 7.0)
  assert ckpt.save(7, _state(8)) is False  # an existing step is never overwritten


def test_unreadable_latest_is_set_aside_and_the_previous_used(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2):
    ckpt.save(step, _state(step))
    ckpt.wait()
  for root, _, files in os.walk(tmp_path / "2" / "state"):
    for name in files:
      if name.startswith("manifest"):
        open(os.path.join(root, name), "wb").close()
  # Read-only (another run's checkpoints, config.resume): falls back, but renames nothing.
  other = checkpointing.Checkpointer(str(tmp_path), keep=3, read_only=True)
  assert other.restore(_abstract()).step == 1
  assert os.path.isdir(tmp_path / "2") and not os.path.exists(tmp_path / "2.unreadable")
  other.close()
  with caplog.at_level("WARNING"):
    restored = ckpt.restore(_abstract())
  assert restored.step == 1 and "could not be restored" in caplog.text
  assert os.path.isdir(tmp_path / "2.unreadable") and ckpt.all_steps() == [1]
  ckpt.save(2, _state(2))  # the step can be written again
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]


def test_non_finite_checkpoints_are_refused(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(1, {"w": jnp.full((2,), jnp.nan), "step": jnp.int32(1)})
  ckpt.wait()
  with pytest.raises(ValueError, match="non-finite"):
    ckpt.restore(_abstract() | {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_missing_step_is_named(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
    ckpt.restore(_abstract(), step=3)


def test_keep_period_keeps_those_steps_for_good_besides_the_latest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, keep_period=3, async_save=False)
  for step in range(1, 8):
    ckpt.save(step, _state(step))
  ckpt.wait()
  assert ckpt.all_steps() == [3, 6, 7]
  ckpt.close()
