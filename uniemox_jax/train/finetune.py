"""Fine-tuning on the emotion benchmarks (docs/method.md §4).

Fine-tuning: encoder → mean of patch tokens → LayerNorm → Linear, all weights trained, with
Mixup/CutMix + label smoothing on the device, layer-wise lr decay and drop path. Every
`eval.every_epochs` the model is evaluated on val; the checkpoint with the best val top-1 is
kept (besides the latest) and evaluated on test at the end → `results.json`.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import optax
from absl import logging

from uniemox_jax import checkpointing, metrics as metrics_lib, preprocess, sharding, start
from uniemox_jax.data import builders, mixup, pipeline
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.evaluators import classification
from uniemox_jax.models import build, classifier, vit
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train import optim, run_info


def build_classifier(config) -> classifier.ViTClassifier:
  return build.from_config(classifier.ViTClassifier, config.model)


def make_train_step(config, model: classifier.ViTClassifier, tx, lr_fn):
  mix = config.mixup
  num_classes = config.model.num_classes

  def step(state: loop_lib.TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_mix, k_drop = jax.random.split(rng)
    images = preprocess.student_pixels(batch["image"])
    images, targets = mixup.mixup_cutmix(
        k_mix, images, batch["label"], num_classes=num_classes, mixup_alpha=mix.mixup_alpha,
        cutmix_alpha=mix.cutmix_alpha, prob=mix.prob, switch_prob=mix.switch_prob,
        label_smoothing=mix.label_smoothing)

    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": k_drop})
      return mixup.soft_cross_entropy(logits, targets), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params), "mixed_top1": accuracy}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def run(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  # ---------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  shard = pipeline.Sharding.from_jax()

  # ---------------------------------------------------------------------- data
  source = _source(config, config.data.train_split)
  class_names = class_names_for(config.data.name)
  if len(class_names) != config.model.num_classes:
    raise ValueError(f"config.model.num_classes={config.model.num_classes} but "
                     f"{config.data.name} has {len(class_names)} classes")
  steps_per_epoch = len(source) // config.batch_size
  total = loop_lib.total_steps(config, steps_per_epoch)
  warmup = loop_lib.warmup_steps(config, steps_per_epoch, total)
  run_info.write(workdir, config, {
      config.data.train_split: source,
      **{s: _source(config, s) for s in (config.data.val_split, config.data.test_split)}})

  # ---------------------------------------------------------------------- model, optimizer
  model = build_classifier(config)
  depth = vit.get_variant(config.model.variant).depth
  peak_lr = config.optim.lr or optim.scaled_lr(config.optim.base_lr, config.batch_size)
  dummy = build.image_batch(model.image_size)
  tx, lr_fn = optim.make_optimizer(config.optim, build.abstract_params(model, dummy),
                                   peak_lr=peak_lr, total_steps=total, warmup_steps=warmup,
                                   depth=depth)

  def init_fn(rng):
    params = model.init(rng, dummy)["params"]
    return loop_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=rng)

  state, state_shardings = loop_lib.create_sharded_state(
      init_fn, jax.random.PRNGKey(config.seed), mesh, config.mesh.min_shard_size)

  # ---------------------------------------------------------------------- restore
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_period=loop_lib.keep_period(config, steps_per_epoch),
      keep_best=config.checkpoint.keep_best, best_metric="val_top1",
      async_save=config.checkpoint.async_save)
  begin = start.restore_or_initialize(config, checkpointer, state, state_shardings,
                                      target="finetune")
  state = begin.state

  # ---------------------------------------------------------------------- data iterator
  transform = pipeline.FinetuneTransform(
      config.model.image_size, scale=(config.data.scale_min, 1.0),
      rand_augment=config.data.rand_augment or None, erase_prob=config.data.erase_prob)
  ds = pipeline.train_dataset(source, transform, global_batch=config.batch_size,
                              seed=config.seed, shard=shard)
  grain_iter = pipeline.to_iter(ds, config.data.num_workers, config.data.read_threads or None)
  if begin.data_state:
    grain_iter.set_state(begin.data_state)
  batches = pipeline.BatchIterator(grain_iter, pipeline.make_global_fn(mesh, sharding.BATCH_AXES),
                                   prefetch=config.data.prefetch)

  # ---------------------------------------------------------------------- steps, evaluator
  apply_logits = lambda p, x: model.apply({"params": p}, x)[0]
  evaluator = classification.Evaluator(config, mesh, apply_logits, config.data.val_split,
                                       preemption, class_names)
  eval_dir = os.path.join(workdir, "eval")

  def eval_fn(s, step):
    result = evaluator(s.params)
    if jax.process_index() == 0:
      classification.write_confusion(result, os.path.join(eval_dir, f"val_step{step}"))
    out = classification.summary(result)
    out["val_top1"] = out["top1"]
    return out

  try:
    first = batches.peek()
    jitted = jax.jit(make_train_step(config, model, tx, lr_fn),
                     in_shardings=(state_shardings, jax.tree.map(lambda x: x.sharding, first)),
                     out_shardings=(state_shardings, sharding.replicated(mesh)),
                     donate_argnums=(0,))
    compiled, compile_info = loop_lib.aot_compile(jitted, state, first, name="finetune step")
    writer = metrics_lib.MetricWriter(workdir, config.log.tensorboard)
    writer.write(begin.step, compile_info, prefix="compile/")
    eval_every = max(1, int(round(config.eval.every_epochs * steps_per_epoch)))
    loop = loop_lib.Loop(
        step_fn=compiled, batches=batches, checkpointer=checkpointer, writer=writer,
        preemption=preemption, total_steps=total, global_batch=config.batch_size,
        steps_per_epoch=steps_per_epoch, save_every=config.checkpoint.every_steps,
        keep_every=loop_lib.keep_period(config, steps_per_epoch),
        log_every=config.log.every_steps, eval_fn=eval_fn, eval_every=eval_every,
        meta={"task": "finetune"})
    logging.info("fine-tuning from step %d to %d (%d steps/epoch, eval every %d steps)",
                 begin.step, total, steps_per_epoch, eval_every)
    state, status = loop.run(state, begin.step, eval_pending=begin.eval_pending)
    if status != "done":
      return {"status": status, "step": int(jax.device_get(state.step))}

    # ------------------------------------------------------------------ best → test
    best = checkpointer.best_step() or checkpointer.latest_step()
    restored = checkpointer.restore(loop_lib.abstract_state(state, state_shardings), step=best,
                                    fallback=False)
    test_eval = classification.Evaluator(config, mesh, apply_logits, config.data.test_split,
                                         preemption, class_names)
    test = test_eval(restored.state.params)
    results = {
        "dataset": config.data.name, "best_step": int(best),
        "best_epoch": best / max(steps_per_epoch, 1),
        "val_top1": (checkpointer.metrics(best) or {}).get("val_top1"),
        "test_top1": test["top1"], "test_top3": test["top3"],
        "test_num_examples": test["num_examples"],
        "test_per_class_accuracy": test["per_class_accuracy"],
        # macro-F1, per-class recall, ECE, Mikels metrics, the whole report
        **classification.results_metrics(test, "test_"),
    }
    if jax.process_index() == 0:
      classification.write_metrics(test, os.path.join(eval_dir, "test_best"),
                                   test_eval.last_probabilities,
                                   title=f"fine-tuned, {config.data.name} test (best val)")
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    writer.write(total, {"test_top1": test["top1"], "test_top3": test["top3"]}, prefix="test/")
    writer.close()
    logging.info("best val top-1 %.4f at step %d (epoch %.1f); test top-1 %.4f, top-3 %.4f",
                 results["val_top1"] or float("nan"), best, results["best_epoch"],
                 test["top1"], test["top3"])
    run_info.mark_done(workdir, results)
    return dict(results, status="done")
  finally:
    batches.close()
    checkpointer.close()


def _source(config, split: str):
  return builders.load_source(config.data.name, split, config.data.data_dir)
