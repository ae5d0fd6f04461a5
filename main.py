r"""UniEmoX in JAX: pre-training, fine-tuning, linear probing and evaluation.

  python main.py --config=configs/pretrain.py[:args] --workdir=DIR [--config.key=value ...]

The config file's docstring gives its arguments and the exact launch command; the README
gives the recipes. Running the same command again after a stop continues the run.

A mistake in the flags, the config, a path, the starting point or the data ends at once with
one `error: ...` line that names it (no traceback). Exit codes (`uniemox_jax.errors`):
0 finished, 1 a bug (traceback), 2 a user error, 3 stopped on a non-finite loss or norm,
75 pre-empted (checkpoint saved: run the same command again).
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from uniemox_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py:demo. Keys can be overridden with "
    "--config.key=value (a misspelt key fails at start).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host jobs; detected "
    "automatically under JAX_COORDINATOR_ADDRESS, SLURM or a multi-worker TPU slice).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: main.py takes flags only "
                         "(--config=FILE[:args], --workdir=DIR, --config.key=value)")
  from uniemox_jax import train  # noqa: PLC0415 - after flag parsing
  train.initialize_distributed(_DISTRIBUTED.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  logging.get_absl_handler().use_absl_log_file("log", _WORKDIR.value)
  logging.set_stderrthreshold("info")
  # User errors (train.UserError) and a non-finite stop end in errors.run_cli with one line.
  result = train.run(_CONFIG.value, _WORKDIR.value)
  if result.get("status") == "preempted":
    logging.warning("pre-empted: checkpoint saved in %s; run the same command to resume",
                    _WORKDIR.value)
    return errors.EXIT_PREEMPTED
  return errors.EXIT_OK


if __name__ == "__main__":
  errors.run_cli(main, config_flag="config")
