"""The teacher: its plan, the text-embedding cache and the targets of a batch."""
import os

import numpy as np

from uniemox_jax import teacher as teacher_lib
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import clip


def test_teacher_text_cache_equals_on_the_fly(demo_env, tmp_path):
  teacher, params = clip.load_clip(demo_env.clip)
  tokenizer = tokenizer_lib.load_tokenizer(demo_env.clip)
  captions = [f"The scene type of this photo is park. The overall emotion conveyed is {e}."
              for e in ("awe", "fear", "anger", "sadness", "joy")] + ["a " * 120]
  source = [{"caption": c} for c in captions]
  cached = teacher_lib.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, "caption",
                                       "train", source, cache_dir=str(tmp_path))
  ids, truncated = tokenizer_lib.tokenize(tokenizer, captions)
  assert truncated == 1
  direct = np.asarray(teacher.apply({"params": params}, ids, method="encode_text"))
  # Different batch shapes sum in different orders: equal to float32 rounding, 1e-6 of scale.
  assert np.abs(cached - direct).max() <= 1e-6 * np.abs(direct).max()
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("text_train_")
  # Served from the cache the second time, and the key changes with the captions.
  again = teacher_lib.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, "caption",
                                      "train", source, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again, cached)
  teacher_lib.text_embeddings(teacher, params, demo_env.clip, demo_env.clip, "caption",
                              "train", source[:-1], cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2


def test_teacher_cache_key_depends_on_the_weights(demo_env, tmp_path):
  import shutil
  other = tmp_path / "other_clip"
  shutil.copytree(demo_env.clip, other)
  spec = clip.load_clip(str(other))[0].spec
  clip.save_pretrained(spec, clip.init_params(spec, seed=1), str(other))
  args = ("caption", ["a photo"], 77, "float32")
  assert (teacher_lib.cache_key(demo_env.clip, demo_env.clip, *args) !=
          teacher_lib.cache_key(str(other), str(other), *args))


def test_the_plan_follows_the_loss_weights_and_cache_text():
  import ml_collections
  loss = lambda **w: ml_collections.ConfigDict(dict(dict(con=0.0, sim=0.0, rec=0.0, nce=0.0), **w))
  plan = teacher_lib.Plan.from_config
  assert plan(loss(con=1, sim=1, rec=1), True) == teacher_lib.Plan(image=True, text="cache")
  assert plan(loss(con=1, sim=1, rec=1), False) == teacher_lib.Plan(image=True, text="tokens")
  assert plan(loss(rec=1), True) == teacher_lib.Plan(image=False, text="none")
  assert plan(loss(sim=1), False) == teacher_lib.Plan(image=True, text="none")
  assert plan(loss(nce=1, rec=1), True) == teacher_lib.Plan(image=False, text="cache")


def test_targets_and_host_hooks_follow_the_plan(demo_env):
  module, params = clip.load_clip(demo_env.clip)
  rng = np.random.default_rng(0)
  cache = rng.normal(size=(5, module.spec.projection_dim)).astype(np.float32)
  batch = {"scene": rng.integers(0, 256, (2, 48, 48, 3)).astype(np.uint8),
           "index": np.array([3, 1])}
  cached = teacher_lib.Teacher(module, params, teacher_lib.Plan(True, "cache"),
                               tokenizer_path=demo_env.clip, text_cache=cache)
  assert cached.pipeline_tokenizer() is None
  host = cached.host_batch_fn()(dict(batch))
  np.testing.assert_array_equal(host["text_emb"], cache[[3, 1]])
  omega, lam = cached.targets(params, host)
  np.testing.assert_array_equal(lam, cache[[3, 1]])
  assert omega.shape == (2, module.spec.projection_dim)

  tokens = teacher_lib.Teacher(module, params, teacher_lib.Plan(False, "tokens"),
                               tokenizer_path=demo_env.clip)
  assert tokens.pipeline_tokenizer() == demo_env.clip and tokens.host_batch_fn() is None
  ids, _ = tokenizer_lib.tokenize(tokenizer_lib.load_tokenizer(demo_env.clip), ["a photo"] * 2)
  omega, lam = tokens.targets(params, dict(batch, caption_ids=ids))
  assert omega is None
  np.testing.assert_allclose(
      lam, module.apply({"params": params}, ids, method="encode_text"), rtol=1e-6)
  assert teacher_lib.Teacher(module, params, teacher_lib.Plan(False, "none")).targets(
      params, batch) == (None, None)
