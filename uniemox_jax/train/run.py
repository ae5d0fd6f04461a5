"""The task dispatcher: `run(config, workdir)` validates the config and runs `config.task`.

Tasks (`TASKS`): 'pretrain' (UniEmoX pre-training), 'finetune' (benchmark fine-tuning, best
val → test), 'linear_probe' (frozen features), 'eval' (one checkpoint on one split), 'knn' and
'zeroshot' (read-outs of a pre-trained checkpoint, `train/readout.py`).
"""
from __future__ import annotations

import os
import time

import jax
from absl import logging

from uniemox_jax import errors, metrics, start
from uniemox_jax.data.builders import DatasetNotPreparedError, ManualDirError
from uniemox_jax.train import evaluate, finetune, linear_probe, loop as loop_lib, pretrain
from uniemox_jax.train import readout
from uniemox_jax.train import validation

# task name → `run(config, workdir, preemption)`.
TASKS = {"pretrain": pretrain.run, "finetune": finetune.run, "linear_probe": linear_probe.run,
         "eval": evaluate.run, "knn": readout.run_knn, "zeroshot": readout.run_zeroshot}

# Errors whose message tells the user what to fix: main.py (errors.run_cli) prints them as one
# `error: ...` line without a traceback and exits with errors.EXIT_USER_ERROR. ConfigError,
# NotACheckpointError and the starting-point errors are errors.UserError subclasses; the data
# builders' errors are registered here (data code does not import the error module).
UserError = errors.register_user_errors(validation.ConfigError, DatasetNotPreparedError,
                                        ManualDirError, start.NotACheckpointError)


def initialize_distributed(force: bool = False) -> None:
  """`jax.distributed.initialize()` when the job spans several processes.

  Multi-process jobs are recognised by `force` (main.py's --distributed) or by the
  environment a launcher sets (JAX_COORDINATOR_ADDRESS, SLURM with several tasks, or a
  multi-worker TPU slice); a single process needs nothing.
  """
  env = os.environ
  multi = (force or "JAX_COORDINATOR_ADDRESS" in env
           or int(env.get("SLURM_NTASKS", "1")) > 1
           or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1)
  if multi and not jax.distributed.is_initialized():
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def run(config, workdir: str) -> dict:
  """Validates `config`, then runs its task in `workdir`. Returns a small summary dict."""
  metrics.quiet_library_logs()
  begin = time.perf_counter()
  validation.validate(config)
  os.makedirs(workdir, exist_ok=True)
  preemption = loop_lib.Preemption()
  try:
    result = TASKS[config.task](config, workdir, preemption)
  except loop_lib.Preempted as e:  # pre-empted outside a training loop (e.g. linear probe)
    logging.warning("%s: stopping; run the same command again to continue", e)
    result = {"status": "preempted"}
  finally:
    preemption.close()
  logging.info("%s finished (%s) in %.1f min", config.task, result.get("status"),
               (time.perf_counter() - begin) / 60)
  return result
