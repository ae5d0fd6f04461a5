"""Frozen features of a split: one forward pass per image with the evaluation transform
(resize + centre crop), every example exactly once, gathered from every process in source
order. The linear probe and the kNN / zero-shot read-outs start here."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from uniemox_jax import preprocess, sharding
from uniemox_jax.data import builders, pipeline


def extract(config, mesh, features_fn: Callable, params, split: str, preemption
            ) -> tuple[np.ndarray, np.ndarray]:
  """Features `[N, D]` float32 and labels `[N]` of `split`, in source order.

  `features_fn(params, images)` maps ImageNet-normalised float images `[B, S, S, 3]` to
  `[B, D]`; it is jitted here.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  source = builders.load_source(config.data.name, split, config.data.data_dir)
  ds = pipeline.eval_dataset(
      source, pipeline.EvalTransform(config.model.image_size, config.data.eval_resize),
      global_batch=config.eval.batch_size, shard=pipeline.Sharding.from_jax())
  to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
  fn = jax.jit(lambda p, images: features_fn(p, preprocess.student_pixels(images)))
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  feats, labels, index = [], [], []
  for local in pipeline.to_iter(ds, config.data.num_workers):
    preemption.check("feature extraction")
    out = fn(params, to_global({"image": local["image"]})["image"])
    valid = gather(local["valid"])
    feats.append(np.asarray(gather(out), np.float32)[valid])
    labels.append(gather(local["label"])[valid])
    index.append(gather(local["index"])[valid])
  order = np.argsort(np.concatenate(index))
  return np.concatenate(feats)[order], np.concatenate(labels)[order]
