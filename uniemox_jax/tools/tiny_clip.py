r"""Writes a tiny CLIP teacher (Hugging Face layout) for the demo and tests, random or trained.

  python -m uniemox_jax.tools.tiny_clip --out=demo_out/tiny_clip --captions_from=demo_out/raw/EmoSet
  python -m uniemox_jax.tools.tiny_clip --out=demo_out/tiny_clip --captions_from=demo_out/raw/EmoSet \
      --train_steps=400 --zeroshot_on=demo_out/raw/benchmarks/emo8

The directory holds `config.json`, `model.safetensors` and a small real byte-level BPE
vocabulary learned from the data set's captions, so it loads exactly like a downloaded CLIP
(`clip.load_clip`, `tokenizer.load_tokenizer`) with nothing downloaded.

Without `--train_steps` the weights are random: the features carry no semantics (what tests
need). With it, the tiny CLIP is fitted as CLIP is — symmetric InfoNCE between the images and
their captions, with a learnable temperature — on the EmoSet look-alike's train+val images
(augmented with random crops and flips), so that, like the real CLIP, its image and text
towers agree on the demo's emotions, objects, expressions and actions. `--zeroshot_on` then
reports its zero-shot accuracy on a benchmark folder's test split with the prompt
"The overall emotion conveyed is {emotion}." (also written to `zeroshot.json`).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from absl import logging
from PIL import Image

from uniemox_jax import preprocess
from uniemox_jax.data import captions as captions_lib
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.models import clip
from uniemox_jax.train import optim

TINY = dict(image_size=64, patch_size=16, vision_width=64, vision_layers=2, vision_heads=2,
            vision_mlp_dim=256, context_length=77, text_width=64, text_layers=2, text_heads=2,
            text_mlp_dim=256, projection_dim=64)
PROMPT = "The overall emotion conveyed is {}."


def emoset_examples(root: str, splits=("train", "val", "test")) -> list[tuple[str, str]]:
  """`(image path, caption)` of every image of `splits` under an EmoSet-layout directory
  (official layout)."""
  out = []
  for split in splits:
    path = os.path.join(root, f"{split}.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = json.load(f)
    for row in rows:
      emotion, image, annotation = row[0], row[-2], row[-1]
      with open(os.path.join(root, annotation)) as f:
        out.append((os.path.join(root, image), captions_lib.build_caption(json.load(f), emotion)))
  if not out:
    raise FileNotFoundError(f"no EmoSet split files ({'/'.join(splits)}.json) under {root!r}")
  return out


def emoset_captions(root: str) -> list[str]:
  """Captions of every annotated image under an EmoSet-layout directory (official layout)."""
  return [c for _, c in emoset_examples(root)]


def make_tiny_clip(out_dir: str, corpus: list[str], seed: int = 0, **sizes) -> str:
  """Writes the tiny (random) teacher to `out_dir` and returns it. `sizes` override `TINY`."""
  tokenizer_lib.write_tiny_vocab(out_dir, corpus)
  vocab_size = len(tokenizer_lib.load_tokenizer(out_dir))
  spec = clip.ClipSpec(**dict(TINY, **sizes), vocab_size=vocab_size,
                       eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2,
                       pad_token_id=vocab_size - 1)
  clip.save_pretrained(spec, clip.init_params(spec, seed), out_dir)
  logging.info("tiny CLIP teacher (vocab %d, projection %d) written to %s", vocab_size,
               spec.projection_dim, out_dir)
  return out_dir


# --------------------------------------------------------------------------------------
# Training.


def _load_images(paths, size: int) -> np.ndarray:
  """uint8 `[N, size, size, 3]`: each image resized (bicubic) to a square."""
  return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC))
                   for p in paths])


def _augment(key, images_u8: jax.Array, size: int) -> jax.Array:
  """Random crops (75–100% of the side, resized back) and horizontal flips, on the device;
  CLIP-normalised float32 out."""
  b = images_u8.shape[0]
  k_scale, k_x, k_y, k_flip = jax.random.split(key, 4)
  x = preprocess.normalize(images_u8, preprocess.CLIP_MEAN, preprocess.CLIP_STD)
  scale = jax.random.uniform(k_scale, (b,), minval=0.75, maxval=1.0)
  off_x = jax.random.uniform(k_x, (b,)) * (1 - scale)
  off_y = jax.random.uniform(k_y, (b,)) * (1 - scale)

  def crop(img, s, ox, oy):
    # scale_and_translate maps output pixel o to input (o - t) / s: zoom by 1/s at (ox, oy).
    inv = 1.0 / s
    return jax.image.scale_and_translate(img, (size, size, 3), (0, 1), jnp.array([inv, inv]),
                                         jnp.array([-oy * size * inv, -ox * size * inv]),
                                         "linear")

  x = jax.vmap(crop)(x, scale, off_x, off_y)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def _sentences(caption: str) -> list[str]:
  return [s.strip() + "." for s in caption.split(".") if s.strip()]


def _drop_sentences(sentences: list[str], rng: np.random.Generator, full: float = 0.5,
                    keep: float = 0.5) -> str:
  """Caption augmentation: the whole caption with probability `full`, else a random subset of
  its sentences (each kept with probability `keep`, at least one), so that the text tower
  meets short texts such as a single prompt sentence too."""
  if rng.uniform() < full:
    return " ".join(sentences)
  kept = [s for s in sentences if rng.uniform() < keep]
  return " ".join(kept or [sentences[int(rng.integers(len(sentences)))]])


def clip_loss(image_features, text_features, logit_scale):
  """Symmetric InfoNCE over the batch: image i's caption is text i (CLIP's objective)."""
  img = image_features / jnp.linalg.norm(image_features, axis=-1, keepdims=True)
  txt = text_features / jnp.linalg.norm(text_features, axis=-1, keepdims=True)
  logits = jnp.exp(jnp.minimum(logit_scale, jnp.log(100.0))) * img @ txt.T
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def train_tiny_clip(out_dir: str, emoset_root: str, *, steps: int, batch: int = 64,
                    lr: float = 2e-3, seed: int = 0, log_every: int = 50) -> dict:
  """Fits the tiny CLIP in `out_dir` (written by `make_tiny_clip`) on the EmoSet look-alike's
  train+val images and captions, and saves it in place. Returns `{'steps', 'loss', 'seconds'}`."""
  model, params = clip.load_clip(out_dir)
  spec = model.spec
  model = clip.CLIP(spec, frozen=False)
  examples = emoset_examples(emoset_root, ("train", "val"))
  images = _load_images([p for p, _ in examples], spec.image_size)
  tokenizer = tokenizer_lib.load_tokenizer(out_dir)
  sentences = [_sentences(c) for _, c in examples]
  batch = min(batch, len(examples))
  cfg = ml_collections.ConfigDict(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
                                       no_decay_names=("logit_scale",), min_lr=0.0,
                                       grad_clip=1.0, layer_decay=0.0))
  tx, _ = optim.make_optimizer(cfg, params, peak_lr=lr, total_steps=steps,
                               warmup_steps=max(1, steps // 10))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key, img_u8, text_ids):
    def loss_fn(p):
      pixels = _augment(key, img_u8, spec.image_size)
      (img, txt), aux = model.apply({"params": p}, pixels, text_ids)
      return clip_loss(img, txt, p["logit_scale"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  start, losses = time.perf_counter(), []
  order = rng.permutation(len(examples))
  pos = 0
  for i in range(steps):
    if pos + batch > len(order):
      order, pos = rng.permutation(len(examples)), 0
    idx = order[pos:pos + batch]
    pos += batch
    texts = [_drop_sentences(sentences[j], rng) for j in idx]
    ids, _ = tokenizer_lib.tokenize(tokenizer, texts, spec.context_length)
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), images[idx],
                                   ids)
    losses.append(float(loss))
    if (i + 1) % log_every == 0 or i + 1 == steps:
      logging.info("tiny CLIP step %d/%d: contrastive loss %.4f (%.1f s)", i + 1, steps,
                   np.mean(losses[-log_every:]), time.perf_counter() - start)
  clip.save_pretrained(spec, jax.device_get(params), out_dir)
  return {"steps": steps, "loss": float(np.mean(losses[-log_every:])),
          "seconds": time.perf_counter() - start}


def zeroshot_accuracy(teacher_dir: str, folder: str, split: str = "test") -> dict:
  """The teacher's zero-shot top-1 on `folder/<split>/<class>/*` with `PROMPT` (classes in
  sorted folder order)."""
  model, params = clip.load_clip(teacher_dir)
  spec = model.spec
  classes = sorted(os.listdir(os.path.join(folder, split)))
  ids, _ = tokenizer_lib.tokenize(tokenizer_lib.load_tokenizer(teacher_dir),
                                  [PROMPT.format(c) for c in classes], spec.context_length)
  text = model.apply({"params": params}, ids, method="encode_text")
  text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
  paths, labels = [], []
  for k, c in enumerate(classes):
    names = sorted(os.listdir(os.path.join(folder, split, c)))
    paths += [os.path.join(folder, split, c, n) for n in names]
    labels += [k] * len(names)
  pixels = preprocess.normalize(_load_images(paths, spec.image_size), preprocess.CLIP_MEAN,
                                preprocess.CLIP_STD)
  image = model.apply({"params": params}, pixels, method="encode_image")
  pred = np.asarray(jnp.argmax(image @ text.T, axis=-1))
  return {"split": split, "num_examples": len(labels), "classes": classes,
          "top1": float(np.mean(pred == np.asarray(labels))), "prompt": PROMPT}


def _define_flags():
  """CLI flags, defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_string("captions_from", None,
                      "An EmoSet-layout directory whose captions train the vocabulary (and, "
                      "with --train_steps, whose images and captions train the model).")
  flags.DEFINE_integer("seed", 0, "Seed of the weights (and of the training).")
  flags.DEFINE_integer("train_steps", 0, "Contrastive training steps (0: random weights).")
  flags.DEFINE_integer("batch", 64, "Training batch.")
  flags.DEFINE_integer("patch_size", TINY["patch_size"], "Patch size of the image tower.")
  flags.DEFINE_float("lr", 2e-3, "Peak learning rate (AdamW, warm-up then cosine).")
  flags.DEFINE_string("zeroshot_on", None,
                      "A benchmark folder (<folder>/test/<class>/...) to report the trained "
                      "teacher's zero-shot accuracy on.")


def main(argv):
  del argv
  f = flags.FLAGS
  make_tiny_clip(f.out, emoset_captions(f.captions_from), f.seed, patch_size=f.patch_size)
  if f.train_steps:
    info = train_tiny_clip(f.out, f.captions_from, steps=f.train_steps, batch=f.batch,
                           lr=f.lr, seed=f.seed)
    print(f"tiny CLIP teacher trained for {info['steps']} steps in {info['seconds']:.0f} s "
          f"(final contrastive loss {info['loss']:.3f})")
  if f.zeroshot_on:
    result = zeroshot_accuracy(f.out, f.zeroshot_on)
    with open(os.path.join(f.out, "zeroshot.json"), "w") as fh:
      json.dump(result, fh, indent=1)
    print(f"teacher zero-shot top-1 on {f.zeroshot_on} ({result['split']}, "
          f"{result['num_examples']} images): {result['top1']:.3f} "
          f"(chance {1 / len(result['classes']):.3f})")
  print(f"tiny CLIP teacher written to {f.out}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["out", "captions_from"])
  app.run(main)
