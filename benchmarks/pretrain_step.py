r"""Speed of the real UniEmoX pre-training step (images/s, ms/step, compile time, memory, MFU).

Compiles exactly what `main.py` trains — `pretrain.make_train_step` with the optimizer from
`optim.make_optimizer`, a sharded `TrainState` donated every step, the frozen CLIP teacher —
on synthetic inputs (random uint8 views, random caption ids or random cached text embeddings)
and random weights, so it needs no data, no CLIP and no MAE checkpoint. Prints ONE JSON line on
stdout (and a readable summary on stderr):

  variant, teacher, batch, image_size, patch_size, mask_ratio, dtype, teacher_dtype, cache_text,
  fusion, remat, attention_impl, devices, device_kind, compile_s, ms_per_step (median of the
  timed steps; also min/mean), images_per_sec, images_per_sec_per_device, peak_bytes (+ where it
  came from), flops_per_step_xla (the compiled step's `cost_analysis()`: forward + backward +
  optimizer + teacher, all ops; XLA counts the per-device program, scaled here to all devices),
  flops_per_step_analytic (matmuls only, see `analytic_flops`), and mfu / mfu_source when a
  peak FLOP/s is known (`PEAK_TFLOPS_BF16`: dense bf16 peaks, also used for float32 runs) or
  given with --peak_tflops; `--mfu_flops` picks the count (default: XLA's when available).

Teachers (`--teacher`): `tiny` (CLIP with width 64, 2 layers, at the benchmark's image size),
`S/16` (vision 384×6, 6 heads; text 256×4, 4 heads; 77 tokens; projection 512; 224 px) and
`B/16` (OpenAI CLIP ViT-B/16's shapes: vision 768×12, text 512×12 with 8 heads, projection
512; the paper's teacher). Students (`--variant`): mu, Ti/16, S/16, B/16, L/16, H/14.

Every setting starts from `configs/pretrain.py` (the real defaults: L/16, mask 0.75, bf16
student, float32 teacher, cached text) and can be changed with the short flags below or any
`--config.key=value` (e.g. `--config.loss.con=0`, `--config.model.decoder_output=cls_broadcast`,
`--config.optim.grad_clip=1.0`); the short flags win over `--config.*`.

CPU figures (2-core AMD EPYC with avx512_bf16, Python 3.12.1, jax 0.12.0.1; run from the repo
root with nothing else running — other busy processes slow them 2–4×; `host_load_1m` records
the load):

  for dt in float32 bfloat16; do for ct in true false; do
    .venv312/bin/python benchmarks/pretrain_step.py --variant=Ti/16 --teacher=S/16 --batch=8 \
        --image_size=224 --mask_ratio=0.75 --dtype=$dt --cache_text=$ct --warmup=2 --steps=5
  done; done
  .venv312/bin/python benchmarks/pretrain_step.py --variant=mu --teacher=tiny --batch=32 \
      --image_size=224 --dtype=float32 --cache_text --warmup=2 --steps=10

  student + teacher    batch  dtype  text     compile  ms/step  img/s  GFLOP/step (XLA)
  Ti/16 + S/16 @224      8    f32    cached    20 s     2610    3.1    328
  Ti/16 + S/16 @224      8    f32    tower     20 s     2605    3.1    332
  Ti/16 + S/16 @224      8    bf16   cached    16 s     4540    1.8    330
  Ti/16 + S/16 @224      8    bf16   tower     21 s     5234    1.5    334
  mu/8 + tiny @224      32    f32    cached     6 s      674   47      19.5

On this CPU bfloat16 is ~1.7× SLOWER than float32: XLA:CPU runs the student's weight-gradient
matmuls (bf16 `dot`s contracting the left operand's first dimension) as generic dot thunks
instead of its fast bf16 kernels (student fwd+bwd alone: 7.8 s bf16 vs 2.2 s f32); only the
frozen teacher's forward gets faster (0.30 vs 0.41 s). Use float32 for CPU runs.

GPU (one H100/H200; the peak for MFU is looked up from the device kind):

  python benchmarks/pretrain_step.py --variant=L/16 --teacher=B/16 --dtype=bfloat16 \
      --batch=256 --attention_impl=cudnn
  python benchmarks/pretrain_step.py --variant=B/16 --teacher=B/16 --dtype=bfloat16 \
      --batch=256 --attention_impl=cudnn

Add `--output=results.jsonl` to append each JSON line to a file. Run one configuration per
process: the peak-memory figure of a device is the peak since the process started.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python benchmarks/pretrain_step.py` from anywhere
  sys.path.insert(0, _REPO)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_REPO, "configs", "pretrain.py"),
    "Pre-training config (its defaults are the starting point); --config.key=value overrides.",
    lock_config=True)
_VARIANT = flags.DEFINE_string("variant", None, "Student: mu, Ti/16, S/16, B/16, L/16, H/14 "
                               "(default: the config's).")
_TEACHER = flags.DEFINE_enum("teacher", "B/16", ["tiny", "S/16", "B/16"], "Teacher CLIP size.")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: the config's).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Student image size in pixels.")
_MASK_RATIO = flags.DEFINE_float("mask_ratio", None, "Fraction of patches masked per view.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype of student AND teacher (default: the config's, "
                           "bf16 student + f32 teacher).")
_CACHE_TEXT = flags.DEFINE_bool("cache_text", None, "Feed precomputed text embeddings (True) or "
                                "run the teacher's text tower every step (False).")
_FUSION = flags.DEFINE_string("fusion", None, "Fusion module ('none': scene view only).")
_REMAT = flags.DEFINE_bool("remat", None, "Rematerialise transformer blocks.")
_ATTENTION = flags.DEFINE_enum("attention_impl", None, ["explicit", "xla", "cudnn"],
                               "Student attention implementation.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s per device for MFU "
                                  "(default: looked up from the device kind; none on CPU).")
_MFU_FLOPS = flags.DEFINE_enum("mfu_flops", "xla", ["xla", "analytic"],
                               "FLOP count behind `mfu`: the compiled step's cost analysis "
                               "(falls back to analytic when unavailable) or the analytic one.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")
_OUTPUT = flags.DEFINE_string("output", None, "Also append the JSON line to this file.")

# Dense bf16 peak TFLOP/s per chip (no sparsity), matched as lower-case substrings of
# `device.device_kind`, first match wins.
PEAK_TFLOPS_BF16 = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),    # SXM
    ("h200", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
)

# Teacher sizes. `tiny` is built at the benchmark's image size (see `teacher_spec`).
TEACHERS = {
    "S/16": dict(vision_width=384, vision_layers=6, vision_heads=6, vision_mlp_dim=1536,
                 text_width=256, text_layers=4, text_heads=4, text_mlp_dim=1024,
                 projection_dim=512),
    "B/16": {},  # ClipSpec's defaults are OpenAI's ViT-B/16
    "tiny": dict(vision_width=64, vision_layers=2, vision_heads=2, vision_mlp_dim=256,
                 text_width=64, text_layers=2, text_heads=2, text_mlp_dim=256,
                 projection_dim=64),
}


def teacher_spec(name: str, image_size: int):
  from uniemox_jax.models import clip
  fields = dict(TEACHERS[name])
  if name == "tiny":
    fields.update(image_size=image_size, patch_size=16 if image_size >= 64 else 8)
  return clip.ClipSpec(**fields)


def build_config(config):
  """Applies the short flags onto (a copy of) the loaded config."""
  config = config.copy_and_resolve_references()
  config.unlock()
  overrides = {
      ("model", "variant"): _VARIANT.value, ("model", "image_size"): _IMAGE_SIZE.value,
      ("model", "mask_ratio"): _MASK_RATIO.value, ("model", "fusion"): _FUSION.value,
      ("model", "remat"): _REMAT.value, ("model", "attention_impl"): _ATTENTION.value,
      ("teacher", "cache_text"): _CACHE_TEXT.value, (None, "batch_size"): _BATCH.value,
  }
  for (section, key), value in overrides.items():
    if value is not None:
      (config[section] if section else config)[key] = value
  if _DTYPE.value is not None:
    config.model.dtype = config.teacher.dtype = _DTYPE.value
  config.seed = _SEED.value
  config.lock()
  return config


# ------------------------------------------------------------------------------ FLOP counting


def _kernel_params(tree, skip=()) -> dict[str, int]:
  """`{path: size}` of every matmul/conv weight (`kernel`) in `tree` (embeddings excluded)."""
  from flax import traverse_util
  import numpy as np
  flat = traverse_util.flatten_dict(tree)
  return {"/".join(k): int(np.prod(v.shape)) for k, v in flat.items()
          if k[-1] == "kernel" and not any(s in k for s in skip)}


def analytic_flops(student_params, teacher_params, model, spec, batch: int, mask_ratio: float,
                   cache_text: bool, caption_len: int) -> dict:
  """Model FLOPs of one step for the global batch (multiply-add = 2 FLOPs).

  Student (trained): 6 · weights · tokens (forward 2, backward 4) plus attention
  (QKᵀ and AV: 4 · T² · D per layer forward, ×3 for training). Tokens per view: the patch
  embedding sees all L patches, the encoder blocks `K + 1` (K = int(L·(1 − r)) visible + CLS),
  `decoder_embed` K + 1 on the scene view and the CLS only on the person view, the decoder
  L + 1 (scene view only); fusion and the teacher projection see one token.
  Teacher (frozen, forward only): 2 · weights · tokens plus attention, vision on N + 1 tokens,
  text (unless cached) on `caption_len` tokens; its projections see one token.
  Elementwise work (norms, GELU, softmax, optimizer) is not counted.
  """
  v = model.spec
  L = model.num_patches
  k1 = int(L * (1 - mask_ratio)) + 1
  views = 2 if model.uses_person_view else 1
  mae = student_params["mae"]
  enc = _kernel_params(mae["encoder"])
  patch_embed = sum(n for p, n in enc.items() if p.startswith("patch_embed"))
  enc_blocks = sum(enc.values()) - patch_embed
  emb = sum(_kernel_params(mae["decoder_embed"]).values())
  dec = sum(_kernel_params(mae["decoder"]).values())
  other = sum(sum(_kernel_params(student_params[k]).values())
              for k in student_params if k != "mae")
  fwd_mac = views * (patch_embed * L + enc_blocks * k1) + emb * (k1 + (views - 1)) \
      + dec * (L + 1) + other
  attn = views * v.depth * 2 * k1 * k1 * v.width + v.decoder_depth * 2 * (L + 1) ** 2 * \
      v.decoder_width
  student = 3 * 2 * batch * (fwd_mac + attn)

  vis = _kernel_params(teacher_params["vision"])
  vis_patch = sum(n for p, n in vis.items() if p.startswith("patch_embed"))
  vis_proj = sum(n for p, n in vis.items() if p.startswith("projection"))
  t_img = spec.num_patches + 1
  teacher_mac = (vis_patch * spec.num_patches + (sum(vis.values()) - vis_patch - vis_proj)
                 * t_img + vis_proj + spec.vision_layers * 2 * t_img ** 2 * spec.vision_width)
  if not cache_text:
    txt = _kernel_params(teacher_params["text"])
    txt_proj = sum(n for p, n in txt.items() if p.startswith("projection"))
    teacher_mac += ((sum(txt.values()) - txt_proj) * caption_len + txt_proj
                    + spec.text_layers * 2 * caption_len ** 2 * spec.text_width)
  teacher = 2 * batch * teacher_mac
  return {"flops_per_step_analytic": float(student + teacher),
          "flops_student_analytic": float(student), "flops_teacher_analytic": float(teacher),
          "encoder_tokens_per_view": k1, "decoder_tokens": L + 1}


def xla_flops(compiled) -> float | None:
  """FLOPs of the compiled (per-device, partitioned) step from XLA's cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def peak_tflops(device) -> tuple[float | None, str | None]:
  if _PEAK_TFLOPS.value:
    return _PEAK_TFLOPS.value, "flag"
  kind = device.device_kind.lower()
  for key, value in PEAK_TFLOPS_BF16:
    if key in kind:
      return value, f"table ({key} bf16 dense)"
  return None, None


def peak_memory(compiled) -> tuple[int | None, str]:
  import jax
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001
    stats = {}
  if stats.get("peak_bytes_in_use"):
    return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
  try:
    mem = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    mem = None
  if mem is not None:
    total = sum(int(getattr(mem, f, 0) or 0) for f in
                ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"))
    total -= int(getattr(mem, "alias_size_in_bytes", 0) or 0)  # donated outputs reuse inputs
    if total > 0:
      return total, "compiled memory_analysis temp+argument+output-alias"
  return host_rss(), "host peak RSS"


def host_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ------------------------------------------------------------------------------ inputs


def synthetic_batch(rng, batch: int, image_size: int, spec, cache_text: bool, need_person: bool):
  """Host numpy batch in the pipeline's layout: uint8 views and text (ids or embeddings)."""
  import numpy as np
  out = {"scene": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)}
  out["person"] = (rng.integers(0, 256, out["scene"].shape, dtype=np.uint8) if need_person
                   else out["scene"])
  if cache_text:
    out["text_emb"] = rng.standard_normal((batch, spec.projection_dim)).astype(np.float32)
  else:
    t = spec.context_length
    ids = rng.integers(0, min(spec.bos_token_id, spec.eos_token_id), (batch, t)).astype(np.int32)
    ids[:, 0] = spec.bos_token_id
    ends = rng.integers(4, t, batch)  # captions of varying length, EOS then padding
    for i, e in enumerate(ends):
      ids[i, e] = spec.eos_token_id
      ids[i, e + 1:] = spec.pad_token_id
    out["caption_ids"] = ids
  return out


# ------------------------------------------------------------------------------ main


def run(config, teacher_name: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from uniemox_jax import sharding, teacher as teacher_lib
  from uniemox_jax.models import clip, vit
  from uniemox_jax.train import pretrain, validation

  validation.validate(config, check_paths=False)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  devices = jax.devices()
  spec = teacher_spec(teacher_name, config.model.image_size)
  cache_text = bool(config.teacher.cache_text)
  batch = int(config.batch_size)

  # ------------------------------------------------------------------ teacher (random, frozen)
  teacher_params = jax.jit(clip.CLIP(spec).init, out_shardings=sharding.replicated(mesh))(
      jax.random.key(config.seed + 1),
      jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32),
      jnp.zeros((1, spec.context_length), jnp.int32))["params"]
  # The synthetic batches carry `text_emb` themselves when the text is "cached".
  teacher = teacher_lib.Teacher(
      clip.CLIP(spec, dtype=vit.dtype_of(config.teacher.dtype)), teacher_params,
      teacher_lib.Plan.from_config(config.loss, cache_text), input_norm=config.teacher.input_norm)

  # ------------------------------------------------------------------ student, optimizer, state
  # The schedule's length only changes the lr value, not the cost.
  model, tx, lr_fn, state, state_shardings = pretrain.init_train_state(
      config, mesh, spec.projection_dim, total_steps=10_000, warmup_steps=1_000)

  # ------------------------------------------------------------------ synthetic batch
  host = synthetic_batch(np.random.default_rng(config.seed), batch, model.image_size, spec,
                         cache_text, model.uses_person_view)
  batch_arrays = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
                  for k, v in host.items()}

  # ------------------------------------------------------------------ the real step, compiled
  compiled, compile_info = pretrain.compile_train_step(
      config, mesh, model, teacher, tx, lr_fn, state, state_shardings, batch_arrays)

  # ------------------------------------------------------------------ warm-up, then timed steps
  metrics = None
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, teacher_params, batch_arrays)
  jax.block_until_ready((state, metrics))
  load_before = os.getloadavg()[0]
  times = []
  t_window = time.perf_counter()
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = compiled(state, teacher_params, batch_arrays)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  window_s = time.perf_counter() - t_window
  loss = float(jax.device_get(metrics["loss"]))
  if not np.isfinite(loss):
    logging.warning("the benchmark step produced a non-finite loss (%s)", loss)

  # ------------------------------------------------------------------ report
  step_s = statistics.median(times)
  n_dev = len(devices)
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  result = {
      "variant": config.model.variant, "teacher": teacher_name, "batch": batch,
      "image_size": model.image_size, "patch_size": model.patch_size_,
      "mask_ratio": float(config.model.mask_ratio), "dtype": config.model.dtype,
      "teacher_dtype": config.teacher.dtype, "cache_text": cache_text,
      "fusion": config.model.fusion, "remat": bool(config.model.remat),
      "attention_impl": config.model.attention_impl,
      "devices": n_dev, "device_kind": devices[0].device_kind, "platform": devices[0].platform,
      "mesh": dict(mesh.shape),
      "jax": jax.__version__, "python": ".".join(map(str, sys.version_info[:3])),
      "compile_s": round(compile_info["compile_s"], 3),
      "steps": len(times), "warmup": _WARMUP.value,
      "ms_per_step": round(1e3 * step_s, 3), "ms_per_step_min": round(1e3 * min(times), 3),
      "ms_per_step_mean": round(1e3 * window_s / len(times), 3),
      "images_per_sec": round(batch / step_s, 3),
      "images_per_sec_per_device": round(batch / step_s / n_dev, 3),
      "student_params": count(state.params), "teacher_params": count(teacher_params),
      "loss": loss,
      # Other processes on a shared host show up here (a 2-core CPU with load 4 halves speed).
      "host_load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
      "host_cpus": os.cpu_count(),
  }
  peak, source = peak_memory(compiled)
  result.update(peak_bytes=peak, peak_gib=round(peak / 1024 ** 3, 3), peak_source=source,
                host_rss_peak_gib=round(host_rss() / 1024 ** 3, 3))
  for k in ("temp_gib", "args_gib", "output_gib"):
    if k in compile_info:
      result[f"compiled_{k}"] = round(compile_info[k], 3)

  analytic = analytic_flops(state.params, teacher_params, model, spec, batch,
                            float(config.model.mask_ratio), cache_text, spec.context_length)
  result.update(analytic)
  per_device_xla = xla_flops(compiled)
  # XLA analyses the partitioned (per-device) program; scale to the global batch.
  result["flops_per_step_xla"] = per_device_xla * n_dev if per_device_xla else None
  result["model_tflops_per_sec_analytic"] = round(
      analytic["flops_per_step_analytic"] / step_s / 1e12, 4)
  peak_tf, peak_src = peak_tflops(devices[0])
  if peak_tf:
    denom = step_s * peak_tf * 1e12 * n_dev
    result["peak_tflops_per_device"] = peak_tf
    result["peak_tflops_source"] = peak_src
    result["mfu_analytic"] = round(analytic["flops_per_step_analytic"] / denom, 4)
    if result["flops_per_step_xla"]:
      result["mfu_xla"] = round(result["flops_per_step_xla"] / denom, 4)
    use_xla = _MFU_FLOPS.value == "xla" and "mfu_xla" in result
    result["mfu"] = result["mfu_xla"] if use_xla else result["mfu_analytic"]
    result["mfu_source"] = "xla cost_analysis" if use_xla else "analytic"
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError("--steps must be >= 1 and --warmup >= 0")
  config = build_config(_CONFIG.value)
  result = run(config, _TEACHER.value)
  line = json.dumps(result)
  print(line, flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "a") as f:
      f.write(line + "\n")
  r = result
  mfu = (f", MFU {100 * r['mfu']:.1f}% ({r['mfu_source']})" if "mfu" in r else "")
  print(f"[pretrain_step] {r['variant']} + teacher {r['teacher']}, batch {r['batch']} @ "
        f"{r['image_size']} px, mask {r['mask_ratio']}, {r['dtype']}, cache_text="
        f"{r['cache_text']}, {r['devices']}× {r['device_kind']}: {r['ms_per_step']:.1f} ms/step, "
        f"{r['images_per_sec']:.1f} img/s ({r['images_per_sec_per_device']:.1f}/device), "
        f"compile {r['compile_s']:.1f} s, peak {r['peak_gib']:.2f} GiB ({r['peak_source']}), "
        f"{r['model_tflops_per_sec_analytic']:.3f} model TFLOP/s{mfu}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
