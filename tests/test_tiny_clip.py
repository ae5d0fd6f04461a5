"""The demo's teacher: a tiny CLIP trained contrastively on the EmoSet look-alike."""
import os

import jax.numpy as jnp
import numpy as np

from uniemox_jax.models import clip
from uniemox_jax.tools import tiny_clip


def test_clip_loss_is_symmetric_infonce():
  img = jnp.eye(3)
  # Matched pairs at CLIP's largest scale (100): the loss is ~0. Captions 0 and 2 swapped:
  # rows 0 and 2 put all their mass on the wrong caption, so 2 of 3 terms are ~100 each way.
  assert float(tiny_clip.clip_loss(img, img, jnp.log(100.0))) < 1e-3
  swapped = float(tiny_clip.clip_loss(img, img[::-1], jnp.log(100.0)))
  np.testing.assert_allclose(swapped, 2 * 100 / 3, rtol=1e-3)
  # The scale is capped at 100 (CLIP's clamp of its learnable temperature).
  assert float(tiny_clip.clip_loss(img, img[::-1], jnp.log(1e4))) == swapped


def test_training_lowers_the_loss_and_saves_a_loadable_teacher(demo_env, tmp_path):
  out = str(tmp_path / "teacher")
  emoset = os.path.join(demo_env.raw, "EmoSet")
  tiny_clip.make_tiny_clip(out, tiny_clip.emoset_captions(emoset), seed=0, image_size=32,
                           patch_size=8)
  before = clip.load_clip(out)[1]
  first = tiny_clip.train_tiny_clip(out, emoset, steps=1, batch=16, lr=0.0)
  info = tiny_clip.train_tiny_clip(out, emoset, steps=40, batch=16, lr=3e-3, log_every=10)
  assert info["steps"] == 40 and info["loss"] < first["loss"]
  after = clip.load_clip(out)[1]
  assert not np.allclose(after["vision"]["patch_embed"]["kernel"],
                         before["vision"]["patch_embed"]["kernel"])
  bench = os.path.join(demo_env.raw, "benchmarks", "emo8")
  result = tiny_clip.zeroshot_accuracy(out, bench)
  assert result["num_examples"] == 8 and 0.0 <= result["top1"] <= 1.0
  assert result["classes"] == sorted(os.listdir(os.path.join(bench, "test")))


def test_sentence_dropout_keeps_at_least_one_sentence():
  rng = np.random.default_rng(0)
  sentences = tiny_clip._sentences("The scene type of this photo is park. The overall emotion "
                                   "conveyed is awe.")
  assert sentences == ["The scene type of this photo is park.",
                       "The overall emotion conveyed is awe."]
  seen = {tiny_clip._drop_sentences(sentences, rng) for _ in range(200)}
  assert seen == {" ".join(sentences), sentences[0], sentences[1]}
