r"""The UniEmoX pre-training step in PyTorch eager: the reference `vs_pytorch.py` races ours against.

What one step does (docs: SPEC §1–2), written against transformers 5 (no code from the released
repository):

  scene view I, person view B   random uint8 `[B, H, W, 3]`, normalised on the fly with ImageNet's
                                statistics (student) and CLIP's (teacher, scene view, unmasked)
  student                       `ViTMAEForPreTraining` (sizes of `uniemox_jax.models.vit.VARIANTS`,
                                decoder 512 × 8 with 16 heads unless the variant says otherwise,
                                `norm_pix_loss=False`): I through encoder + decoder → L_rec;
                                B through the encoder only. Each view gets its own noise → mask.
  student tokens                α, β = `decoder_embed`(encoder CLS after the final norm)  [B, 512]
  fusion ("easyfusion")         γ = ELU(W·(LN(α) + LN(β)) + b), one LayerNorm shared (eps 1e-5),
                                W Xavier-uniform, b = 0; then a Linear to the teacher's width when
                                that differs from the decoder's (as `uniemox.py`'s `teacher_proj`)
  teacher (frozen, random)      transformers `CLIPModel` with the benchmark teachers' shapes
                                (`benchmarks/pretrain_step.py` TEACHERS): Ω = image features of I,
                                Λ = text features of random caption ids (77 tokens), both towers
                                every step, as the released code does
  losses                        L_rec = MSE on masked patches; L_sim = 1 − mean cos(γ, Ω);
                                L_con = 1 − mean_i cos(A_i, C_i), A = γ̂Λ̂ᵀ, C = Ω̂Λ̂ᵀ  (all float32)
  update                        L = L_rec + L_sim + L_con; AdamW (β 0.9/0.95, wd 0.05 on tensors
                                of rank ≥ 2, as our `weight_decay_mask`)

`--dtype=bfloat16` runs the whole step (student, fusion, teacher) under
`torch.autocast('cpu', dtype=torch.bfloat16)`; parameters and losses stay float32. With
`--text_fp32` the text tower runs outside autocast, as the released code does.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/torch_step.py --variant=Ti/16 --teacher=S/16 \
      --batch=8 --image_size=224 --mask_ratio=0.75 --dtype=bfloat16 --warmup=2 --steps=5

prints ONE JSON line on stdout (`ms_per_step` = median of the timed steps, also min/mean, the
loss terms of the first and last step, threads, versions, host load). Importable: the losses,
`EasyFusion`, `UniEmoXTorch`, `build` and `make_step` are used by `tests/test_vs_pytorch.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are built from configs; nothing is fetched

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

# Kept in step with `uniemox_jax/preprocess.py` (this file must not import jax); the test checks.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Student sizes: (width, depth, heads, mlp_dim, patch, decoder_width, decoder_depth, decoder_heads),
# the same as `uniemox_jax.models.vit.VARIANTS` (a test compares them).
STUDENTS = {
    "mu": (32, 2, 2, 128, 8, 32, 1, 2),
    "Ti/16": (192, 12, 3, 768, 16, 512, 8, 16),
    "S/16": (384, 12, 6, 1536, 16, 512, 8, 16),
    "B/16": (768, 12, 12, 3072, 16, 512, 8, 16),
    "L/16": (1024, 24, 16, 4096, 16, 512, 8, 16),
    "H/14": (1280, 32, 16, 5120, 14, 512, 8, 16),
}

# Teacher sizes, the same as `benchmarks/pretrain_step.py` TEACHERS (a test compares them);
# `tiny` is built at the benchmark's image size with patch 16 (8 below 64 px), as there.
TEACHERS = {
    "S/16": dict(vision_width=384, vision_layers=6, vision_heads=6, vision_mlp_dim=1536,
                 text_width=256, text_layers=4, text_heads=4, text_mlp_dim=1024,
                 projection_dim=512),
    "B/16": dict(vision_width=768, vision_layers=12, vision_heads=12, vision_mlp_dim=3072,
                 text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048,
                 projection_dim=512),
    "tiny": dict(vision_width=64, vision_layers=2, vision_heads=2, vision_mlp_dim=256,
                 text_width=64, text_layers=2, text_heads=2, text_mlp_dim=256,
                 projection_dim=64),
}
VOCAB_SIZE, CONTEXT_LENGTH = 49408, 77
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 1

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------ losses (float32)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """Row-wise cosine similarity of `[..., D]` tensors → `[...]` (eps as F.normalize's)."""
  return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
  """L_rec: MSE per patch averaged over removed patches. pred/target `[B, L, P]`, mask `[B, L]`
  (1 = removed)."""
  per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
  mask = mask.float()
  return (per_patch * mask).sum() / mask.sum()


def similarity_loss(gamma: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
  """L_sim = 1 − mean_i cos(γ_i, Ω_i); `[B, E]` each."""
  return 1.0 - cosine(gamma, omega).mean()


def relation_loss(gamma: torch.Tensor, omega: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
  """L_con = 1 − mean_i cos(A_i, C_i), A = γ̂Λ̂ᵀ, C = Ω̂Λ̂ᵀ (`[B, B]`: rows images, columns every
  caption of the batch)."""
  lam_hat = F.normalize(lam.float(), dim=-1)
  a = F.normalize(gamma.float(), dim=-1) @ lam_hat.T
  c = F.normalize(omega.float(), dim=-1) @ lam_hat.T
  return 1.0 - cosine(a, c).mean()


# ------------------------------------------------------------------------------ modules


class EasyFusion(nn.Module):
  """γ = ELU(W·(LN(α) + LN(β)) + b): one LayerNorm for both inputs, W Xavier-uniform, b = 0."""

  def __init__(self, width: int):
    super().__init__()
    self.norm = nn.LayerNorm(width, eps=1e-5)
    self.linear = nn.Linear(width, width)
    nn.init.xavier_uniform_(self.linear.weight)
    nn.init.zeros_(self.linear.bias)

  def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return F.elu(self.linear(self.norm(alpha) + self.norm(beta)))


def _normalize(pixels_u8: torch.Tensor, mean, std) -> torch.Tensor:
  """uint8 `[B, H, W, 3]` → float32 `[B, 3, H, W]`, (x/255 − mean) / std."""
  x = pixels_u8.permute(0, 3, 1, 2).float().div_(255.0)
  m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
  s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
  return (x - m) / s


class UniEmoXTorch(nn.Module):
  """Student (ViTMAEForPreTraining) + fusion (+ projection to the teacher's width)."""

  def __init__(self, mae_config, teacher_dim: int):
    super().__init__()
    from transformers import ViTMAEForPreTraining
    self.mae = ViTMAEForPreTraining(mae_config)
    width = mae_config.decoder_hidden_size
    self.fusion = EasyFusion(width)
    self.teacher_proj = nn.Linear(width, teacher_dim) if teacher_dim != width else None

  def forward(self, scene_u8, person_u8, noise_scene=None, noise_person=None) -> dict:
    """Returns `pred`, `target` `[B, L, p·p·3]`, `mask` `[B, L]`, `alpha`, `beta` `[B, 512]`,
    `gamma` `[B, teacher_dim]`."""
    scene = _normalize(scene_u8, IMAGENET_MEAN, IMAGENET_STD)
    person = _normalize(person_u8, IMAGENET_MEAN, IMAGENET_STD)
    enc = self.mae.vit(scene, noise=noise_scene)  # last_hidden_state is after the final norm
    latent = enc.last_hidden_state
    pred = self.mae.decoder(latent, enc.ids_restore).logits
    embed = self.mae.decoder.decoder_embed
    alpha = embed(latent[:, 0])
    beta = embed(self.mae.vit(person, noise=noise_person).last_hidden_state[:, 0])
    gamma = self.fusion(alpha, beta)
    if self.teacher_proj is not None:
      gamma = self.teacher_proj(gamma)
    return dict(pred=pred, target=self.mae.patchify(scene), mask=enc.mask, alpha=alpha,
                beta=beta, gamma=gamma)


def student_config(variant: str, image_size: int, mask_ratio: float,
                   attn_implementation: str = "sdpa"):
  from transformers import ViTMAEConfig
  if variant not in STUDENTS:
    raise ValueError(f"unknown student variant {variant!r}; known: {sorted(STUDENTS)}")
  width, depth, heads, mlp, patch, dwidth, ddepth, dheads = STUDENTS[variant]
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of {variant}'s patch {patch}")
  return ViTMAEConfig(
      hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
      intermediate_size=mlp, patch_size=patch, image_size=image_size, num_channels=3,
      decoder_hidden_size=dwidth, decoder_num_hidden_layers=ddepth,
      decoder_num_attention_heads=dheads, decoder_intermediate_size=4 * dwidth,
      hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, mask_ratio=mask_ratio, norm_pix_loss=False,
      attn_implementation=attn_implementation)


def teacher_config(name: str, image_size: int, attn_implementation: str = "sdpa"):
  from transformers import CLIPConfig
  if name not in TEACHERS:
    raise ValueError(f"unknown teacher {name!r}; known: {sorted(TEACHERS)}")
  t = TEACHERS[name]
  if name == "tiny":
    vision_size, patch = image_size, (16 if image_size >= 64 else 8)
  else:
    vision_size, patch = 224, 16
  text = dict(vocab_size=VOCAB_SIZE, hidden_size=t["text_width"],
              intermediate_size=t["text_mlp_dim"], num_hidden_layers=t["text_layers"],
              num_attention_heads=t["text_heads"], max_position_embeddings=CONTEXT_LENGTH,
              hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=BOS_ID,
              eos_token_id=EOS_ID, pad_token_id=PAD_ID, projection_dim=t["projection_dim"])
  vision = dict(hidden_size=t["vision_width"], intermediate_size=t["vision_mlp_dim"],
                num_hidden_layers=t["vision_layers"], num_attention_heads=t["vision_heads"],
                image_size=vision_size, patch_size=patch, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=t["projection_dim"])
  return CLIPConfig(text_config=text, vision_config=vision, projection_dim=t["projection_dim"],
                    attn_implementation=attn_implementation)


def build(variant: str, teacher: str, image_size: int, mask_ratio: float, seed: int = 0,
          attn_implementation: str = "sdpa"):
  """`(student, frozen teacher)` with random weights."""
  from transformers import CLIPModel
  torch.manual_seed(seed)
  tcfg = teacher_config(teacher, image_size, attn_implementation)
  if tcfg.vision_config.image_size != image_size:
    raise ValueError(f"teacher {teacher} expects {tcfg.vision_config.image_size} px views, the "
                     f"benchmark uses {image_size} px (use --teacher=tiny at other sizes)")
  student = UniEmoXTorch(student_config(variant, image_size, mask_ratio, attn_implementation),
                         tcfg.projection_dim)
  clip = CLIPModel(tcfg).eval()
  clip.requires_grad_(False)
  return student.train(), clip


def make_optimizer(student: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05):
  """AdamW β (0.9, 0.95); weight decay on tensors of rank ≥ 2 only (biases and norms never)."""
  params = [p for p in student.parameters() if p.requires_grad]
  decay = [p for p in params if p.ndim >= 2]
  no_decay = [p for p in params if p.ndim < 2]
  return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, betas=(0.9, 0.95))


def teacher_features(clip, scene_u8: torch.Tensor, caption_ids: torch.Tensor,
                     text_fp32: bool = False):
  """Ω `[B, E]` (image tower on the unmasked scene view, CLIP statistics) and Λ `[B, E]`."""
  with torch.no_grad():
    omega = clip.get_image_features(
        pixel_values=_normalize(scene_u8, CLIP_MEAN, CLIP_STD)).pooler_output
    if text_fp32:
      with torch.autocast("cpu", enabled=False):
        lam = clip.get_text_features(input_ids=caption_ids).pooler_output
    else:
      lam = clip.get_text_features(input_ids=caption_ids).pooler_output
  return omega, lam


def make_step(student, clip, optimizer, dtype: str = "float32", text_fp32: bool = False):
  """`step(batch, noise_scene=None, noise_person=None) -> {rec, sim, con, loss}` (detached
  float32 scalars); one forward, backward and AdamW update."""
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
  autocast = dtype == "bfloat16"

  def step(batch, noise_scene=None, noise_person=None):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      out = student(batch["scene"], batch["person"], noise_scene, noise_person)
      omega, lam = teacher_features(clip, batch["scene"], batch["caption_ids"], text_fp32)
    terms = {"rec": reconstruction_loss(out["pred"], out["target"], out["mask"]),
             "sim": similarity_loss(out["gamma"], omega),
             "con": relation_loss(out["gamma"], omega, lam)}
    loss = terms["rec"] + terms["sim"] + terms["con"]
    loss.backward()
    optimizer.step()
    return {**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach()}

  return step


def synthetic_batch(gen: torch.Generator, batch: int, image_size: int) -> dict:
  """Random uint8 views `[B, H, W, 3]` and caption ids `[B, 77]` (BOS, tokens, EOS, padding)."""
  shape = (batch, image_size, image_size, 3)
  scene = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
  person = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
  ids = torch.randint(0, min(BOS_ID, EOS_ID), (batch, CONTEXT_LENGTH), generator=gen)
  ids[:, 0] = BOS_ID
  ends = torch.randint(4, CONTEXT_LENGTH, (batch,), generator=gen)
  for i, e in enumerate(ends.tolist()):
    ids[i, e] = EOS_ID
    ids[i, e + 1:] = PAD_ID
  return {"scene": scene, "person": person, "caption_ids": ids}


def count(module: nn.Module, trainable: bool) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# ------------------------------------------------------------------------------ main


def run(args) -> dict:
  torch.set_num_threads(args.threads)
  student, clip = build(args.variant, args.teacher, args.image_size, args.mask_ratio, args.seed,
                        args.attn_implementation)
  optimizer = make_optimizer(student)
  step = make_step(student, clip, optimizer, args.dtype, args.text_fp32)
  gen = torch.Generator().manual_seed(args.seed)
  batch = synthetic_batch(gen, args.batch, args.image_size)
  num_patches = (args.image_size // STUDENTS[args.variant][4]) ** 2

  def noise():  # a fresh mask per view and step, as in training
    return torch.rand(args.batch, num_patches, generator=gen)

  first = None
  for i in range(args.warmup):
    r = step(batch, noise(), noise())
    first = r if i == 0 else first
  load_before = os.getloadavg()[0]
  times, results = [], []
  for _ in range(args.steps):
    ns, np_ = noise(), noise()  # drawn outside the timed region
    t0 = time.perf_counter()
    results.append(step(batch, ns, np_))
    times.append(time.perf_counter() - t0)
  first = results[0] if first is None else first
  as_floats = lambda r: {k: float(v) for k, v in r.items()}
  last = as_floats(results[-1])
  if not all(math.isfinite(v) for v in last.values()):
    print(f"[torch_step] non-finite loss terms: {last}", file=sys.stderr)
  import transformers
  return {
      "impl": "torch", "variant": args.variant, "teacher": args.teacher, "batch": args.batch,
      "image_size": args.image_size, "patch_size": STUDENTS[args.variant][4],
      "mask_ratio": args.mask_ratio, "dtype": args.dtype, "text_fp32": args.text_fp32,
      "cache_text": False, "attn_implementation": args.attn_implementation,
      "steps": len(times), "warmup": args.warmup,
      "ms_per_step": round(1e3 * statistics.median(times), 3),
      "ms_per_step_min": round(1e3 * min(times), 3),
      "ms_per_step_mean": round(1e3 * statistics.fmean(times), 3),
      "images_per_sec": round(args.batch / statistics.median(times), 3),
      "losses_first": as_floats(first), "losses_last": last, "loss": last["loss"],
      "student_params": count(student, True), "teacher_params": count(clip, False),
      "threads": torch.get_num_threads(), "torch": torch.__version__,
      "transformers": transformers.__version__,
      "python": ".".join(map(str, sys.version_info[:3])),
      "host_load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
      "host_cpus": os.cpu_count(),
  }


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="Ti/16", choices=sorted(STUDENTS))
  p.add_argument("--teacher", default="S/16", choices=sorted(TEACHERS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--mask_ratio", type=float, default=0.75)
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                 help="bfloat16: the whole step under torch.autocast('cpu', bfloat16)")
  p.add_argument("--text_fp32", action="store_true",
                 help="run the text tower outside autocast (the released code's choice)")
  p.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"])
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="torch intra-op threads (default: every CPU this process may use)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  return args


def main(argv=None):
  result = run(parse_args(argv))
  print(json.dumps(result), flush=True)
  print(f"[torch_step] {result['variant']} + teacher {result['teacher']}, batch "
        f"{result['batch']} @ {result['image_size']} px, {result['dtype']}: "
        f"{result['ms_per_step']:.1f} ms/step ({result['threads']} threads), "
        f"loss {result['loss']:.4f}", file=sys.stderr)


if __name__ == "__main__":
  main()
