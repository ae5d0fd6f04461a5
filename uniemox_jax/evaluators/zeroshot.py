"""Zero-shot emotion classification with the pre-trained student and the teacher's text tower.

Pre-training pulls the student token γ = fusion(α, β) towards CLIP's image embedding Ω (L_sim)
and makes it relate to the captions as Ω does (L_con), so γ lives in CLIP's image–text space
and can be classified against text prompts before any fine-tuning:

  class embeddings  for each class c and template t (e.g. "The overall emotion conveyed is
                    {emotion}.", the last sentence of every pre-training caption), the teacher's
                    text embedding of t(c), L2-normalised; averaged over the templates and
                    normalised again (a prompt ensemble; one template = no ensemble)
                    → T̂ `[K, E]`
  logits            scale · γ̂ T̂ᵀ `[N, K]` (scale: the teacher's logit scale, 100 for CLIP);
                    the softmax gives the probabilities for the calibration metrics
  the teacher       the same prompts scored against CLIP's own image embedding Ω of the same
                    images (its zero-shot accuracy is the reference the student is distilled
                    towards)

On benchmark images the scene view is the whole image (shorter side resized, centre crop) and
the person view is the crop of the record's person box (`has_person`, `person_box`, stored by
the builders when a detector's boxes were given at prepare time), resized and centre-cropped
the same way; without a box the person view is the whole image, as in pre-training.

Device side: `student_features_fn` (γ, and the encoder's mean / CLS features, without masking
and without running the pixel decoder) and `teacher_image_fn`; host side: `ViewsTransform`,
`extract` (every example once, in source order), the prompt embeddings and the scoring.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uniemox_jax import preprocess, sharding
from uniemox_jax import teacher as teacher_lib
from uniemox_jax.data import pipeline, transforms
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.evaluators import classification
from uniemox_jax.models import fusion as fusion_lib
from uniemox_jax.models import mae, uniemox, vit

# Features `student_features_fn` can compute.
STUDENT_FEATURES = ("gamma", "mean", "cls")
# CLIP's logit scale is clipped to this in training; the scores use at most this.
MAX_LOGIT_SCALE = 100.0


# --------------------------------------------------------------------------------------------
# Host side: the two evaluation views of one record.


@dataclasses.dataclass
class ViewsTransform:
  """The evaluation views of a record: `image` (the scene view: shorter side to
  `resize_size`, bicubic, centre crop `image_size`) and, with `person`, `person` (the
  record's person box cut out, then the same resize and crop; the whole image when the record
  has no usable box or `person_view` is the released `'second_view'`). Output also has
  `has_person` (bool), `label`, `index`; pixels are uint8 `[S, S, 3]`."""
  image_size: int
  resize_size: int | None = None
  person: bool = True
  person_view: str = "detector_crop"

  def __call__(self, item: tuple[int, Mapping[str, Any]]) -> dict:
    index, record = item
    image = transforms.decode(record["image"])
    resize = self.resize_size or int(round(self.image_size / 0.875))
    out = {"image": transforms.to_array(transforms.resize_center_crop(image, resize,
                                                                      self.image_size)),
           "label": np.int32(record["label"]), "index": np.int64(index)}
    if self.person:
      region = (pipeline.person_region(record, image.width, image.height)
                if self.person_view == "detector_crop" else None)
      crop = image if region is None else image.crop(region)
      out["person"] = transforms.to_array(transforms.resize_center_crop(crop, resize,
                                                                        self.image_size))
      out["has_person"] = np.bool_(region is not None)
    return out


def extract(source: Sequence, transform: Callable, fn: Callable, params, mesh, *,
            batch_size: int, num_workers: int = 0, preemption=None,
            where: str = "feature extraction") -> tuple[dict[str, np.ndarray], dict]:
  """Runs the jitted `fn(params, batch) -> {name: [B, ...]}` over every example of `source`
  once (padded to whole batches of `batch_size`, padding dropped, all processes gathered), in
  source order.

  Returns `(outputs {name: [N, ...] float32}, host {'label' [N], 'has_person' [N] (when the
  transform gives it)})`. `preemption.check(where)` runs before every batch.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  ds = pipeline.eval_dataset(source, transform, global_batch=batch_size,
                             shard=pipeline.Sharding.from_jax())
  to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  jitted = jax.jit(fn)
  outs: dict[str, list] = {}
  host: dict[str, list] = {}
  index = []
  for local in pipeline.to_iter(ds, num_workers):
    if preemption is not None:
      preemption.check(where)
    pixels = {k: local[k] for k in ("image", "person") if k in local}
    result = jitted(params, to_global(pixels))
    valid = gather(local["valid"])
    for name, value in result.items():
      outs.setdefault(name, []).append(np.asarray(gather(value), np.float32)[valid])
    for name in ("label", "has_person"):
      if name in local:
        host.setdefault(name, []).append(gather(local[name])[valid])
    index.append(gather(local["index"])[valid])
  order = np.argsort(np.concatenate(index)) if index else np.zeros(0, np.int64)
  return ({k: np.concatenate(v)[order] for k, v in outs.items()},
          {k: np.concatenate(v)[order] for k, v in host.items()})


# --------------------------------------------------------------------------------------------
# Device side: student and teacher features.


def student_features_fn(model: uniemox.UniEmoX, outputs: Sequence[str] = ("gamma",),
                        person_view: str = "detector_crop") -> Callable:
  """`(params, batch) -> {name: [B, ·] float32}` for the UniEmoX parameters `params`
  (`mae/...`, `fusion/...`, `teacher_proj`) and a batch with uint8 `image` (and `person`
  when γ is asked for and the model fuses) `[B, S, S, 3]`.

  Names (`outputs`): `'gamma'` `[B, E]` — the student token of docs/method.md §1 computed as
  `UniEmoX` computes it, but without masking and without the pixel decoder (the same value
  as `UniEmoX(...)(scene, person, 0.0)[1]['gamma']`); `'mean'` `[B, D]` / `'cls'` `[B, D]` —
  the encoder's mean patch token / CLS token after its final norm (the linear probe's
  features) of the scene view. The person view runs only when γ needs it.
  """
  unknown = set(outputs) - set(STUDENT_FEATURES)
  if unknown:
    raise ValueError(f"unknown student features {sorted(unknown)}; choose from "
                     f"{STUDENT_FEATURES}")
  encoder = mae.MaskedAutoencoder(**model.mae_fields())
  fuse = (fusion_lib.make_fusion(model.fusion, model.fusion_heads, model.dtype)
          if model.uses_person_view else None)
  proj = nn.Dense(model.teacher_dim, dtype=model.dtype, kernel_init=vit.dense_init)

  def fn(params, batch):
    scene = preprocess.student_pixels(batch["image"])
    _, aux = encoder.apply({"params": params["mae"]}, scene, 0.0, None, False, False)
    out = {}
    if "mean" in outputs:
      out["mean"] = aux["encoded"][:, 1:].astype(jnp.float32).mean(axis=1)
    if "cls" in outputs:
      out["cls"] = aux["cls"]
    if "gamma" in outputs:
      gamma = aux["cls_embed"]
      if fuse is not None:
        person = preprocess.person_input(batch["person"], person_view)
        _, aux_person = encoder.apply({"params": params["mae"]}, person, 0.0, None, False,
                                      False)
        gamma = fuse.apply({"params": params["fusion"]}, gamma, aux_person["cls_embed"])
      if "teacher_proj" in params:
        gamma = proj.apply({"params": params["teacher_proj"]}, gamma)
      out["gamma"] = gamma.astype(jnp.float32)
    return out

  return fn


def teacher_image_fn(module, input_norm: str = "clip") -> Callable:
  """`(teacher_params, batch) -> {'teacher': [B, E]}`: CLIP's image embedding Ω of the
  batch's uint8 `image`, normalised with `input_norm`'s statistics and resized to the
  teacher's input size (`preprocess.teacher_pixels`, as in pre-training)."""

  def fn(params, batch):
    pixels = preprocess.teacher_pixels(batch["image"], input_norm, module.spec.image_size)
    return {"teacher": module.apply({"params": params}, pixels, method="encode_image")}

  return fn


def teacher_logit_scale(teacher_params) -> float:
  """`exp(logit_scale)` of the teacher, at most `MAX_LOGIT_SCALE` (CLIP: 100)."""
  return float(min(np.exp(float(jax.device_get(teacher_params["logit_scale"]))),
                   MAX_LOGIT_SCALE))


# --------------------------------------------------------------------------------------------
# Prompts.


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
  """`[K][T]` texts: each template with `{emotion}` replaced by the class name (underscores
  become spaces)."""
  if not templates:
    raise ValueError("no prompt templates")
  for t in templates:
    if "{emotion}" not in t:
      raise ValueError(f"prompt template {t!r} has no '{{emotion}}' placeholder")
  return [[t.replace("{emotion}", str(c).replace("_", " ")) for t in templates]
          for c in class_names]


def class_embeddings(encode_texts: Callable[[list[str]], np.ndarray],
                     class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
  """`[K, E]` unit-length class embeddings: per class, the mean of its templates' unit-length
  text embeddings, normalised again. `encode_texts(texts) -> [len(texts), E]`."""
  texts = prompts(class_names, templates)
  flat = [t for row in texts for t in row]
  emb = np.asarray(encode_texts(flat), np.float64).reshape(len(class_names), len(templates), -1)
  emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  mean = emb.mean(axis=1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def text_encoder(module, params, tokenizer_path: str,
                 context_length: int = 77) -> Callable[[list[str]], np.ndarray]:
  """`texts -> [N, E]` float32 with the teacher's text tower (its tokenizer from
  `tokenizer_path`)."""
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)

  def encode(texts: list[str]) -> np.ndarray:
    emb, _ = teacher_lib.encode_captions(module, params, tokenizer, texts, context_length,
                                         batch=max(8, len(texts)))
    return emb

  return encode


# --------------------------------------------------------------------------------------------
# Scoring.


def zeroshot_logits(image_emb: np.ndarray, class_emb: np.ndarray,
                    logit_scale: float = MAX_LOGIT_SCALE) -> np.ndarray:
  """`logit_scale · x̂ ĉᵀ` `[N, K]` (float64) for image embeddings `[N, E]` and class
  embeddings `[K, E]` (both normalised here)."""
  x = np.asarray(image_emb, np.float64)
  c = np.asarray(class_emb, np.float64)
  if x.shape[-1] != c.shape[-1]:
    raise ValueError(f"image embeddings are {x.shape[-1]}-d, class embeddings {c.shape[-1]}-d "
                     "(the student's γ must have the teacher's width)")
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
  return logit_scale * x @ c.T


def zeroshot_evaluate(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                      class_names: Sequence[str],
                      logit_scale: float = MAX_LOGIT_SCALE) -> tuple[dict, np.ndarray]:
  """The classification result (top-1/3, confusion, `metrics` with ECE) of zero-shot scoring,
  and the softmax probabilities `[N, K]`."""
  logits = zeroshot_logits(image_emb, class_emb, logit_scale)
  return (classification.evaluate_logits(logits, labels, class_names),
          classification.softmax(logits))


def best_setting(val_results: Mapping[str, dict], order: Sequence[str]) -> str:
  """The setting (a key of `val_results`) with the highest val top-1; ties go to the first
  in `order`."""
  return max(order, key=lambda s: (val_results[s]["top1"], -list(order).index(s)))

