"""Model shapes, initialisation, fusion variants, cls_broadcast and bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniemox_jax import losses
from uniemox_jax.models import classifier, fusion, mae, uniemox, vit

IMG = 32


def _images(batch=2, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, IMG, IMG, 3))


@pytest.fixture(scope="module")
def mu_mae():
  model = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
  return model, mae.init_params(model)


def test_mae_shapes_and_aux(mu_mae):
  model, params = mu_mae
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  pred, aux = model.apply({"params": params}, _images(), 0.75, noise)
  assert pred.shape == (2, 16, 8 * 8 * 3) and pred.dtype == jnp.float32
  assert aux["encoded"].shape == (2, 1 + 4, 32)
  assert aux["cls"].shape == (2, 32) and aux["cls_embed"].shape == (2, 32)
  np.testing.assert_array_equal(aux["mask"].sum(1), [12, 12])
  # The masking rng stream gives the same result as passing the noise it draws.
  pred2, aux2 = model.apply({"params": params}, _images(), 0.75,
                            rngs={"masking": jax.random.PRNGKey(5)})
  assert pred2.shape == pred.shape and aux2["mask"].shape == (2, 16)


def test_mae_initialisation(mu_mae):
  _, params = mu_mae
  enc = params["encoder"]
  qkv = np.asarray(enc["blocks_0"]["attn"]["qkv"]["kernel"])
  limit = np.sqrt(6.0 / (32 + 96))
  assert np.abs(qkv).max() <= limit and np.abs(qkv).max() > 0.8 * limit  # Xavier-uniform
  np.testing.assert_array_equal(enc["blocks_0"]["attn"]["qkv"]["bias"], 0.0)
  np.testing.assert_array_equal(enc["blocks_0"]["norm1"]["scale"], 1.0)
  patch = np.asarray(enc["patch_embed"]["kernel"])  # [p, p, 3, D], Xavier over (p*p*3, D)
  assert np.abs(patch).max() <= np.sqrt(6.0 / (8 * 8 * 3 + 32))
  cls = np.asarray(enc["cls_token"])
  assert 0.005 < cls.std() < 0.05  # normal(0.02)
  assert "pos_embed" not in enc  # fixed sin-cos, not a parameter
  dec = params["decoder"]
  mask_token = np.asarray(dec["mask_token"])
  assert mask_token.shape == (1, 1, 32) and 0.005 < mask_token.std() < 0.05  # normal(0.02)
  for kernel, (fan_in, fan_out) in ((params["decoder_embed"]["kernel"], (32, 32)),
                                    (dec["pred"]["kernel"], (32, 8 * 8 * 3))):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert limit * 0.8 < np.abs(np.asarray(kernel)).max() <= limit  # Xavier-uniform
  np.testing.assert_array_equal(dec["pred"]["bias"], 0.0)


def test_decode_false_skips_decoder_but_gives_same_token(mu_mae):
  model, params = mu_mae
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  _, full = model.apply({"params": params}, _images(), 0.75, noise)
  pred, enc_only = model.apply({"params": params}, _images(), 0.75, noise, decode=False)
  assert pred is None
  np.testing.assert_allclose(enc_only["cls_embed"], full["cls_embed"], rtol=1e-6)


def test_cls_broadcast_reproduces_released_decoder(mu_mae):
  _, params = mu_mae
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  patches = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
  broadcast = mae.MaskedAutoencoder(variant="mu", image_size=IMG, decoder_output="cls_broadcast")
  # Same weights: the released decoder's output is the CLS row of the full prediction.
  full_model = patches.clone(decoder_output="patches")
  pred_b, aux = broadcast.apply({"params": params}, _images(), 0.75, noise)
  for i in range(16):
    np.testing.assert_array_equal(pred_b[:, i], pred_b[:, 0])
  # The broadcast row is the decoder's prediction at the CLS position (row 0 of its output),
  # not any patch's.
  (pred_p, _), state = full_model.apply(
      {"params": params}, _images(), 0.75, noise, mutable=["intermediates"],
      capture_intermediates=lambda module, _: module.name == "pred")
  (decoder_out,) = state["intermediates"]["decoder"]["pred"]["__call__"]
  assert decoder_out.shape == (2, 17, 8 * 8 * 3)
  np.testing.assert_array_equal(pred_b[:, 0], decoder_out[:, 0])
  np.testing.assert_array_equal(pred_p, decoder_out[:, 1:])
  assert not np.allclose(pred_p, pred_b)
  # Loss as the released code computes it: the [B,1,P] prediction broadcast against targets.
  target = mae.reconstruction_target(_images(), 8)
  per_patch = ((pred_b[:, :1] - target) ** 2).mean(-1)
  expected = (per_patch * aux["mask"]).sum() / aux["mask"].sum()
  np.testing.assert_allclose(losses.reconstruction_loss(pred_b, target, aux["mask"]), expected,
                             rtol=1e-6)


def test_bfloat16_forward_close_to_float32(mu_mae):
  _, params = mu_mae
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  f32 = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
  bf16 = mae.MaskedAutoencoder(variant="mu", image_size=IMG, dtype=jnp.bfloat16)
  pred32, aux32 = f32.apply({"params": params}, _images(), 0.75, noise)
  pred16, aux16 = bf16.apply({"params": params}, _images(), 0.75, noise)
  assert pred16.dtype == jnp.float32
  scale = float(jnp.abs(pred32).max())
  assert float(jnp.abs(pred16 - pred32).max()) / scale <= 2e-2
  assert float(jnp.abs(aux16["cls_embed"] - aux32["cls_embed"]).max()) / float(
      jnp.abs(aux32["cls_embed"]).max()) <= 2e-2


def test_remat_gives_identical_outputs_and_gradients(mu_mae):
  _, params = mu_mae
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  target = mae.reconstruction_target(_images(), 8)

  def loss_fn(p, model):
    pred, aux = model.apply({"params": p}, _images(), 0.75, noise)
    return losses.reconstruction_loss(pred, target, aux["mask"])

  plain = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
  remat = mae.MaskedAutoencoder(variant="mu", image_size=IMG, remat=True)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)
  l1, g1 = grad_fn(params, plain)
  l2, g2 = grad_fn(params, remat)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_variant_table_and_errors():
  assert vit.get_variant("L/16").width == 1024 and vit.get_variant("H/14").patch_size == 14
  assert vit.get_variant("B/8").patch_size == 8
  with pytest.raises(ValueError, match="Unknown ViT variant"):
    vit.get_variant("XL/16")
  with pytest.raises(ValueError, match="expected 32x32"):
    model = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), 0.75,
               jnp.zeros((1, 16)))


@pytest.mark.parametrize("variant,width", [("B/16", 768), ("L/16", 1024)])
def test_real_variant_shapes_by_eval_shape(variant, width):
  model = mae.MaskedAutoencoder(variant=variant, image_size=224)
  shapes = jax.eval_shape(lambda: mae.init_params(model))
  assert shapes["encoder"]["cls_token"].shape == (1, 1, width)
  assert shapes["decoder_embed"]["kernel"].shape == (width, 512)
  assert shapes["decoder"]["pred"]["kernel"].shape == (512, 16 * 16 * 3)
  n = mae.num_params(shapes)
  expected = {"B/16": 111.9e6, "L/16": 329.2e6}[variant]  # MAE's encoder + 8x512 decoder
  assert abs(n - expected) / expected < 0.01


# ------------------------------------------------------------------------------- fusion

@pytest.mark.parametrize("kind", sorted(fusion.FUSIONS))
def test_every_fusion_variant_shapes(kind):
  alpha = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  beta = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
  module = fusion.make_fusion(kind, heads=3)
  variables = module.init(jax.random.PRNGKey(2), alpha, beta)
  gamma = module.apply(variables, alpha, beta)
  assert gamma.shape == (4, 16) and gamma.dtype == jnp.float32
  assert np.all(np.isfinite(gamma))
  if kind == "none":
    np.testing.assert_array_equal(gamma, alpha)
    assert not variables.get("params")


def test_easyfusion_formula_and_init():
  alpha = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  beta = jax.random.normal(jax.random.PRNGKey(1), (3, 8))
  module = fusion.EasyFusion()
  params = module.init(jax.random.PRNGKey(2), alpha, beta)["params"]
  np.testing.assert_array_equal(params["linear"]["bias"], 0.0)
  assert np.abs(params["linear"]["kernel"]).max() <= np.sqrt(6.0 / 16)

  def ln(x):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)

  y = (ln(alpha) + ln(beta)) @ np.asarray(params["linear"]["kernel"], np.float64)
  expected = np.where(y > 0, y, np.expm1(y))
  np.testing.assert_allclose(module.apply({"params": params}, alpha, beta), expected, rtol=1e-5,
                             atol=1e-6)


def _torch_linear_bound(fan_in):
  return 1.0 / np.sqrt(fan_in)  # PyTorch nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_fusion_initialisations():
  c = 24
  alpha = jax.random.normal(jax.random.PRNGKey(0), (2, c))
  beta = jax.random.normal(jax.random.PRNGKey(1), (2, c))

  def init(kind):
    return fusion.make_fusion(kind, heads=3).init(jax.random.PRNGKey(2), alpha, beta)["params"]

  p = init("weighted_sum")  # a_h, b_h ~ N(0, 1); bias 1e-5
  for name in ("alpha", "beta"):
    w = np.asarray(p[name])
    assert w.shape == (3, c) and 0.7 < w.std() < 1.3 and abs(w.mean()) < 0.3
  np.testing.assert_array_equal(p["bias"], np.float32(1e-5))
  p = init("prior")  # lambda = 1, a Xavier linear with zero bias
  np.testing.assert_array_equal(p["prior"], np.ones(c))
  np.testing.assert_array_equal(p["linear"]["bias"], 0.0)
  limit = np.sqrt(6.0 / (2 * c))
  assert 0.8 * limit < np.abs(np.asarray(p["linear"]["kernel"])).max() <= limit
  for kind in ("mlp_glu", "dual_attention"):  # PyTorch's default Linear init, bias included
    p = init(kind)
    np.testing.assert_array_equal(p["bias"], np.float32(1e-5))
    fan_ins = {"mlp_0": 3 * c}
    for name, layer in p.items():
      if name == "bias":
        continue
      bound = _torch_linear_bound(fan_ins.get(name, c))
      for leaf in (layer["kernel"], layer["bias"]):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound, (kind, name)
        if leaf.size >= 24:
          assert np.abs(leaf).max() > 0.7 * bound, (kind, name)
    expected = ({f"score_{s}_{h}" for s in "ab" for h in range(3)}
                | ({"mlp_0", "mlp_1", "gate"} if kind == "mlp_glu" else set()) | {"bias"})
    assert set(p) == expected


def test_weighted_sum_and_dual_attention_formulas():
  alpha = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  beta = jax.random.normal(jax.random.PRNGKey(1), (3, 8))
  ws = fusion.WeightedSumFusion(heads=3)
  p = ws.init(jax.random.PRNGKey(2), alpha, beta)["params"]
  fused = np.asarray(p["alpha"]).sum(0) * alpha + np.asarray(p["beta"]).sum(0) * beta
  normed = (fused - fused.mean(-1, keepdims=True)) / np.sqrt(fused.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(ws.apply({"params": p}, alpha, beta), normed + 1e-5, rtol=1e-4,
                             atol=1e-5)
  da = fusion.DualAttentionFusion(heads=3)
  p = da.init(jax.random.PRNGKey(2), alpha, beta)["params"]
  s = 3 * (alpha + beta)
  np.testing.assert_allclose(da.apply({"params": p}, alpha, beta),
                             s * jax.nn.sigmoid(s) + 1e-5, rtol=1e-5, atol=1e-6)


def test_unknown_fusion_raises():
  with pytest.raises(ValueError, match="unknown fusion"):
    fusion.make_fusion("average")


# ----------------------------------------------------------------------- UniEmoX model

def test_uniemox_forward_and_teacher_projection():
  model = uniemox.UniEmoX(variant="mu", image_size=IMG, teacher_dim=48)
  params = uniemox.init_params(model)
  assert set(params) == {"mae", "fusion", "teacher_proj"}
  n1 = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  n2 = jax.random.uniform(jax.random.PRNGKey(2), (2, 16))
  pred, aux = model.apply({"params": params}, _images(seed=0), _images(seed=1), 0.75, n1, n2)
  assert pred.shape == (2, 16, 192) and aux["gamma"].shape == (2, 48)
  assert aux["alpha"].shape == aux["beta"].shape == (2, 32)
  # Same width as the teacher: no projection.
  same = uniemox.UniEmoX(variant="mu", image_size=IMG, teacher_dim=32)
  assert "teacher_proj" not in uniemox.init_params(same)


def test_uniemox_views_share_the_encoder_and_have_independent_masks():
  model = uniemox.UniEmoX(variant="mu", image_size=IMG, teacher_dim=32)
  params = uniemox.init_params(model)
  n1 = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  n2 = jax.random.uniform(jax.random.PRNGKey(2), (2, 16))
  scene, person = _images(seed=0), _images(seed=1)
  _, aux = model.apply({"params": params}, scene, person, 0.75, n1, n2)
  # β is the same MAE (shared weights) applied to the person view with its own noise.
  mae_model = mae.MaskedAutoencoder(variant="mu", image_size=IMG)
  _, ref = mae_model.apply({"params": params["mae"]}, person, 0.75, n2, decode=False)
  np.testing.assert_allclose(aux["beta"], ref["cls_embed"], rtol=1e-6)
  _, ref_scene = mae_model.apply({"params": params["mae"]}, scene, 0.75, n1)
  np.testing.assert_array_equal(aux["mask"], ref_scene["mask"])
  assert not np.array_equal(ref_scene["mask"], ref["mask"])


def test_uniemox_without_fusion_needs_no_person_view():
  model = uniemox.UniEmoX(variant="mu", image_size=IMG, teacher_dim=32, fusion="none")
  params = uniemox.init_params(model)
  noise = jax.random.uniform(jax.random.PRNGKey(1), (2, 16))
  _, aux = model.apply({"params": params}, _images(), None, 0.75, noise)
  np.testing.assert_array_equal(aux["gamma"], aux["alpha"])
  assert "fusion" not in params


# --------------------------------------------------------------------------- classifier

def test_classifier_pools_patch_tokens_without_cls():
  model = classifier.ViTClassifier(variant="mu", image_size=IMG, num_classes=5)
  params = model.init(jax.random.PRNGKey(0), _images())["params"]
  assert set(params) == {"encoder", "fc_norm", "head"} and "norm" not in params["encoder"]
  assert params["encoder"]["pos_embed"].shape == (1, 17, 32)
  assert float(jnp.abs(params["head"]["kernel"]).max()) < 1e-4  # trunc-normal(2e-5)
  logits, aux = model.apply({"params": params}, _images())
  assert logits.shape == (2, 5)
  pooled = aux["encoded"][:, 1:].mean(1)
  mu, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
  np.testing.assert_allclose(aux["pre_logits"], (pooled - mu) / jnp.sqrt(var + 1e-6),
                             rtol=1e-4, atol=1e-5)


def test_classifier_drop_path_is_random_in_train_only():
  model = classifier.ViTClassifier(variant="mu", image_size=IMG, num_classes=5,
                                   drop_path_rate=0.5)
  params = model.init(jax.random.PRNGKey(0), _images())["params"]
  eval1, _ = model.apply({"params": params}, _images())
  eval2, _ = model.apply({"params": params}, _images())
  np.testing.assert_array_equal(eval1, eval2)
  tr1, _ = model.apply({"params": params}, _images(), train=True,
                       rngs={"dropout": jax.random.PRNGKey(1)})
  tr2, _ = model.apply({"params": params}, _images(), train=True,
                       rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(tr1, tr2)
