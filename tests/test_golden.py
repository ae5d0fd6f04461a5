"""Golden losses: the pre-training demo config's first 10 losses on the test look-alike data,
pinned to values recorded when the step was last changed on purpose. A silent numerical
change (a loss term, the masking, the optimizer, preprocessing, the teacher's input) fails
here. Recorded with jax 0.10.2 (Python 3.11) on 2026-12-01; jax 0.12 gives the same values
to 1e-7 relative.

If a change alters the numbers on purpose, re-record them (print `losses` below) and say
why in the commit message.
"""
import numpy as np

import train_utils as tu
from configs import pretrain as pretrain_cfg
from uniemox_jax import train

GOLDEN = [3.413604736328125, 3.5320005416870117, 2.893300771713257, 2.871199607849121,
          2.741246461868286, 2.6555824279785156, 2.6139514446258545, 2.6540963649749756,
          2.609147071838379, 2.582594394683838]


def test_first_ten_pretraining_losses_equal_the_recorded_values(demo_env, tmp_path):
  config = pretrain_cfg.get_config("demo")  # mu at 64 px, batch 32, float32
  config.data.data_dir = demo_env.tfds
  config.teacher.path = demo_env.clip
  config.total_steps = 10
  config.log.every_steps = 1
  config.checkpoint.every_steps = 0
  train.run(config, str(tmp_path))
  by_step = tu.losses_by_step(str(tmp_path))
  losses = [by_step[s] for s in range(1, 11)]
  np.testing.assert_allclose(losses, GOLDEN, rtol=1e-6, atol=0)
