"""Looking inside a pre-training run, one function per picture of `colabs/inspect.ipynb`: the
scene and person views of a record (with its person box), the random masks, the MAE
reconstructions, the fused student token's nearest captions under the teacher, and the
encoder's attention maps.

Everything runs the training code itself (the pipeline's `PretrainTransform`, the `UniEmoX`
module with the run's config, the teacher's `encode_captions`), at batch sizes of a few images.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uniemox_jax import attention_maps, inference, masking, preprocess, start
from uniemox_jax.data import pipeline, transforms
from uniemox_jax.models import build, clip, mae, uniemox, vit


@dataclasses.dataclass
class PretrainRun:
  """A pre-training checkpoint with the module its config builds."""
  config: ml_collections.ConfigDict
  model: uniemox.UniEmoX
  params: dict
  description: str

  @property
  def patch_size(self) -> int:
    return self.model.patch_size_


def load_pretrain_run(path: str) -> PretrainRun:
  """The UniEmoX model and parameters of a pre-training workdir / checkpoint."""
  params, desc = start.read_params(path, prefer_best=False)
  if start.kind_of(params) != "pretrain":
    raise ValueError(f"{path} is a {start.kind_of(params)} checkpoint; inspection needs a "
                     "pre-training run (its views, masks and reconstructions)")
  config = inference.run_config(path)
  model = build.from_config(uniemox.UniEmoX, config.model, remat=False,
                            attention_impl="explicit")
  # The teacher's width: a projection exists only when it differs from the decoder's.
  teacher_dim = (params["teacher_proj"]["kernel"].shape[-1] if "teacher_proj" in params
                 else model.spec.decoder_width)
  model = model.clone(teacher_dim=int(teacher_dim))
  return PretrainRun(config, model, params, desc)


def views(record: Mapping[str, Any], image_size: int, person_view: str = "detector_crop",
          seed: int = 0, index: int = 0) -> dict:
  """One record's pre-training views, as the pipeline makes them.

  Returns `image` (the decoded record, PIL), `box` (the person's pixel box `(x0, y0, x1, y1)`
  or None: `pipeline.person_region`), `scene` and `person` (uint8 `[S, S, 3]`).
  """
  image = transforms.decode(record["image"])
  out = pipeline.PretrainTransform(image_size, tokenizer_path=None, person_view=person_view)(
      (index, record), np.random.default_rng(seed))
  return {"image": image, "box": pipeline.person_region(record, image.width, image.height),
          "scene": out["scene"], "person": out["person"]}


def _to_uint8(normalised: jax.Array) -> np.ndarray:
  mean = np.asarray(preprocess.IMAGENET_MEAN, np.float32)
  std = np.asarray(preprocess.IMAGENET_STD, np.float32)
  return np.clip(np.rint((np.asarray(normalised) * std + mean) * 255), 0, 255).astype(np.uint8)


def reconstruct(run: PretrainRun, scene_u8: np.ndarray, person_u8: np.ndarray | None = None,
                mask_ratio: float | None = None, seed: int = 0) -> dict:
  """Masks and MAE reconstructions of a batch of scene views `uint8 [B, S, S, 3]`.

  Returns `mask` `[B, L]` (1 = removed), `reconstruction` (the decoder's prediction of every
  patch) and `pasted` (visible patches from the input, removed ones predicted), both uint8
  `[B, S, S, 3]`, and `gamma` `[B, E]` (the fused student token compared with the teacher).
  With `loss.norm_pix` the prediction is per-patch normalised and is shown with the input
  patch's mean and variance, as MAE's visualisation does.
  """
  model, p = run.model, run.patch_size
  ratio = float(run.config.model.mask_ratio if mask_ratio is None else mask_ratio)
  scene = preprocess.student_pixels(jnp.asarray(scene_u8))
  person = (preprocess.person_input(jnp.asarray(person_u8), run.config.data.person_view)
            if person_u8 is not None and model.uses_person_view else None)
  if model.uses_person_view and person is None:
    person = scene
  key_scene, key_person = jax.random.split(jax.random.PRNGKey(seed))
  b = scene.shape[0]
  noise_scene = masking.sample_noise(key_scene, b, model.num_patches)
  noise_person = masking.sample_noise(key_person, b, model.num_patches)
  pred, aux = model.apply({"params": run.params}, scene, person, ratio, noise_scene,
                          noise_person)
  target = vit.patchify(scene, p)
  if run.config.get("loss") is not None and run.config.loss.get("norm_pix"):
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    pred = pred * jnp.sqrt(var + 1e-6) + mean
  mask = aux["mask"][..., None]
  pasted = target * (1 - mask) + pred * mask
  return {"mask": np.asarray(aux["mask"]),
          "reconstruction": _to_uint8(vit.unpatchify(pred, p)),
          "pasted": _to_uint8(vit.unpatchify(pasted, p)),
          "gamma": np.asarray(aux["gamma"])}


def load_teacher(run: PretrainRun, path: str | None = None):
  """The run's CLIP teacher `(module, params)` (`path` overrides `config.teacher.path`)."""
  return clip.load_clip(path or run.config.teacher.path,
                        dtype=vit.dtype_of(run.config.teacher.dtype))


def caption_embeddings(teacher_module, teacher_params, tokenizer_path: str,
                       captions: Sequence[str]) -> np.ndarray:
  """Teacher text features `[N, E]` of `captions` (the training's `encode_captions`)."""
  from uniemox_jax import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from uniemox_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.load_tokenizer(tokenizer_path)
  emb, _ = teacher_lib.encode_captions(teacher_module, teacher_params, tok, list(captions),
                                       batch=max(1, min(256, len(captions))))
  return emb


def nearest_captions(gamma: np.ndarray, caption_emb: np.ndarray, captions: Sequence[str],
                     k: int = 3) -> list[list[tuple[str, float]]]:
  """For each student token `gamma` `[B, E]`, the `k` captions whose teacher features
  `[N, E]` are nearest by cosine similarity: `[(caption, cosine), ...]` per row."""
  g = np.asarray(gamma, np.float64)
  c = np.asarray(caption_emb, np.float64)
  g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)
  c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
  sims = g @ c.T
  order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return [[(captions[j], float(sims[i, j])) for j in row] for i, row in enumerate(order)]


def encoder_attention(run: PretrainRun, scene_u8: np.ndarray) -> dict:
  """The pre-trained encoder's attention maps of unmasked scene views: `{'last', 'rollout'}`
  `[B, g, g]` in [0, 1] (see `attention_maps`)."""
  encoder = mae.MaskedAutoencoder(**run.model.mae_fields())
  _, maps = attention_maps.apply_with_maps(
      encoder, run.params["mae"], preprocess.student_pixels(jnp.asarray(scene_u8)),
      mask_ratio=0.0, decode=False)
  return {k: np.asarray(v) for k, v in maps.items()}
