"""The PyTorch reference step computes what the method says, and `vs_pytorch.py` runs end to end.

The unit tests check the torch step's losses against hand-computed values and against our JAX
losses, its L_rec against transformers' own ViTMAE loss, its student token (the final-norm CLS
through `decoder_embed`), the frozen teacher, and that its size tables match ours.
"""
import ast
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the Python 3.12 environment has no torch
pytest.importorskip("transformers")

from benchmarks import peak, torch_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 1 / math.sqrt(2)

pytestmark = pytest.mark.torch


def t(x):
  return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------------ losses by hand


def test_similarity_loss_hand_computed():
  gamma, omega = t([[1, 0], [0, 2]]), t([[1, 1], [0, 1]])
  # cos = 1/√2 and 1 (scale does not matter).
  assert torch_step.similarity_loss(gamma, omega).item() == pytest.approx(1 - (S + 1) / 2,
                                                                          abs=1e-6)


def test_relation_loss_hand_computed():
  gamma, omega, lam = t([[1, 0], [0, 2]]), t([[1, 1], [0, 1]]), t([[1, 0], [1, 1]])
  # γ̂ = I, Λ̂ = [[1, 0], [s, s]], Ω̂ = [[s, s], [0, 1]]  (s = 1/√2)
  # A = γ̂Λ̂ᵀ = [[1, s], [0, s]];  C = Ω̂Λ̂ᵀ = [[s, 1], [0, s]]
  # cos(A_0, C_0) = (s + s) / (1 + s²) = √2 / 1.5;  cos(A_1, C_1) = 1
  expected = 1 - (math.sqrt(2) / 1.5 + 1) / 2
  assert torch_step.relation_loss(gamma, omega, lam).item() == pytest.approx(expected, abs=1e-6)
  # The teacher's own relations give zero loss; scaling any side changes nothing.
  assert torch_step.relation_loss(omega, omega, lam).item() == pytest.approx(0, abs=1e-6)
  assert torch_step.relation_loss(3 * gamma, omega, 5 * lam).item() == pytest.approx(
      expected, abs=1e-6)


def test_reconstruction_loss_hand_computed():
  pred = torch.zeros(1, 2, 2)
  target = t([[[1, 1], [2, 0]]])  # per-patch MSE: 1 and 2
  assert torch_step.reconstruction_loss(pred, target, t([[1, 0]])).item() == 1.0
  assert torch_step.reconstruction_loss(pred, target, t([[0, 1]])).item() == 2.0
  assert torch_step.reconstruction_loss(pred, target, t([[1, 1]])).item() == 1.5


def test_losses_match_our_jax_losses():
  jnp = pytest.importorskip("jax.numpy")
  from uniemox_jax import losses
  rng = np.random.default_rng(0)
  g, o, lam = (rng.standard_normal((6, 16)).astype(np.float32) for _ in range(3))
  pred, target = (rng.standard_normal((6, 9, 12)).astype(np.float32) for _ in range(2))
  mask = (rng.random((6, 9)) < 0.7).astype(np.float32)
  tt = torch.from_numpy
  np.testing.assert_allclose(torch_step.similarity_loss(tt(g), tt(o)).item(),
                             float(losses.similarity_loss(jnp.asarray(g), jnp.asarray(o))),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      torch_step.relation_loss(tt(g), tt(o), tt(lam)).item(),
      float(losses.relation_loss(jnp.asarray(g), jnp.asarray(o), jnp.asarray(lam))),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      torch_step.reconstruction_loss(tt(pred), tt(target), tt(mask)).item(),
      float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target),
                                       jnp.asarray(mask))), rtol=1e-5)


def test_easyfusion_formula():
  torch.manual_seed(0)
  fusion = torch_step.EasyFusion(8)
  bound = math.sqrt(6 / (8 + 8))  # Xavier-uniform, bias zero
  assert fusion.linear.weight.abs().max() <= bound and not fusion.linear.bias.any()
  with torch.no_grad():  # a non-trivial shared LayerNorm, to see that one norm serves both
    fusion.norm.weight.uniform_(0.5, 1.5)
    fusion.norm.bias.uniform_(-0.5, 0.5)
    fusion.linear.bias.uniform_(-0.5, 0.5)
  a, b = torch.randn(3, 8), torch.randn(3, 8)
  w, bias = fusion.norm.weight.detach().numpy(), fusion.norm.bias.detach().numpy()

  def ln(x):
    x = x.numpy()
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + bias

  y = (ln(a) + ln(b)) @ fusion.linear.weight.detach().numpy().T + fusion.linear.bias.detach().numpy()
  expected = np.where(y > 0, y, np.expm1(y))
  np.testing.assert_allclose(fusion(a, b).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ the step


@pytest.fixture(scope="module")
def tiny():
  student, clip = torch_step.build("mu", "tiny", 32, 0.75, seed=0)
  batch = torch_step.synthetic_batch(torch.Generator().manual_seed(1), 2, 32)
  gen = torch.Generator().manual_seed(2)
  noise = (torch.rand(2, 16, generator=gen), torch.rand(2, 16, generator=gen))
  return student, clip, batch, noise


def test_student_forward(tiny):
  student, _, batch, (ns, np_) = tiny
  with torch.no_grad():
    out = student(batch["scene"], batch["person"], ns, np_)
    # 16 patches at mask 0.75: exactly 12 removed per view.
    assert out["mask"].shape == (2, 16) and (out["mask"].sum(1) == 12).all()
    assert out["pred"].shape == out["target"].shape == (2, 16, 8 * 8 * 3)
    # mu's decoder is 32 wide, the tiny teacher's embedding 64: a projection follows fusion.
    assert out["alpha"].shape == out["beta"].shape == (2, 32)
    assert out["gamma"].shape == (2, 64) and student.teacher_proj is not None
    # Student token = decoder_embed(final LayerNorm of the encoder's CLS).
    mae = student.mae
    scene = torch_step._normalize(batch["scene"], torch_step.IMAGENET_MEAN,
                                  torch_step.IMAGENET_STD)
    enc = mae.vit(scene, noise=ns, output_hidden_states=True)
    cls = mae.vit.layernorm(enc.hidden_states[-1][:, 0])
    torch.testing.assert_close(out["alpha"], mae.decoder.decoder_embed(cls))
    # L_rec as we compute it equals transformers' own ViTMAE loss (norm_pix_loss off).
    assert mae.config.norm_pix_loss is False
    ref = mae(scene, noise=ns).loss
    rec = torch_step.reconstruction_loss(out["pred"], out["target"], out["mask"])
    torch.testing.assert_close(rec, ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_losses_and_update(tiny, dtype):
  student0, clip, batch, (ns, np_) = tiny
  student, _ = torch_step.build("mu", "tiny", 32, 0.75, seed=0)  # a fresh copy to update
  student.load_state_dict(student0.state_dict())
  optimizer = torch_step.make_optimizer(student)
  step = torch_step.make_step(student, clip, optimizer, dtype)
  with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
    out = student(batch["scene"], batch["person"], ns, np_)
    omega, lam = torch_step.teacher_features(clip, batch["scene"], batch["caption_ids"])
  expected = {"rec": torch_step.reconstruction_loss(out["pred"], out["target"], out["mask"]),
              "sim": torch_step.similarity_loss(out["gamma"], omega),
              "con": torch_step.relation_loss(out["gamma"], omega, lam)}
  teacher_before = [p.clone() for p in clip.parameters()]
  student_before = [p.clone() for p in student.parameters()]
  got = step(batch, ns, np_)
  for k in expected:
    torch.testing.assert_close(got[k], expected[k])
  torch.testing.assert_close(got["loss"], got["rec"] + got["sim"] + got["con"])
  assert all(math.isfinite(v.item()) for v in got.values())
  # The teacher is frozen: no gradients, no change; the student moved.
  assert all(p.grad is None and not p.requires_grad for p in clip.parameters())
  assert all(torch.equal(a, b) for a, b in zip(teacher_before, clip.parameters()))
  assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))


def test_optimizer_settings(tiny):
  student = tiny[0]
  opt = torch_step.make_optimizer(student)
  decay, no_decay = opt.param_groups
  assert decay["betas"] == no_decay["betas"] == (0.9, 0.95)
  assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
  assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
  # The fixed sin-cos position embeddings are not trained.
  trained = {id(p) for g in opt.param_groups for p in g["params"]}
  assert id(student.mae.vit.embeddings.position_embeddings) not in trained


def test_teacher_views_and_captions(tiny):
  _, clip, batch, _ = tiny
  ids = batch["caption_ids"]
  assert ids.shape == (2, 77) and (ids[:, 0] == torch_step.BOS_ID).all()
  assert ((ids == torch_step.EOS_ID).sum(1) == 1).all()
  omega, lam = torch_step.teacher_features(clip, batch["scene"], ids)
  assert omega.shape == lam.shape == (2, 64)
  assert clip.config.vision_config.image_size == 32 and clip.config.vision_config.patch_size == 8


# ------------------------------------------------------------------------------ tables match ours


def test_size_tables_match_ours():
  pytest.importorskip("flax")
  from uniemox_jax import preprocess
  from uniemox_jax.models import clip, vit
  for name, v in vit.VARIANTS.items():
    assert torch_step.STUDENTS[name] == (v.width, v.depth, v.heads, v.mlp_dim, v.patch_size,
                                         v.decoder_width, v.decoder_depth, v.decoder_heads), name
  assert set(torch_step.STUDENTS) == set(vit.VARIANTS)
  # The benchmark's teachers, read from its source (importing it would define absl flags).
  with open(os.path.join(REPO, "benchmarks", "pretrain_step.py")) as f:
    tree = ast.parse(f.read())
  node = next(n.value for n in tree.body if isinstance(n, ast.Assign)
              and any(getattr(tg, "id", None) == "TEACHERS" for tg in n.targets))
  theirs = eval(compile(ast.Expression(node), "TEACHERS", "eval"), {"dict": dict})
  assert set(theirs) == set(torch_step.TEACHERS)
  spec = clip.ClipSpec()  # B/16 is ClipSpec's defaults
  for name, fields in theirs.items():
    full = {**{k: getattr(spec, k) for k in torch_step.TEACHERS[name]}, **fields}
    assert torch_step.TEACHERS[name] == full, name
  assert (spec.vocab_size, spec.context_length, spec.bos_token_id, spec.eos_token_id,
          spec.pad_token_id) == (torch_step.VOCAB_SIZE, torch_step.CONTEXT_LENGTH,
                                 torch_step.BOS_ID, torch_step.EOS_ID, torch_step.PAD_ID)
  for ours, theirs_ in ((torch_step.IMAGENET_MEAN, preprocess.IMAGENET_MEAN),
                        (torch_step.IMAGENET_STD, preprocess.IMAGENET_STD),
                        (torch_step.CLIP_MEAN, preprocess.CLIP_MEAN),
                        (torch_step.CLIP_STD, preprocess.CLIP_STD)):
    np.testing.assert_allclose(ours, theirs_)


def test_peak_and_cpu_info():
  assert peak.torch_matmul_peak_gflops("float32", n=64, repeats=1, warmup=0) > 0
  info = peak.cpu_info()
  assert info["cpu_model"] and info["bf16_matrix_units"] == (info["amx_bf16"]
                                                             or info["avx512_bf16"])
  with pytest.raises(ValueError, match="dtype"):
    peak.torch_matmul_peak_gflops("float16")


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_vs_pytorch_smoke():
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "vs_pytorch.py"), "--variant=mu",
         "--teacher=tiny", "--image_size=32", "--batch=2", "--repetitions=1", "--warmup=1",
         "--steps=1", "--peak_n=128", "--peak_repeats=2", f"--torch_python={sys.executable}"]
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd="/")
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
  assert [l["compare"] for l in lines] == ["float32", "bfloat16", "fastest"]
  for l in lines:
    assert (l["variant"], l["teacher"], l["batch"], l["image_size"], l["patch_size"]) == (
        "mu", "tiny", 2, 32, 8)
    assert l["ours_ms"] > 0 and l["torch_ms"] > 0
    assert l["ratio"] == pytest.approx(l["torch_ms"] / l["ours_ms"], rel=1e-3)
    for side in ("jax", "torch"):
      assert all(l["peak_gflops"][side][d] > 0 for d in ("float32", "bfloat16"))
    assert l["cpu_model"] and isinstance(l["bf16_matrix_units"], bool)
    assert isinstance(l["amx_bf16"], bool) and isinstance(l["avx512_bf16"], bool)
    assert len(l["host_load_1m"]) == 2 and l["text_tower_every_step"] is True
    assert isinstance(l["host_oversubscribed"], bool)
  for l in lines[:2]:
    assert l["ours_dtype"] == l["torch_dtype"] == l["compare"]
    assert len(l["ours_ms_reps"]) == len(l["torch_ms_reps"]) == 1
    assert l["ours_cached_text_ms"] > 0
    assert all(math.isfinite(v) for v in l["torch_losses"].values())
    assert set(l["torch_losses"]) == {"rec", "sim", "con", "loss"}
    assert math.isfinite(l["ours_loss"])
  fastest = lines[2]
  by_dtype = {l["compare"]: l for l in lines[:2]}
  assert fastest["ours_ms"] == min(l["ours_ms"] for l in lines[:2])
  assert fastest["torch_ms"] == min(l["torch_ms"] for l in lines[:2])
  assert by_dtype[fastest["ours_dtype"]]["ours_ms"] == fastest["ours_ms"]
