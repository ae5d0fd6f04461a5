"""Zero-shot scoring on constructed embeddings, the prompt ensemble, the evaluation views and
the student token computed without masking or decoder."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from uniemox_jax import preprocess
from uniemox_jax.data import transforms
from uniemox_jax.evaluators import zeroshot
from uniemox_jax.models import uniemox
from uniemox_jax.train import linear_probe

CAPTION = "The overall emotion conveyed is {emotion}."


def test_prompts_fill_every_template():
  texts = zeroshot.prompts(["joy", "peace_of_mind"], [CAPTION, "A photo of {emotion}."])
  assert texts == [["The overall emotion conveyed is joy.", "A photo of joy."],
                   ["The overall emotion conveyed is peace of mind.", "A photo of peace of mind."]]
  with pytest.raises(ValueError, match="placeholder"):
    zeroshot.prompts(["joy"], ["A photo of {}."])


def test_the_ensemble_averages_unit_text_embeddings_and_renormalises():
  # Template 0 gives (3 e_class + e_2), template 1 gives 4 e_class: unit vectors
  # (3, 0, 1)/sqrt(10) and (1, 0, 0) for class 0; their mean normalised is the result.
  def encode(texts):
    out = []
    for t in texts:
      k = 0 if "joy" in t else 1
      v = np.zeros(3)
      if t.startswith("The overall"):
        v[k], v[2] = 3.0, 1.0
      else:
        v[k] = 4.0
      out.append(v)
    return np.stack(out)

  emb = zeroshot.class_embeddings(encode, ["joy", "fear"], [CAPTION, "A photo of {emotion}."])
  mean = (np.array([3, 0, 1]) / np.sqrt(10) + np.array([1, 0, 0])) / 2
  np.testing.assert_allclose(emb[0], mean / np.linalg.norm(mean))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)
  single = zeroshot.class_embeddings(encode, ["joy", "fear"], ["A photo of {emotion}."])
  np.testing.assert_allclose(single, [[1, 0, 0], [0, 1, 0]])


def test_towers_that_agree_by_construction_give_the_labels():
  # Class k's prompts land on direction e_k (plus template-specific noise that the ensemble
  # averages); class k's images on e_k plus a smaller noise: zero-shot recovers every label.
  rng = np.random.default_rng(0)
  num_classes, dim = 6, 16
  names = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
  directions = np.eye(dim)[:num_classes]
  templates = [CAPTION, "A photo that conveys {emotion}.", "An image that evokes {emotion}."]
  noise = {t: rng.normal(scale=0.3, size=(num_classes, dim)) for t in templates}

  def encode(texts):
    out = []
    for text in texts:
      k = next(i for i, n in enumerate(names) if text.endswith(f"{n}."))
      t = next(t for t in templates if text == t.replace("{emotion}", names[k]))
      out.append(5.0 * directions[k] + noise[t][k])
    return np.stack(out)

  class_emb = zeroshot.class_embeddings(encode, names, templates)
  labels = rng.integers(0, num_classes, size=60)
  images = 2.0 * directions[labels] + rng.normal(scale=0.1, size=(60, dim))
  result, probs = zeroshot.zeroshot_evaluate(images, labels, class_emb, names, logit_scale=100.0)
  assert result["top1"] == 1.0 and result["top3"] == 1.0
  np.testing.assert_array_equal(probs.argmax(1), labels)
  assert result["metrics"]["macro_f1"] == 1.0
  # Shuffled class embeddings: the labels come out shuffled the same way.
  perm = np.array([1, 2, 3, 4, 5, 0])
  logits = zeroshot.zeroshot_logits(images, class_emb[perm], 100.0)
  np.testing.assert_array_equal(perm[logits.argmax(1)], labels)


def test_logits_are_scaled_cosines():
  logits = zeroshot.zeroshot_logits(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]),
                                    logit_scale=10.0)
  np.testing.assert_allclose(logits, [[6.0, 8.0]])
  with pytest.raises(ValueError, match="teacher's width"):
    zeroshot.zeroshot_logits(np.ones((1, 3)), np.ones((2, 4)))


def test_best_setting_prefers_val_top1_then_the_first_listed():
  val = {"caption": {"top1": 0.5}, "ensemble": {"top1": 0.5}}
  assert zeroshot.best_setting(val, ["caption", "ensemble"]) == "caption"
  val["ensemble"]["top1"] = 0.6
  assert zeroshot.best_setting(val, ["caption", "ensemble"]) == "ensemble"


def _jpeg(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")  # lossless, so pixels can be compared
  return buf.getvalue()


def test_the_person_view_is_the_box_crop_or_the_whole_image():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
  box = [0.25, 0.5, 1.0, 1.0]  # [y0, x0, y1, x1]: the right half, lower three quarters
  record = {"image": _jpeg(pixels), "label": 3, "has_person": True,
            "person_box": np.asarray(box, np.float32)}
  out = zeroshot.ViewsTransform(16, 18)((7, record))
  image = Image.fromarray(pixels)
  np.testing.assert_array_equal(out["image"], np.asarray(
      transforms.resize_center_crop(image, 18, 16)))
  np.testing.assert_array_equal(out["person"], np.asarray(
      transforms.resize_center_crop(image.crop((30, 10, 60, 40)), 18, 16)))
  assert out["has_person"] and out["label"] == 3 and out["index"] == 7
  for no_box in ({"has_person": False, "person_box": np.zeros(4, np.float32)}, {}):
    plain = dict(record, **no_box)
    if not no_box:  # a record from data prepared before person boxes existed
      del plain["has_person"], plain["person_box"]
    out = zeroshot.ViewsTransform(16, 18)((0, plain))
    np.testing.assert_array_equal(out["person"], out["image"])
    assert not out["has_person"]
  released = zeroshot.ViewsTransform(16, 18, person_view="second_view")((0, record))
  np.testing.assert_array_equal(released["person"], released["image"])
  assert "person" not in zeroshot.ViewsTransform(16, 18, person=False)((0, record))


@pytest.mark.parametrize("fusion,teacher_dim", [("easyfusion", 64), ("prior", 32),
                                                ("none", 64)])
def test_student_token_equals_the_models_gamma_without_masking(fusion, teacher_dim):
  model = uniemox.UniEmoX(variant="mu", image_size=32, fusion=fusion, teacher_dim=teacher_dim)
  params = uniemox.init_params(model, seed=1)
  rng = np.random.default_rng(2)
  batch = {"image": jnp.asarray(rng.integers(0, 255, (3, 32, 32, 3)), jnp.uint8),
           "person": jnp.asarray(rng.integers(0, 255, (3, 32, 32, 3)), jnp.uint8)}
  fn = jax.jit(zeroshot.student_features_fn(model, ("gamma", "mean", "cls")))
  got = fn(params, batch)
  _, aux = model.apply({"params": params}, preprocess.student_pixels(batch["image"]),
                       preprocess.student_pixels(batch["person"]), 0.0)
  np.testing.assert_allclose(got["gamma"], aux["gamma"], rtol=1e-4, atol=1e-5)
  assert got["gamma"].shape == (3, teacher_dim)
  assert ("teacher_proj" in params) == (teacher_dim != 32)
  # The encoder features are the linear probe's.
  encoder = linear_probe.build_encoder(_ModelConfig())
  for pool in ("mean", "cls"):
    expect = linear_probe.pooled_features(encoder, pool)(
        params["mae"]["encoder"], preprocess.student_pixels(batch["image"]))
    np.testing.assert_allclose(got[pool], expect, rtol=1e-4, atol=1e-5)


class _ModelConfig:
  class model:  # noqa: N801 - stands in for config.model
    variant, patch_size, image_size, dtype, attention_impl = "mu", None, 32, "float32", "explicit"
