"""Device-side preprocessing: uint8 pixels from the pipeline → the float inputs each network
expects. Pure functions of arrays, like `masking.py`.

The pipeline hands over uint8 `[B, S, S, 3]` views (4× less host→device traffic than float,
and no float work on the host); everything below runs inside the jitted steps:

  student_views  the scene view and the person view, ImageNet-normalised; with the released
                 code's `second_view` the person view is normalised a second time
                 (docs/method.md §3 #2)
  teacher_pixels the unmasked scene view, normalised with the teacher's statistics (CLIP's by
                 default, ImageNet's as released: docs/method.md §3 #3) and resized to the
                 teacher's input size
  student_pixels one batch of images for the classifier / encoder (fine-tuning, evaluation)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's own statistics (its preprocessing; docs/method.md §3 #3).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# How the teacher's input is normalised (`config.teacher.input_norm`).
TEACHER_NORMS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def normalize(pixels_u8: jax.Array, mean, std) -> jax.Array:
  """uint8 `[..., 3]` → float32 `(x / 255 − mean) / std`."""
  x = pixels_u8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def student_pixels(pixels_u8: jax.Array) -> jax.Array:
  """The student's (and classifier's) input: ImageNet-normalised float32."""
  return normalize(pixels_u8, IMAGENET_MEAN, IMAGENET_STD)


def person_input(pixels_u8: jax.Array, person_view: str) -> jax.Array:
  """The student's person-view input: ImageNet-normalised, and with `'second_view'` (the
  released code, docs/method.md §3 #2) normalised a second time, as its YOLO wrapper
  re-applies the normalisation to the already normalised tensor."""
  x = student_pixels(pixels_u8)
  if person_view == "second_view":
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return x


def student_views(batch: dict, person_view: str, with_person: bool):
  """`(scene, person)` float32 `[B, S, S, 3]` from a pre-training batch's uint8 views;
  `person` is None when the model does not use the person view (no fusion)."""
  scene = student_pixels(batch["scene"])
  person = person_input(batch["person"], person_view) if with_person else None
  return scene, person


def teacher_pixels(scene_u8: jax.Array, input_norm: str, size: int) -> jax.Array:
  """The teacher's image input: the unmasked scene view normalised with `input_norm`'s
  statistics and resized (bicubic) to the teacher's `size` when it differs."""
  mean, std = TEACHER_NORMS[input_norm]
  pixels = normalize(scene_u8, mean, std)
  if pixels.shape[1] != size:
    pixels = jax.image.resize(pixels, pixels.shape[:1] + (size, size, 3), "bicubic")
  return pixels
