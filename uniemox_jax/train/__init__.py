"""Training entry point: `run(config, workdir)` dispatches on `config.task`.

Tasks: 'pretrain' (UniEmoX pre-training), 'finetune' (benchmark fine-tuning, best val → test),
'linear_probe' (frozen features), 'eval' (one checkpoint on one split).
"""
from __future__ import annotations

import os
import time

import jax
from absl import logging

from uniemox_jax.data.builders import DatasetNotPreparedError, ManualDirError
from uniemox_jax.train import validation
from uniemox_jax.train.common import NotACheckpointError

# Errors whose message tells the user what to fix: main.py prints them without a traceback.
UserError = (validation.ConfigError, DatasetNotPreparedError, ManualDirError,
             NotACheckpointError)


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
  from uniemox_jax import metrics
  from uniemox_jax.train import loop as loop_lib  # after distributed init: imports jax work
  metrics.quiet_library_logs()
  start = time.perf_counter()
  validation.validate(config)
  os.makedirs(workdir, exist_ok=True)
  preemption = loop_lib.Preemption()
  try:
    if config.task == "pretrain":
      from uniemox_jax.train import pretrain
      result = pretrain.run(config, workdir, preemption)
    elif config.task == "finetune":
      from uniemox_jax.train import finetune
      result = finetune.run(config, workdir, preemption)
    elif config.task == "linear_probe":
      from uniemox_jax.train import linear_probe
      result = linear_probe.run(config, workdir, preemption)
    else:
      from uniemox_jax.train import finetune
      result = finetune.run_eval(config, workdir, preemption)
  except loop_lib.Preempted as e:  # pre-empted outside a training loop (e.g. linear probe)
    logging.warning("%s: stopping; run the same command again to continue", e)
    result = {"status": "preempted"}
  finally:
    preemption.close()
  logging.info("%s finished (%s) in %.1f min", config.task, result.get("status"),
               (time.perf_counter() - start) / 60)
  return result
