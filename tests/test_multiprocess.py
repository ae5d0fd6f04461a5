"""Several JAX processes (as on a multi-host TPU slice), here on one machine's CPU: a SIGTERM
that reaches only one process stops all of them at the same point, so none is left waiting in
a collective (an evaluation's all-gather, a training step); per-process decisions agree."""
import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.multidevice
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_a_sigterm_on_one_process_stops_every_process_at_the_same_check():
  n, port = 2, _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(n), str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(n)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("a process hung: the processes did not agree on when to stop")
    assert p.returncode == 0, err[-4000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert sorted(o["process"] for o in outs) == list(range(n))
  for o in outs:  # only the last process was signalled; every process stopped with it
    assert o["count"] == n
    assert (o["evaluation"], o["training"], o["nothing"]) == (2, 4, None), o
    # The helpers that keep per-process decisions (feature caches) in step.
    assert o["digest"] == "ab" * 32 and o["all_true"] and not o["one_false"]
