"""Fine-tuning, evaluation and linear probing on the emotion benchmarks (SPEC §4).

Fine-tuning: encoder → mean of patch tokens → LayerNorm → Linear, all weights trained, with
Mixup/CutMix + label smoothing on the device, layer-wise lr decay and drop path. Every
`eval.every_epochs` the model is evaluated on val; the checkpoint with the best val top-1 is
kept (besides the latest) and evaluated on test at the end → `results.json`.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from uniemox_jax import checkpointing, evaluate as evaluate_lib, metrics as metrics_lib, sharding
from uniemox_jax.data import mixup, pipeline
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.models import classifier, vit
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train import optim, run_info, startup
from uniemox_jax.train.common import (IMAGENET_MEAN, IMAGENET_STD, abstract_params, dtype_of,
                                      image_batch, keep_period, load_split, normalize)


def build_classifier(config) -> classifier.ViTClassifier:
  m = config.model
  return classifier.ViTClassifier(
      variant=m.variant, num_classes=m.num_classes, image_size=m.image_size,
      patch_size=m.patch_size or None, drop_path_rate=m.drop_path_rate,
      dtype=dtype_of(m.dtype), remat=m.remat, attention_impl=m.attention_impl)


def make_train_step(config, model: classifier.ViTClassifier, tx, lr_fn):
  mix = config.mixup
  num_classes = config.model.num_classes

  def step(state: loop_lib.TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_mix, k_drop = jax.random.split(rng)
    images = normalize(batch["image"], IMAGENET_MEAN, IMAGENET_STD)
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


def make_eval_step(apply_logits, num_classes: int):
  """`(params, batch) -> {'confusion' [K, K], 'top3_hits', 'count'}` (replicated outputs, so
  every host can read them; padding rows have `valid = False` and count nothing)."""
  k = min(3, num_classes)

  def step(params, batch):
    logits = apply_logits(params, normalize(batch["image"], IMAGENET_MEAN, IMAGENET_STD))
    valid = batch["valid"].astype(jnp.float32)
    labels = batch["label"]
    top = jax.lax.top_k(logits, k)[1]
    truth = jax.nn.one_hot(labels, num_classes) * valid[:, None]
    pred = jax.nn.one_hot(top[:, 0], num_classes)
    hits = jnp.sum(jnp.any(top == labels[:, None], axis=1) * valid)
    return {"confusion": (truth.T @ pred).astype(jnp.int32), "top3_hits": hits.astype(jnp.int32),
            "count": jnp.sum(valid).astype(jnp.int32)}

  return step


class Evaluator:
  """Runs the compiled eval step over a split; each example counted exactly once."""

  def __init__(self, config, mesh, eval_step, split: str, preemption, class_names):
    self.split = split
    self.source = load_split(config, split)
    self.class_names = class_names
    self.num_classes = len(class_names)
    self.preemption = preemption
    self.batch = config.eval.batch_size
    if self.batch % sharding.num_batch_shards(mesh):
      raise ValueError(f"config.eval.batch_size={self.batch} must be a multiple of the "
                       f"{sharding.num_batch_shards(mesh)} batch shards")
    transform = pipeline.EvalTransform(config.model.image_size, config.data.eval_resize)
    self.shard = pipeline.Sharding.from_jax()
    self.dataset = pipeline.eval_dataset(self.source, transform, global_batch=self.batch,
                                         shard=self.shard)
    self.num_workers = config.data.num_workers
    self.to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
    self.step = jax.jit(eval_step, out_shardings=sharding.replicated(mesh))

  def __call__(self, params) -> dict:
    start = time.perf_counter()
    acc = np.zeros((self.num_classes, self.num_classes), np.int64)
    hits = count = 0
    for local in pipeline.to_iter(self.dataset, self.num_workers):
      self.preemption.check("evaluation")
      out = jax.device_get(self.step(params, self.to_global(local)))
      acc += out["confusion"]
      hits += int(out["top3_hits"])
      count += int(out["count"])
    if count != len(self.source):
      raise AssertionError(f"evaluation saw {count} examples of {len(self.source)}")
    accumulator = evaluate_lib.Accumulator(self.num_classes)
    accumulator.confusion, accumulator.top3_hits, accumulator.count = acc, hits, count
    result = accumulator.result(self.class_names)
    result["eval_seconds"] = time.perf_counter() - start
    return result


def _summary(result: dict) -> dict:
  return {"top1": result["top1"], "top3": result["top3"], "num_examples": result["num_examples"]}


def run(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  # ---------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  shard = pipeline.Sharding.from_jax()

  # ---------------------------------------------------------------------- data
  source = load_split(config, config.data.train_split)
  class_names = class_names_for(config.data.name)
  if len(class_names) != config.model.num_classes:
    raise ValueError(f"config.model.num_classes={config.model.num_classes} but "
                     f"{config.data.name} has {len(class_names)} classes")
  steps_per_epoch = len(source) // config.batch_size
  total = loop_lib.total_steps(config, steps_per_epoch)
  warmup = loop_lib.warmup_steps(config, steps_per_epoch, total)
  run_info.write(workdir, config, {
      config.data.train_split: source,
      **{s: load_split(config, s) for s in (config.data.val_split, config.data.test_split)}})

  # ---------------------------------------------------------------------- model, optimizer
  model = build_classifier(config)
  depth = vit.get_variant(config.model.variant).depth
  peak_lr = config.optim.lr or optim.scaled_lr(config.optim.base_lr, config.batch_size)
  dummy = image_batch(model.image_size)
  tx, lr_fn = optim.make_optimizer(config.optim, abstract_params(model, dummy), peak_lr=peak_lr,
                                   total_steps=total, warmup_steps=warmup, depth=depth)

  def init_fn(rng):
    params = model.init(rng, dummy)["params"]
    return loop_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=rng)

  state, state_shardings = loop_lib.create_sharded_state(
      init_fn, jax.random.PRNGKey(config.seed), mesh, config.mesh.min_shard_size)

  # ---------------------------------------------------------------------- restore
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_period=keep_period(config, steps_per_epoch),
      keep_best=config.checkpoint.keep_best, best_metric="val_top1",
      async_save=config.checkpoint.async_save)
  start = startup.restore_or_initialize(config, checkpointer, state, state_shardings,
                                        target="finetune")
  state = start.state

  # ---------------------------------------------------------------------- data iterator
  transform = pipeline.FinetuneTransform(
      config.model.image_size, scale=(config.data.scale_min, 1.0),
      rand_augment=config.data.rand_augment or None, erase_prob=config.data.erase_prob)
  ds = pipeline.train_dataset(source, transform, global_batch=config.batch_size,
                              seed=config.seed, shard=shard)
  grain_iter = pipeline.to_iter(ds, config.data.num_workers, config.data.read_threads or None)
  if start.data_state:
    grain_iter.set_state(start.data_state)
  batches = pipeline.BatchIterator(grain_iter, pipeline.make_global_fn(mesh, sharding.BATCH_AXES),
                                   prefetch=config.data.prefetch)

  # ---------------------------------------------------------------------- steps, evaluator
  apply_logits = lambda p, x: model.apply({"params": p}, x)[0]
  evaluator = Evaluator(config, mesh, make_eval_step(apply_logits, len(class_names)),
                        config.data.val_split, preemption, class_names)
  eval_dir = os.path.join(workdir, "eval")

  def eval_fn(s, step):
    result = evaluator(s.params)
    if jax.process_index() == 0:
      evaluate_lib.write_confusion(result, os.path.join(eval_dir, f"val_step{step}"))
    out = _summary(result)
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
    writer.write(start.step, compile_info, prefix="compile/")
    eval_every = max(1, int(round(config.eval.every_epochs * steps_per_epoch)))
    loop = loop_lib.Loop(
        step_fn=compiled, batches=batches, checkpointer=checkpointer, writer=writer,
        preemption=preemption, total_steps=total, global_batch=config.batch_size,
        steps_per_epoch=steps_per_epoch, save_every=config.checkpoint.every_steps,
        keep_every=keep_period(config, steps_per_epoch),
        log_every=config.log.every_steps, eval_fn=eval_fn, eval_every=eval_every,
        meta={"task": "finetune"})
    logging.info("fine-tuning from step %d to %d (%d steps/epoch, eval every %d steps)",
                 start.step, total, steps_per_epoch, eval_every)
    state, status = loop.run(state, start.step, eval_pending=start.eval_pending)
    if status != "done":
      return {"status": status, "step": int(jax.device_get(state.step))}

    # ------------------------------------------------------------------ best → test
    best = checkpointer.best_step() or checkpointer.latest_step()
    restored = checkpointer.restore(loop_lib.abstract_state(state, state_shardings), step=best,
                                    fallback=False)
    test_eval = Evaluator(config, mesh, make_eval_step(apply_logits, len(class_names)),
                          config.data.test_split, preemption, class_names)
    test = test_eval(restored.state.params)
    results = {
        "dataset": config.data.name, "best_step": int(best),
        "best_epoch": best / max(steps_per_epoch, 1),
        "val_top1": (checkpointer.metrics(best) or {}).get("val_top1"),
        "test_top1": test["top1"], "test_top3": test["top3"],
        "test_num_examples": test["num_examples"],
        "test_per_class_accuracy": test["per_class_accuracy"],
    }
    if jax.process_index() == 0:
      evaluate_lib.write_confusion(test, os.path.join(eval_dir, "test_best"))
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


def run_eval(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  """Evaluates the classifier weights in `config.init` on `config.eval.split`."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  class_names = class_names_for(config.data.name)
  model = build_classifier(config)
  abstract = abstract_params(model, image_batch(model.image_size))
  params = startup.load_weights_into(config.init, abstract, target="finetune",
                                     allow_new=False, mesh=mesh, config=config)
  split = config.eval.split
  run_info.write(workdir, config, {split: load_split(config, split)})
  evaluator = Evaluator(config, mesh, make_eval_step(
      lambda p, x: model.apply({"params": p}, x)[0], len(class_names)), split, preemption,
      class_names)
  result = evaluator(params)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    evaluate_lib.write_confusion(result, os.path.join(workdir, "eval", f"{split}"))
    with open(os.path.join(workdir, f"results_eval_{split}.json"), "w") as f:
      json.dump(dict(_summary(result), checkpoint=config.init, split=split), f, indent=1)
  logging.info("%s on %s: top-1 %.4f, top-3 %.4f (%d examples)", config.init, split,
               result["top1"], result["top3"], result["num_examples"])
  return dict(_summary(result), status="done")
