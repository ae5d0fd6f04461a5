"""UniEmoX pre-training (SPEC §1): the step function and the task's setup.

Sections, top to bottom: mesh → data → teacher (+ text-embedding cache) → model and
optimizer → sharded init → step function → checkpoint restore → loop.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from uniemox_jax import checkpointing, losses, metrics as metrics_lib, sharding
from uniemox_jax.data import pipeline
from uniemox_jax.models import clip, uniemox, vit
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train import optim, run_info, startup, teacher_cache
from uniemox_jax.train.common import (IMAGENET_MEAN, IMAGENET_STD, abstract_params, dtype_of,
                                      keep_period, load_split, normalize)


def build_model(config, teacher_dim: int) -> uniemox.UniEmoX:
  m = config.model
  return uniemox.UniEmoX(
      variant=m.variant, image_size=m.image_size, patch_size=m.patch_size or None,
      decoder_width=m.decoder_width or None,
      decoder_depth=None if m.decoder_depth < 0 else m.decoder_depth,
      decoder_heads=m.decoder_heads or None, decoder_output=m.decoder_output,
      fusion=m.fusion, fusion_heads=m.fusion_heads, teacher_dim=teacher_dim,
      dtype=dtype_of(m.dtype), remat=m.remat, attention_impl=m.attention_impl)


def person_input(pixels_u8: jax.Array, person_view: str) -> jax.Array:
  """The student's person-view input: ImageNet-normalised, and with `'second_view'` (the
  released code, SPEC §3 #2) normalised a second time, as its YOLO wrapper re-applies the
  normalisation to the already normalised tensor."""
  x = normalize(pixels_u8, IMAGENET_MEAN, IMAGENET_STD)
  if person_view == "second_view":
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return x


def make_train_step(config, model: uniemox.UniEmoX, teacher: clip.CLIP, tx, lr_fn,
                    num_relation_groups: int, cached_text: bool):
  """`(state, teacher_params, batch) -> (state, metrics)` for one optimizer step.

  The batch holds uint8 views `scene`/`person` `[B, S, S, 3]` and either `text_emb` `[B, E]`
  (cached teacher text embeddings) or `caption_ids` `[B, T]`.
  """
  weights = {k: float(config.loss[k]) for k in losses.LOSS_TERMS}
  mask_ratio = float(config.model.mask_ratio)
  patch = model.patch_size_
  teacher_size = teacher.spec.image_size
  t_mean, t_std = ((clip.CLIP_MEAN, clip.CLIP_STD) if config.teacher.input_norm == "clip"
                   else (IMAGENET_MEAN, IMAGENET_STD))

  need_image = bool(weights["sim"] or weights["con"])
  need_text = bool(weights["con"] or weights["nce"])

  def teacher_targets(teacher_params, batch):
    """Ω (CLIP image features of the unmasked scene view) and Λ (caption features); each
    only when a switched-on loss term uses it."""
    omega = lam = None
    if need_image:
      pixels = normalize(batch["scene"], t_mean, t_std)
      if pixels.shape[1] != teacher_size:
        pixels = jax.image.resize(pixels, pixels.shape[:1] + (teacher_size, teacher_size, 3),
                                  "bicubic")
      omega = teacher.apply({"params": teacher_params}, pixels, method="encode_image")
      omega = jax.lax.stop_gradient(omega.astype(jnp.float32))
    if need_text:
      lam = batch["text_emb"] if cached_text else teacher.apply(
          {"params": teacher_params}, batch["caption_ids"], method="encode_text")
      lam = jax.lax.stop_gradient(lam.astype(jnp.float32))
    return omega, lam

  def step(state: loop_lib.TrainState, teacher_params, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_mask, k_drop = jax.random.split(rng)
    scene = normalize(batch["scene"], IMAGENET_MEAN, IMAGENET_STD)
    person = (person_input(batch["person"], config.data.person_view)
              if model.uses_person_view else None)
    omega, lam = teacher_targets(teacher_params, batch)
    target = vit.patchify(scene, patch)

    def loss_fn(params):
      pred, aux = model.apply({"params": params}, scene, person, mask_ratio, train=True,
                              rngs={"masking": k_mask, "dropout": k_drop})
      gamma = aux["gamma"]
      terms = {}
      if weights["rec"]:
        terms["rec"] = losses.reconstruction_loss(pred, target, aux["mask"],
                                                  config.loss.norm_pix)
      if weights["sim"]:
        terms["sim"] = losses.similarity_loss(gamma, omega)
      if weights["con"]:
        terms["con"] = losses.relation_loss(gamma, omega, lam, num_relation_groups)
      if weights["nce"]:
        terms["nce"] = losses.info_nce(gamma, lam, config.loss.nce_temperature)
      return losses.total_loss(terms, weights), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params)}
    metrics.update({f"loss_{k}": v for k, v in terms.items()})
    if "caption_truncated" in batch:
      metrics["captions_truncated"] = jnp.sum(batch["caption_truncated"].astype(jnp.int32))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         rng=state.rng), metrics

  return step


def compile_train_step(config, mesh, model, teacher, tx, lr_fn, state, state_shardings,
                       teacher_params, batch, cached_text: bool):
  """The step jitted with explicit shardings (state donated) and compiled ahead of time for
  `batch`'s shapes. Returns `(compiled, compile_info)`; call it as `compiled(state,
  teacher_params, batch)`."""
  groups = sharding.num_batch_shards(mesh) if config.loss.relation_scope == "local" else 1
  step = make_train_step(config, model, teacher, tx, lr_fn, groups, cached_text)
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(step, in_shardings=(state_shardings, replicated,
                                       jax.tree.map(lambda x: x.sharding, batch)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return loop_lib.aot_compile(jitted, state, teacher_params, batch, name="pretrain step")


def peak_learning_rate(config) -> float:
  return config.optim.lr or optim.scaled_lr(config.optim.base_lr, config.batch_size)


def init_train_state(config, mesh, teacher_dim: int, total_steps: int, warmup_steps: int):
  """Model, optimizer and the train state created directly into its shardings.

  Returns `(model, tx, lr_fn, state, state_shardings)`.
  """
  model = build_model(config, teacher_dim)
  tx, lr_fn = optim.make_optimizer(config.optim, abstract_params(model, *_dummy_inputs(model)),
                                   peak_lr=peak_learning_rate(config),
                                   total_steps=total_steps, warmup_steps=warmup_steps)

  def init_fn(rng):
    params = model.init(rng, *_dummy_inputs(model))["params"]
    return loop_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=rng)

  state, shardings = loop_lib.create_sharded_state(
      init_fn, jax.random.PRNGKey(config.seed), mesh, config.mesh.min_shard_size)
  return model, tx, lr_fn, state, shardings


def run(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  # ---------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  shard = pipeline.Sharding.from_jax()
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---------------------------------------------------------------------- data
  source = load_split(config, config.data.train_split)
  steps_per_epoch = len(source) // config.batch_size
  total = loop_lib.total_steps(config, steps_per_epoch)
  warmup = loop_lib.warmup_steps(config, steps_per_epoch, total)
  run_info.write(workdir, config, {config.data.train_split: source})

  # ---------------------------------------------------------------------- teacher
  teacher, teacher_params = clip.load_clip(config.teacher.path,
                                           dtype=dtype_of(config.teacher.dtype))
  teacher_params = jax.device_put(teacher_params, sharding.replicated(mesh))
  tokenizer_path = config.teacher.tokenizer or config.teacher.path
  text_cache = None
  if config.teacher.cache_text and (config.loss.con or config.loss.nce):
    text_cache = teacher_cache.text_embeddings(
        teacher, teacher_params, tokenizer_path, config.teacher.path, config.data,
        config.data.train_split, source, cache_dir=os.path.join(config.data.data_dir,
                                                                "teacher_cache"))

  # ---------------------------------------------------------------------- model, optimizer
  # ---------------------------------------------------------------------- sharded init
  model, tx, lr_fn, state, state_shardings = init_train_state(
      config, mesh, teacher.spec.projection_dim, total, warmup)
  peak_lr = peak_learning_rate(config)
  logging.info("UniEmoX %s: %.1fM trainable parameters; teacher %s (frozen, not checkpointed)",
               config.model.variant,
               sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)) / 1e6,
               config.teacher.path)

  # ---------------------------------------------------------------------- restore
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_period=keep_period(config, steps_per_epoch),
      async_save=config.checkpoint.async_save)
  start = startup.restore_or_initialize(config, checkpointer, state, state_shardings,
                                        target="pretrain")
  state = start.state

  # ---------------------------------------------------------------------- data iterator
  # Captions are tokenised in the pipeline only when the text tower runs every step.
  tokenize = bool(config.loss.con or config.loss.nce) and text_cache is None
  transform = pipeline.PretrainTransform(
      image_size=config.model.image_size, tokenizer_path=tokenizer_path if tokenize else None,
      scale=(config.data.scale_min, 1.0), person_view=config.data.person_view,
      caption_field=config.data.caption_field)
  ds = pipeline.train_dataset(source, transform, global_batch=config.batch_size,
                              seed=config.seed, shard=shard)
  grain_iter = pipeline.to_iter(ds, config.data.num_workers, config.data.read_threads or None)
  if start.data_state:
    grain_iter.set_state(start.data_state)
  extra_fn = None
  if text_cache is not None:
    def extra_fn(batch):
      batch["text_emb"] = text_cache[batch["index"]]
      return batch
  to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
  batches = pipeline.BatchIterator(grain_iter, to_global, prefetch=config.data.prefetch,
                                   extra_fn=extra_fn)

  # ---------------------------------------------------------------------- step function
  try:
    compiled, compile_info = compile_train_step(
        config, mesh, model, teacher, tx, lr_fn, state, state_shardings, teacher_params,
        batches.peek(), cached_text=text_cache is not None)
    writer = metrics_lib.MetricWriter(workdir, config.log.tensorboard)
    writer.write(start.step, compile_info, prefix="compile/")

    # -------------------------------------------------------------------- loop
    loop = loop_lib.Loop(
        step_fn=lambda s, b: compiled(s, teacher_params, b), batches=batches,
        checkpointer=checkpointer, writer=writer, preemption=preemption, total_steps=total,
        global_batch=config.batch_size, steps_per_epoch=steps_per_epoch,
        save_every=config.checkpoint.every_steps,
        keep_every=keep_period(config, steps_per_epoch), log_every=config.log.every_steps,
        meta={"task": "pretrain"})
    logging.info("pre-training from step %d to %d (%d steps/epoch, warm-up %d steps, peak "
                 "lr %.3g)", start.step, total, steps_per_epoch, warmup, peak_lr)
    state, status = loop.run(state, start.step)
  finally:
    batches.close()
    checkpointer.close()
  if status == "done":
    run_info.mark_done(workdir, {"task": "pretrain", "steps": total})
  return {"status": status, "step": int(jax.device_get(state.step))}


def _dummy_inputs(model: uniemox.UniEmoX, batch: int = 2):
  images = jnp.zeros((batch, model.image_size, model.image_size, 3), jnp.float32)
  noise = jnp.zeros((batch, model.num_patches), jnp.float32)
  return images, images, float(0.75), noise, noise
