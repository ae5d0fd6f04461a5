"""The `eval` task: the classifier weights in `config.init` (a fine-tuning workdir or
checkpoint, or a PyTorch classifier) evaluated on `config.eval.split` →
`<workdir>/results_eval_<split>.json` and `<workdir>/eval/<split>.{json,png}`."""
from __future__ import annotations

import json
import os

import jax
from absl import logging

from uniemox_jax import sharding, start
from uniemox_jax.data import builders
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.evaluators import classification
from uniemox_jax.models import build
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train import finetune, run_info


def run(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  class_names = class_names_for(config.data.name)
  model = finetune.build_classifier(config)
  abstract = build.abstract_params(model, build.image_batch(model.image_size))
  params = start.load_weights_into(config.init, abstract, target="finetune", allow_new=False,
                                   mesh=mesh, config=config)
  split = config.eval.split
  run_info.write(workdir, config,
                 {split: builders.load_source(config.data.name, split, config.data.data_dir)})
  evaluator = classification.Evaluator(config, mesh, lambda p, x: model.apply({"params": p}, x)[0],
                                       split, preemption, class_names)
  result = evaluator(params)
  summary = classification.summary(result)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    classification.write_confusion(result, os.path.join(workdir, "eval", f"{split}"))
    with open(os.path.join(workdir, f"results_eval_{split}.json"), "w") as f:
      json.dump(dict(summary, checkpoint=config.init, split=split), f, indent=1)
  logging.info("%s on %s: top-1 %.4f, top-3 %.4f (%d examples)", config.init, split,
               result["top1"], result["top3"], result["num_examples"])
  return dict(summary, status="done")
