r"""The machine's dense matmul peak (GFLOP/s) for jax and torch, and what CPU it is.

MFU means something only against the peak of the machine it was measured on, so the benchmarks
measure that peak in the same run: a square `n × n @ n × n` matmul (2·n³ FLOPs), warmed up,
then the best of `repeats` timed runs (the best, not the median: the peak is what the machine
can do, interference only ever slows it down). n = 2048 saturates a CPU's matmul kernels
(jax: one jitted `a @ b`, `block_until_ready`; torch: `torch.matmul` under `no_grad`, eager
CPU ops are synchronous).

  from benchmarks import peak                       # or: sys.path has benchmarks/
  peak.matmul_peak_gflops("bfloat16")               # jax, default device
  peak.torch_matmul_peak_gflops("float32")          # needs torch
  peak.cpu_info()                                   # {'cpu_model', 'amx_bf16', 'avx512_bf16', ...}

As a script it prints one JSON line (used by `vs_pytorch.py`, one interpreter per backend):

  .venv312/bin/python benchmarks/peak.py --backend=jax --dtypes=float32,bfloat16
  .venv/bin/python benchmarks/peak.py --backend=torch --dtypes=float32,bfloat16

Neither jax nor torch is imported until a function needs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

DTYPES = ("float32", "bfloat16")
# CPU flags that mean bfloat16 matrix hardware (Intel AMX tiles, AVX-512 BF16 dot products).
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")


def _check(dtype: str, n: int, repeats: int, warmup: int):
  if dtype not in DTYPES:
    raise ValueError(f"matmul peak: unknown dtype {dtype!r}; use one of {DTYPES}")
  if n < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f"matmul peak needs n >= 1, repeats >= 1, warmup >= 0 (got {n}, "
                     f"{repeats}, {warmup})")


def matmul_peak_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 5,
                       warmup: int = 2, device=None) -> float:
  """Best GFLOP/s of a jitted `[n, n] @ [n, n]` matmul in `dtype` on `device` (default: jax's
  first device). FLOPs counted as 2·n³ per matmul."""
  _check(dtype, n, repeats, warmup)
  import jax
  import jax.numpy as jnp
  device = device or jax.devices()[0]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(ka, (n, n), jnp.float32).astype(dtype), device)
  b = jax.device_put(jax.random.normal(kb, (n, n), jnp.float32).astype(dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))  # compile
  for _ in range(warmup):
    jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best / 1e9


def torch_matmul_peak_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 5,
                             warmup: int = 2) -> float:
  """Best GFLOP/s of an eager CPU `torch.matmul` of two `[n, n]` tensors in `dtype`."""
  _check(dtype, n, repeats, warmup)
  import torch
  gen = torch.Generator().manual_seed(0)
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  a = torch.randn(n, n, generator=gen).to(tdtype)
  b = torch.randn(n, n, generator=gen).to(tdtype)
  with torch.no_grad():
    for _ in range(warmup + 1):
      torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      torch.matmul(a, b)
      best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best / 1e9


def cpu_info() -> dict:
  """CPU model and whether it has bfloat16 matrix units (from /proc/cpuinfo, else lscpu)."""
  model, flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
          model = value.strip()
        elif key == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  if model is None or not flags:
    try:
      out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
      for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and model is None:
          model = value.strip()
        elif key.strip() == "Flags" and not flags:
          flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
      pass
  info = {"cpu_model": model or platform.processor() or "unknown",
          "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else os.cpu_count()}
  info.update({flag: flag in flags for flag in BF16_FLAGS})
  info["bf16_matrix_units"] = info["amx_bf16"] or info["avx512_bf16"]
  return info


def measure(backend: str, dtypes=DTYPES, n: int = 2048, repeats: int = 5,
            warmup: int = 2) -> dict:
  """`{'backend', 'n', 'repeats', '<dtype>_gflops': ..., versions, cpu_info()}`."""
  if backend not in ("jax", "torch"):
    raise ValueError(f"unknown backend {backend!r}; use 'jax' or 'torch'")
  fn = matmul_peak_gflops if backend == "jax" else torch_matmul_peak_gflops
  out = {"backend": backend, "n": n, "repeats": repeats,
         "python": ".".join(map(str, sys.version_info[:3]))}
  for dtype in dtypes:
    out[f"{dtype}_gflops"] = round(fn(dtype, n=n, repeats=repeats, warmup=warmup), 2)
  if backend == "jax":
    import jax
    out.update(jax=jax.__version__, device_kind=jax.devices()[0].device_kind)
  else:
    import torch
    out.update(torch=torch.__version__, threads=torch.get_num_threads())
  out.update(cpu_info())
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description="Dense matmul peak GFLOP/s (one JSON line).")
  p.add_argument("--backend", choices=["jax", "torch"], default="jax")
  p.add_argument("--dtypes", default=",".join(DTYPES))
  p.add_argument("--n", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
  args = p.parse_args(argv)
  if args.backend == "torch" and args.threads:
    import torch
    torch.set_num_threads(args.threads)
  dtypes = [d for d in args.dtypes.split(",") if d]
  print(json.dumps(measure(args.backend, dtypes, args.n, args.repeats, args.warmup)), flush=True)


if __name__ == "__main__":
  main()
