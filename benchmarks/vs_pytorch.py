r"""Our pre-training step against the same step in PyTorch eager, alternately, on this machine.

One invocation measures, each in a fresh subprocess:
  * the dense matmul peaks (`benchmarks/peak.py`) for jax and for torch, float32 and bfloat16;
  * `--repetitions` rounds of: ours (`benchmarks/pretrain_step.py`, text tower every step,
    `--cache_text=false`) and torch (`benchmarks/torch_step.py`) for every dtype, alternating
    ours/torch (the order within each pair flips every round so neither side always runs
    second), then ours again with `--cache_text=true` (extra information: our default trains
    on cached text embeddings; the released code and the torch step run the text tower).

Ours runs under Python 3.12 / jax 0.12 (`--jax_python`, default `.venv312/bin/python` when it
exists, else this interpreter), torch under Python 3.11 (`--torch_python`, default
`.venv/bin/python` when it exists, else this interpreter). Each run reports the median of its
timed steps; a side's figure is the median over the repetitions.

Prints one JSON line per dtype (`compare`: that dtype, both sides in it) and one for the fastest
dtype of each side (`compare: 'fastest'`), each with: `ours_ms`, `torch_ms`, `ratio` =
torch_ms / ours_ms (> 1: ours is faster), the per-repetition figures, ours with cached text,
the model FLOPs (our analytic count, the same model on both sides) as a fraction of each side's
measured matmul peak (`mfu_*`), the peaks, the torch loss terms, the CPU model, its bfloat16
matrix units (`amx_bf16`, `avx512_bf16`) and the load average before and after.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vs_pytorch.py            # Ti/16 + S/16, batch 8
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vs_pytorch.py --variant=mu --teacher=tiny \
      --image_size=32 --batch=2 --repetitions=1 --warmup=1 --steps=1 --peak_n=256   # smoke

Other busy processes on the host slow either side 2–4×; compare figures of one run only, and
read `host_load_1m`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(REPO, "benchmarks")
if REPO not in sys.path:  # `python benchmarks/vs_pytorch.py` from anywhere
  sys.path.insert(0, REPO)

from benchmarks import peak as peak_lib  # noqa: E402  (imports neither jax nor torch)
DTYPES = ("float32", "bfloat16")


def _default_python(venv: str) -> str:
  path = os.path.join(REPO, venv, "bin", "python")
  return path if os.path.exists(path) else sys.executable


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="Ti/16", help="student: mu, Ti/16, S/16, B/16, L/16, H/14")
  p.add_argument("--teacher", default="S/16", choices=["tiny", "S/16", "B/16"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--mask_ratio", type=float, default=0.75)
  p.add_argument("--dtypes", default=",".join(DTYPES),
                 help="comma-separated; both sides run each")
  p.add_argument("--repetitions", type=int, default=3)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--cached_text", default=True, action=argparse.BooleanOptionalAction,
                 help="also run ours with --cache_text=true (extra information)")
  p.add_argument("--jax_python", default=_default_python(".venv312"),
                 help="interpreter for our step (default: .venv312 when present)")
  p.add_argument("--torch_python", default=_default_python(".venv"),
                 help="interpreter for the torch step (default: .venv when present)")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch intra-op threads (default: torch_step's, every usable CPU)")
  p.add_argument("--torch_attn", default="sdpa", choices=["sdpa", "eager"])
  p.add_argument("--peak_n", type=int, default=2048)
  p.add_argument("--peak_repeats", type=int, default=5)
  p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
  p.add_argument("--output", default=None, help="also append the JSON lines to this file")
  args = p.parse_args(argv)
  args.dtypes = [d for d in args.dtypes.split(",") if d]
  bad = [d for d in args.dtypes if d not in DTYPES]
  if bad or not args.dtypes:
    p.error(f"--dtypes: {bad or 'none given'}; use a comma-separated subset of {DTYPES}")
  if args.repetitions < 1 or args.steps < 1 or args.warmup < 0:
    p.error("--repetitions and --steps must be >= 1, --warmup >= 0")
  return args


# ------------------------------------------------------------------------------ subprocesses


def _run_json(cmd: list[str], env: dict, timeout: float, what: str) -> dict:
  """Runs `cmd`, returns the last JSON line of its stdout; raises naming `what` on failure."""
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                       f"--- stderr (tail) ---\n{proc.stderr[-4000:]}")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if not lines:
    raise RuntimeError(f"{what} printed no JSON line: {' '.join(cmd)}\n{proc.stdout[-2000:]}")
  result = json.loads(lines[-1])
  result["wall_s"] = round(time.perf_counter() - t0, 2)
  print(f"[vs_pytorch] {what}: {result.get('ms_per_step', '')} "
        f"{'ms/step' if 'ms_per_step' in result else ''} ({result['wall_s']} s)",
        file=sys.stderr, flush=True)
  return result


def _env(cache_dir: str | None = None) -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu")
  if cache_dir:  # a private compilation cache: repetitions reuse the compiled step
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def ours(args, dtype: str, cache_text: bool, cache_dir: str) -> dict:
  cmd = [args.jax_python, os.path.join(HERE, "pretrain_step.py"), f"--variant={args.variant}",
         f"--teacher={args.teacher}", f"--batch={args.batch}", f"--image_size={args.image_size}",
         f"--mask_ratio={args.mask_ratio}", f"--dtype={dtype}",
         f"--cache_text={str(cache_text).lower()}", f"--warmup={args.warmup}",
         f"--steps={args.steps}"]
  return _run_json(cmd, _env(cache_dir), args.timeout,
                   f"ours {dtype} cache_text={str(cache_text).lower()}")


def torch_side(args, dtype: str) -> dict:
  cmd = [args.torch_python, os.path.join(HERE, "torch_step.py"), f"--variant={args.variant}",
         f"--teacher={args.teacher}", f"--batch={args.batch}", f"--image_size={args.image_size}",
         f"--mask_ratio={args.mask_ratio}", f"--dtype={dtype}", f"--warmup={args.warmup}",
         f"--steps={args.steps}", f"--attn_implementation={args.torch_attn}"]
  if args.torch_threads:
    cmd.append(f"--threads={args.torch_threads}")
  return _run_json(cmd, _env(), args.timeout, f"torch {dtype}")


def peaks(args, backend: str) -> dict:
  python = args.jax_python if backend == "jax" else args.torch_python
  cmd = [python, os.path.join(HERE, "peak.py"), f"--backend={backend}", f"--n={args.peak_n}",
         f"--repeats={args.peak_repeats}", f"--dtypes={','.join(DTYPES)}"]
  if backend == "torch" and args.torch_threads:
    cmd.append(f"--threads={args.torch_threads}")
  return _run_json(cmd, _env(), args.timeout, f"{backend} matmul peak")


# ------------------------------------------------------------------------------ report


def _median(runs: list[dict]) -> float:
  return round(statistics.median(r["ms_per_step"] for r in runs), 3)


def _mfu(flops: float | None, ms: float, peak_gflops: float | None) -> float | None:
  if not flops or not peak_gflops or not ms:
    return None
  return round(flops / (ms / 1e3) / (peak_gflops * 1e9), 4)


def report(args, runs: dict, peak: dict, load: list[float], wall_s: float) -> list[dict]:
  """One line per dtype, then the fastest dtype of each side."""
  cpu = peak_lib.cpu_info()
  first_ours = runs[("ours", args.dtypes[0], False)][0]
  flops = first_ours.get("flops_per_step_analytic")
  common = {
      "variant": args.variant, "teacher": args.teacher, "batch": args.batch,
      "image_size": args.image_size, "patch_size": first_ours.get("patch_size"),
      "mask_ratio": args.mask_ratio, "repetitions": args.repetitions, "warmup": args.warmup,
      "steps": args.steps, "text_tower_every_step": True,
      "flops_per_step_analytic": flops,
      "peak_gflops": {"jax": {d: peak["jax"][f"{d}_gflops"] for d in DTYPES},
                      "torch": {d: peak["torch"][f"{d}_gflops"] for d in DTYPES},
                      "n": args.peak_n},
      **cpu,
      "jax": first_ours.get("jax"), "jax_python": first_ours.get("python"),
      "torch": runs[("torch", args.dtypes[0])][0].get("torch"),
      "torch_python": runs[("torch", args.dtypes[0])][0].get("python"),
      "torch_threads": runs[("torch", args.dtypes[0])][0].get("threads"),
      "torch_attn_implementation": args.torch_attn,
      "host_load_1m": [round(x, 2) for x in load],
      # More runnable threads than CPUs: every figure is slowed, torch's OpenMP threads (which
      # wait for each other after every op) far more than XLA's; compare with care.
      "host_oversubscribed": max(load) > cpu["cpus"], "wall_s": round(wall_s, 1),
  }
  lines, per_dtype = [], {}
  for dtype in args.dtypes:
    o, t = runs[("ours", dtype, False)], runs[("torch", dtype)]
    ours_ms, torch_ms = _median(o), _median(t)
    line = {"compare": dtype, "ours_dtype": dtype, "torch_dtype": dtype,
            "ours_ms": ours_ms, "torch_ms": torch_ms, "ratio": round(torch_ms / ours_ms, 4),
            "ours_ms_reps": [r["ms_per_step"] for r in o],
            "torch_ms_reps": [r["ms_per_step"] for r in t],
            "ours_compile_s": o[0].get("compile_s"),
            "mfu_ours": _mfu(flops, ours_ms, peak["jax"][f"{dtype}_gflops"]),
            "mfu_torch": _mfu(flops, torch_ms, peak["torch"][f"{dtype}_gflops"]),
            "ours_loss": o[-1].get("loss"), "torch_losses": t[-1].get("losses_last"),
            "torch_losses_first": t[0].get("losses_first")}
    if ("ours", dtype, True) in runs:
      c = runs[("ours", dtype, True)]
      line.update(ours_cached_text_ms=_median(c),
                  ours_cached_text_ms_reps=[r["ms_per_step"] for r in c],
                  ratio_vs_ours_cached_text=round(torch_ms / _median(c), 4))
    per_dtype[dtype] = line
    lines.append({**line, **common})
  best_ours = min(args.dtypes, key=lambda d: per_dtype[d]["ours_ms"])
  best_torch = min(args.dtypes, key=lambda d: per_dtype[d]["torch_ms"])
  ours_ms, torch_ms = per_dtype[best_ours]["ours_ms"], per_dtype[best_torch]["torch_ms"]
  lines.append({"compare": "fastest", "ours_dtype": best_ours, "torch_dtype": best_torch,
                "ours_ms": ours_ms, "torch_ms": torch_ms, "ratio": round(torch_ms / ours_ms, 4),
                "ours_ms_by_dtype": {d: per_dtype[d]["ours_ms"] for d in args.dtypes},
                "torch_ms_by_dtype": {d: per_dtype[d]["torch_ms"] for d in args.dtypes},
                "mfu_ours": per_dtype[best_ours]["mfu_ours"],
                "mfu_torch": per_dtype[best_torch]["mfu_torch"], **common})
  return lines


def main(argv=None):
  args = parse_args(argv)
  t_start = time.perf_counter()
  load = [os.getloadavg()[0]]
  print(f"[vs_pytorch] ours: {args.jax_python}; torch: {args.torch_python}; "
        f"load {load[0]:.2f}", file=sys.stderr, flush=True)
  peak = {"jax": peaks(args, "jax"), "torch": peaks(args, "torch")}
  runs: dict = {}
  cache_dir = tempfile.mkdtemp(prefix="vs_pytorch_jax_cache_")
  try:
    for rep in range(args.repetitions):
      for dtype in args.dtypes:
        pair = [("ours", lambda: ours(args, dtype, False, cache_dir)),
                ("torch", lambda: torch_side(args, dtype))]
        for side, fn in (pair if rep % 2 == 0 else pair[::-1]):
          key = ("ours", dtype, False) if side == "ours" else ("torch", dtype)
          runs.setdefault(key, []).append(fn())
      if args.cached_text:
        for dtype in args.dtypes:
          runs.setdefault(("ours", dtype, True), []).append(ours(args, dtype, True, cache_dir))
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  load.append(os.getloadavg()[0])
  lines = report(args, runs, peak, load, time.perf_counter() - t_start)
  for line in lines:
    print(json.dumps(line), flush=True)
  if args.output:
    with open(args.output, "a") as f:
      f.writelines(json.dumps(line) + "\n" for line in lines)
  for l in lines:
    print(f"[vs_pytorch] {l['compare']}: ours {l['ours_dtype']} {l['ours_ms']:.0f} ms, torch "
          f"{l['torch_dtype']} {l['torch_ms']:.0f} ms → ratio {l['ratio']:.2f} "
          f"({'ours' if l['ratio'] > 1 else 'torch'} faster)", file=sys.stderr)


if __name__ == "__main__":
  main()
