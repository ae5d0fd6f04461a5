"""UniEmoX pre-training (docs/method.md §1): the step function and the task's setup.

One batch, from the Grain pipeline to the losses, visits each module once:

  data.pipeline   PretrainTransform: two uint8 views (+ caption tokens when the teacher's plan
                  asks for them), batched, attached the cached Λ (`teacher.host_batch_fn`),
                  made global arrays on the mesh
  preprocess      student_views: ImageNet normalisation (twice for the released second view)
  teacher         targets: Ω of the unmasked scene view, Λ from the cache or the text tower
  models.uniemox  both masked views through the shared MAE, fusion → γ; the scene's pixels
  losses          pretrain_losses: L_rec, L_sim, L_con (and L_nce), weighted
  train.loop      the optimizer step's metrics, checkpoints, pre-emption

Sections of `run`, top to bottom: mesh → data → teacher → model and optimizer → sharded init
→ checkpoint restore → data iterator → step function → loop.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from uniemox_jax import checkpointing, losses, metrics as metrics_lib, preprocess, sharding, start
from uniemox_jax import teacher as teacher_lib
from uniemox_jax.data import builders, pipeline
from uniemox_jax.models import build, uniemox, vit
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train import optim, readout, run_info


def build_model(config, teacher_dim: int) -> uniemox.UniEmoX:
  return build.from_config(uniemox.UniEmoX, config.model, teacher_dim=teacher_dim)


def make_train_step(config, model: uniemox.UniEmoX, teacher: teacher_lib.Teacher, tx, lr_fn,
                    num_relation_groups: int):
  """`(state, teacher_params, batch) -> (state, metrics)` for one optimizer step.

  The batch holds uint8 views `scene`/`person` `[B, S, S, 3]` and, as the teacher's plan says,
  `text_emb` `[B, E]` (cached teacher text embeddings) or `caption_ids` `[B, T]`.
  """
  weights = {k: float(config.loss[k]) for k in losses.LOSS_TERMS}
  mask_ratio = float(config.model.mask_ratio)
  patch = model.patch_size_

  def step(state: loop_lib.TrainState, teacher_params, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_mask, k_drop = jax.random.split(rng)
    scene, person = preprocess.student_views(batch, config.data.person_view,
                                             model.uses_person_view)
    omega, lam = teacher.targets(teacher_params, batch)
    target = vit.patchify(scene, patch)

    def loss_fn(params):
      pred, aux = model.apply({"params": params}, scene, person, mask_ratio, train=True,
                              rngs={"masking": k_mask, "dropout": k_drop})
      return losses.pretrain_losses(
          pred, aux, target, omega, lam, weights, norm_pix=config.loss.norm_pix,
          relation_groups=num_relation_groups, nce_temperature=config.loss.nce_temperature)

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


def compile_train_step(config, mesh, model, teacher: teacher_lib.Teacher, tx, lr_fn, state,
                       state_shardings, batch):
  """The step jitted with explicit shardings (state donated) and compiled ahead of time for
  `batch`'s shapes. Returns `(compiled, compile_info)`; call it as `compiled(state,
  teacher.params, batch)`."""
  groups = sharding.num_batch_shards(mesh) if config.loss.relation_scope == "local" else 1
  step = make_train_step(config, model, teacher, tx, lr_fn, groups)
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(step, in_shardings=(state_shardings, replicated,
                                       jax.tree.map(lambda x: x.sharding, batch)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return loop_lib.aot_compile(jitted, state, teacher.params, batch, name="pretrain step")


def peak_learning_rate(config) -> float:
  return config.optim.lr or optim.scaled_lr(config.optim.base_lr, config.batch_size)


def init_train_state(config, mesh, teacher_dim: int, total_steps: int, warmup_steps: int):
  """Model, optimizer and the train state created directly into its shardings.

  Returns `(model, tx, lr_fn, state, state_shardings)`.
  """
  model = build_model(config, teacher_dim)
  tx, lr_fn = optim.make_optimizer(
      config.optim, build.abstract_params(model, *_dummy_inputs(model)),
      peak_lr=peak_learning_rate(config), total_steps=total_steps, warmup_steps=warmup_steps)

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
  split = config.data.train_split
  source = builders.load_source(config.data.name, split, config.data.data_dir)
  steps_per_epoch = len(source) // config.batch_size
  total = loop_lib.total_steps(config, steps_per_epoch)
  warmup = loop_lib.warmup_steps(config, steps_per_epoch, total)
  run_info.write(workdir, config, {split: source})

  # ---------------------------------------------------------------------- teacher
  teacher = teacher_lib.Teacher.load(config, mesh, split, source)

  # ---------------------------------------------------------------------- model, optimizer
  # ---------------------------------------------------------------------- sharded init
  model, tx, lr_fn, state, state_shardings = init_train_state(config, mesh, teacher.dim, total,
                                                              warmup)
  logging.info("UniEmoX %s: %.1fM trainable parameters; teacher %s (frozen, not checkpointed)",
               config.model.variant,
               sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)) / 1e6,
               config.teacher.path)

  # ---------------------------------------------------------------------- restore
  keep_every = loop_lib.keep_period(config, steps_per_epoch)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep, keep_period=keep_every,
      async_save=config.checkpoint.async_save)
  begin = start.restore_or_initialize(config, checkpointer, state, state_shardings,
                                      target="pretrain")
  state = begin.state

  # ---------------------------------------------------------------------- data iterator
  transform = pipeline.PretrainTransform(
      image_size=config.model.image_size, tokenizer_path=teacher.pipeline_tokenizer(),
      scale=(config.data.scale_min, 1.0), person_view=config.data.person_view,
      caption_field=config.data.caption_field)
  ds = pipeline.train_dataset(source, transform, global_batch=config.batch_size,
                              seed=config.seed, shard=shard)
  grain_iter = pipeline.to_iter(ds, config.data.num_workers, config.data.read_threads)
  if begin.data_state:
    grain_iter.set_state(begin.data_state)
  batches = pipeline.BatchIterator(grain_iter, pipeline.make_global_fn(mesh, sharding.BATCH_AXES),
                                   prefetch=config.data.prefetch,
                                   extra_fn=teacher.host_batch_fn())

  # ---------------------------------------------------------------------- step function
  try:
    compiled, compile_info = compile_train_step(config, mesh, model, teacher, tx, lr_fn, state,
                                                state_shardings, batches.peek())
    writer = metrics_lib.MetricWriter(workdir, config.log.tensorboard)
    writer.write(begin.step, compile_info, prefix="compile/")
    # kNN / zero-shot on a held-out labelled subset every config.eval.every_steps (0: none).
    eval_fn = readout.pretrain_eval_fn(config, mesh, model, teacher, preemption, begin.step)

    # -------------------------------------------------------------------- loop
    loop = loop_lib.Loop(
        step_fn=lambda s, b: compiled(s, teacher.params, b), batches=batches,
        checkpointer=checkpointer, writer=writer, preemption=preemption, total_steps=total,
        global_batch=config.batch_size, steps_per_epoch=steps_per_epoch,
        save_every=config.checkpoint.every_steps, keep_every=keep_every,
        log_every=config.log.every_steps, eval_fn=eval_fn,
        eval_every=config.eval.every_steps, meta={"task": "pretrain"})
    logging.info("pre-training from step %d to %d (%d steps/epoch, warm-up %d steps, peak "
                 "lr %.3g)", begin.step, total, steps_per_epoch, warmup,
                 peak_learning_rate(config))
    state, status = loop.run(state, begin.step, eval_pending=begin.eval_pending)
  finally:
    batches.close()
    checkpointer.close()
  if status == "done":
    run_info.mark_done(workdir, {"task": "pretrain", "steps": total})
  return {"status": status, "step": int(jax.device_get(state.step))}


def _dummy_inputs(model: uniemox.UniEmoX, batch: int = 2):
  images = build.image_batch(model.image_size, batch)
  noise = jnp.zeros((batch, model.num_patches), jnp.float32)
  return images, images, float(0.75), noise, noise
