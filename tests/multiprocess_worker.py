"""One of several JAX processes on this machine (CPU, gloo collectives), started by
tests/test_multiprocess.py: `python multiprocess_worker.py PORT NUM_PROCESSES PROCESS_ID`."""
import json
import os
import signal
import sys

import jax

port, num_processes, process_id = (int(a) for a in sys.argv[1:4])
jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                           process_id=process_id)

from uniemox_jax.train import loop as loop_lib  # noqa: E402


def first_stop(where, kill_at, with_step):
  """Checks 6 times; the last process SIGTERMs itself before check `kill_at`. Returns the
  index of the check that raised `Preempted` on this process (None if none did)."""
  preemption = loop_lib.Preemption()
  try:
    for i in range(6):
      if i == kill_at and process_id == num_processes - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      try:
        preemption.check(where, step=i if with_step else None)
      except loop_lib.Preempted:
        return i
    return None
  finally:
    preemption.close()


digest = ("ab" if process_id == 0 else "cd") * 32   # as if file times differed between hosts
print(json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                  "digest": loop_lib.same_on_all_processes(digest),
                  "all_true": loop_lib.all_processes_agree(True),
                  "one_false": loop_lib.all_processes_agree(process_id != 0),
                  "evaluation": first_stop("evaluation", 2, with_step=False),
                  "training": first_stop("training", 4, with_step=True),
                  "nothing": first_stop("evaluation", 99, with_step=False)}), flush=True)
