"""Linear probe over frozen encoder features.

1. The pre-trained encoder (MAE layout, final norm, fixed sin-cos positions) runs once over
   train/val/test with the evaluation transform; features (mean of patch tokens, or CLS) are
   cached in `<workdir>/features/` keyed by the weights, so a re-run skips this.
2. Features are standardised with the training statistics (MAE's affine-free BatchNorm in
   front of the head) and a linear head is trained with AdamW + cosine schedule.
3. The epoch with the best val top-1 is evaluated on test → `results.json`.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from uniemox_jax import metrics as metrics_lib, sharding, start
from uniemox_jax.data import builders
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.evaluators import classification, features as features_lib
from uniemox_jax.models import build, vit
from uniemox_jax.train import loop as loop_lib, optim, run_info


def build_encoder(config) -> vit.Encoder:
  m = config.model
  return vit.encoder_from_variant(m.variant, patch_size=m.patch_size, image_size=m.image_size,
                                  pos_embed="sincos", final_norm=True,
                                  dtype=vit.dtype_of(m.dtype), attention_impl=m.attention_impl)


def pooled_features(encoder: vit.Encoder, pool: str):
  """`(params, images) -> [B, D]`: the mean of the patch tokens (or the CLS token) after the
  encoder's final norm, float32."""

  def fn(params, images):
    tokens, _ = encoder.apply({"params": params}, images)
    tokens = tokens.astype(jax.numpy.float32)
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(axis=1)

  return fn


def run(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  class_names = class_names_for(config.data.name)
  encoder = build_encoder(config)
  abstract = build.abstract_params(encoder, build.image_batch(encoder.image_size, 1))
  params = start.load_weights_into(config.init, abstract, target="encoder", allow_new=False,
                                     mesh=mesh, config=config)
  splits = (config.data.train_split, config.data.val_split, config.data.test_split)
  sources = {s: builders.load_source(config.data.name, s, config.data.data_dir)
             for s in splits}
  manifest = run_info.write(workdir, config, sources)

  # ---------------------------------------------------------------------- features (cached)
  # Keyed by the weights actually read (a pre-training workdir that gained a checkpoint gives
  # new features), the model and transform settings, and the split's examples.
  # Process 0's fingerprint counts (file times may differ between hosts' copies), and every
  # process keeps its own copy of the (all-gathered) features: the extraction is a collective,
  # so it is skipped only when every process has the file.
  weights = loop_lib.same_on_all_processes(start.weights_fingerprint(config.init))
  feature_dir = os.path.join(workdir, "features")
  feature_fn = pooled_features(encoder, config.model.pool)
  data = {}
  for split in splits:
    digest = hashlib.sha256(json.dumps(
        [weights, config.model.to_dict(), config.data.eval_resize,
         manifest["splits"][split]]).encode()).hexdigest()[:16]
    path = os.path.join(feature_dir, f"{split}_{digest}.npz")
    if loop_lib.all_processes_agree(os.path.exists(path)):
      with np.load(path) as cached:
        data[split] = (cached["features"], cached["labels"])
      continue
    data[split] = features_lib.extract(config, mesh, feature_fn, params, split, preemption)
    if not os.path.exists(path):
      os.makedirs(feature_dir, exist_ok=True)
      tmp = f"{path}.{jax.process_index()}.tmp.npz"
      np.savez(tmp, features=data[split][0], labels=data[split][1])
      os.replace(tmp, path)
    logging.info("features of %s: %s", split, data[split][0].shape)

  # ---------------------------------------------------------------------- head training
  train_x, train_y = data[config.data.train_split]
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  standard = {k: ((x - mean) / std, y) for k, (x, y) in data.items()}
  num_classes = len(class_names)
  batch = min(config.batch_size, len(train_x))
  steps_per_epoch = max(1, len(train_x) // batch)
  total = loop_lib.total_steps(config, steps_per_epoch)
  warmup = loop_lib.warmup_steps(config, steps_per_epoch, total)
  peak_lr = config.optim.lr or optim.scaled_lr(config.optim.base_lr, batch)
  head = {"kernel": jnp.zeros((train_x.shape[1], num_classes)), "bias": jnp.zeros((num_classes,))}
  tx, lr_fn = optim.make_optimizer(config.optim, head, peak_lr=peak_lr, total_steps=total,
                                   warmup_steps=warmup)
  opt_state = tx.init(head)
  x_all, y_all = jnp.asarray(standard[config.data.train_split][0]), jnp.asarray(train_y)

  @jax.jit
  def train_epoch(head, opt_state, key):
    order = jax.random.permutation(key, x_all.shape[0])[:steps_per_epoch * batch]
    order = order.reshape(steps_per_epoch, batch)

    def one(carry, idx):
      head, opt_state = carry
      def loss_fn(h):
        logits = x_all[idx] @ h["kernel"] + h["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()
      loss, grads = jax.value_and_grad(loss_fn)(head)
      updates, opt_state = tx.update(grads, opt_state, head)
      return (optax.apply_updates(head, updates), opt_state), loss

    (head, opt_state), losses = jax.lax.scan(one, (head, opt_state), order)
    return head, opt_state, losses.mean()

  def evaluate(h, split):
    x, y = standard[split]
    logits = x @ np.asarray(h["kernel"]) + np.asarray(h["bias"])
    return classification.evaluate_logits(logits, y, class_names)

  epochs = max(1, total // steps_per_epoch)
  best = (-1.0, None, -1)
  key = jax.random.PRNGKey(config.seed)
  writer = metrics_lib.MetricWriter(workdir, config.log.tensorboard)
  for epoch in range(epochs):
    preemption.check("linear probe")
    head, opt_state, loss = train_epoch(head, opt_state, jax.random.fold_in(key, epoch))
    step = (epoch + 1) * steps_per_epoch
    row = {"loss": float(loss), "lr": float(lr_fn(step - 1)), "epoch": epoch + 1}
    if (epoch + 1) % max(1, int(config.eval.every_epochs)) == 0 or epoch + 1 == epochs:
      val = evaluate(head, config.data.val_split)
      if val["top1"] > best[0]:
        best = (val["top1"], jax.device_get(head), epoch + 1)
      row.update(val_top1=val["top1"], val_top3=val["top3"])
      logging.info("linear probe epoch %d: loss %.4f, val top-1 %.4f", epoch + 1, float(loss),
                   val["top1"])
    writer.write(step, row, prefix="probe/")
  test = evaluate(best[1], config.data.test_split)
  writer.write(epochs * steps_per_epoch, {"test_top1": test["top1"], "test_top3": test["top3"]},
               prefix="test/")
  writer.close()
  results = {"dataset": config.data.name, "best_epoch": best[2], "val_top1": best[0],
             "test_top1": test["top1"], "test_top3": test["top3"],
             "test_num_examples": test["num_examples"],
             # macro-F1, per-class recall, ECE, Mikels metrics, the whole report
             **classification.results_metrics(test, "test_")}
  if jax.process_index() == 0:
    test_x, test_y = standard[config.data.test_split]
    test_probs = classification.softmax(test_x @ np.asarray(best[1]["kernel"])
                                        + np.asarray(best[1]["bias"]))
    classification.write_metrics(test, os.path.join(workdir, "eval", "test_best"),
                                 (test_probs, test_y),
                                 title=f"linear probe, {config.data.name} test (best val)")
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
    run_info.mark_done(workdir, results)
  logging.info("linear probe: best val top-1 %.4f (epoch %d); test top-1 %.4f, top-3 %.4f",
               best[0], best[2], test["top1"], test["top3"])
  return dict(results, status="done")
