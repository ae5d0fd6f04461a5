"""Training tasks. The entry point is `run(config, workdir)` (see `train/run.py`)."""
from uniemox_jax.train.run import TASKS, UserError, initialize_distributed, run

__all__ = ["TASKS", "UserError", "initialize_distributed", "run"]
