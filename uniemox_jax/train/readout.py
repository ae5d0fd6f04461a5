"""Read-outs of a pre-trained checkpoint without training it: the `knn` and `zeroshot` tasks,
and the in-training kNN / zero-shot evaluation of pre-training (`pretrain_eval_fn`).

knn       frozen features (the encoder's mean patch token by default, its CLS token, or the
          student token γ) of the train split form the memory bank; val and test images are
          classified by a cosine, temperature-weighted vote of their k nearest neighbours
          (`evaluators.knn`, k = 20, T = 0.07). Any encoder checkpoint works (UniEmoX, MAE).
zeroshot  the student token γ against prompt embeddings of the teacher's text tower
          (`evaluators.zeroshot`), next to the teacher's own zero-shot (CLIP's image tower on
          the same images); needs UniEmoX weights (γ), not an MAE checkpoint. The caption
          template alone and the prompt ensemble are both scored; test numbers are those of
          the setting with the better val top-1 (chosen separately for student and teacher).

Each writes `<workdir>/results.json` (`test_top1`, `test_top3`, `test_num_examples`, the flat
metric keys of `classification.results_metrics` and more), `eval/{val,test}.{json,png}` and
`eval/test_reliability.png`, and `done.json`.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from uniemox_jax import metrics as metrics_lib, sharding, start
from uniemox_jax.data import builders
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.evaluators import classification, features as features_lib, knn, zeroshot
from uniemox_jax.models import build, clip, uniemox, vit
from uniemox_jax.train import linear_probe, loop as loop_lib, run_info
from uniemox_jax.weights import files as weight_files
from uniemox_jax.weights import mae as mae_weights

# `config.model` keys a pre-training run's own config decides when `model.fusion='auto'`.
FROM_PRETRAINING = ("fusion", "fusion_heads", "decoder_width", "decoder_depth", "decoder_heads")
README_EVAL = "README.md, section 'Evaluation'"


class ReadoutError(start.StartingPointError):
  """`config.init` cannot give what the read-out needs (e.g. zero-shot from an MAE file)."""


# --------------------------------------------------------------------------------------------
# The student (UniEmoX) from config.init.


def pretraining_config(path: str) -> dict | None:
  """The resolved config that one of our pre-training runs recorded in its `run_info.json`
  (None when `path` is not such a run or recorded none)."""
  if not start.is_our_checkpoint(path):
    return None
  directory, _ = start.checkpoint_location(path)
  for folder in (os.path.dirname(directory), directory):
    info = os.path.join(folder, "run_info.json")
    if os.path.isfile(info):
      try:
        with open(info) as f:
          return json.load(f).get("config")
      except (OSError, ValueError):
        return None
  return None


def resolve_student_config(config, need_fusion: bool):
  """A copy of `config` whose `model.fusion` (and, from a run of ours, the decoder sizes) is
  the checkpoint's when it is `'auto'`: a run of ours records its config; a released UniEmoX
  file names its fusion by its `att_fusion` keys. Raises `ReadoutError` when `need_fusion`
  and `config.init` has no UniEmoX student token (an MAE checkpoint, a classifier)."""
  config = copy.deepcopy(config)
  path, model = config.init, config.model
  what = f"config.init={path!r}"
  if start.is_our_checkpoint(path):
    kind, desc = start.peek_kind(path)
    if kind != "pretrain":
      raise ReadoutError(
          f"{what} ({desc}) is {start.KIND_NAMES[kind]}: the student token γ needs UniEmoX "
          "pre-training weights (one of our pre-training runs or a released UniEmoX .pth); "
          f"with an encoder alone use the knn read-out or the linear probe ({README_EVAL})")
    recorded = (pretraining_config(path) or {}).get("model", {})
    if model.fusion == "auto":
      for key in FROM_PRETRAINING:
        if key in recorded and key in model:
          model[key] = recorded[key]
      if model.fusion == "auto":
        model.fusion = "easyfusion"
    return config
  groups = weight_files.read(path).groups
  fusion_sd = groups.get("att_fusion")
  if not fusion_sd and need_fusion and model.fusion != "none":
    raise ReadoutError(
        f"{what} has no 'att_fusion' (fusion module) entry: it is an MAE (or other encoder) "
        "checkpoint, which has no student token γ. Zero-shot needs UniEmoX pre-training weights "
        "with their fusion: one of our pre-training runs or a released UniEmoX .pth. An MAE "
        "checkpoint allows the knn read-out (configs/readout.py:<dataset>,kind=knn) and the "
        f"linear probe ({README_EVAL})")
  if model.fusion == "auto":
    model.fusion = mae_weights.detect_fusion(weight_files.clean(fusion_sd))[0] if fusion_sd \
        else "none"
  return config


def load_student(config, mesh, teacher_dim: int) -> tuple[uniemox.UniEmoX, dict]:
  """The UniEmoX model and its parameters from `config.init` (resolved config: see
  `resolve_student_config`), replicated over `mesh`."""
  model = build.from_config(uniemox.UniEmoX, config.model, teacher_dim=teacher_dim)
  images = build.image_batch(model.image_size)
  noise = jax.numpy.zeros((images.shape[0], model.num_patches))
  abstract = build.abstract_params(model, images, images, 0.75, noise, noise)
  params = start.load_weights_into(config.init, abstract, target="pretrain", allow_new=False,
                                   mesh=mesh, config=config)
  return model, params


# --------------------------------------------------------------------------------------------
# Writing results.


def _write_split(result: dict, probs, labels, path_prefix: str, title: str) -> None:
  if jax.process_index() == 0:
    classification.write_metrics(result, path_prefix, (probs, labels), title=title)


def _finish(workdir: str, results: dict) -> dict:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
  run_info.mark_done(workdir, {k: results[k] for k in ("dataset", "readout", "test_top1",
                                                       "test_top3", "test_num_examples")})
  return dict(results, status="done")


def _headline(result: dict, prefix: str) -> dict:
  return {f"{prefix}top1": result["top1"], f"{prefix}top3": result["top3"],
          f"{prefix}num_examples": result["num_examples"]}


# --------------------------------------------------------------------------------------------
# The kNN task.


def run_knn(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  class_names = class_names_for(config.data.name)
  d = config.data
  splits = (d.train_split, d.val_split, d.test_split)
  sources = {s: builders.load_source(d.name, s, d.data_dir) for s in splits}
  feature = config.knn.feature
  begin = time.perf_counter()
  if feature == "gamma":
    config = resolve_student_config(config, need_fusion=False)
    # No teacher is loaded: γ's width (the teacher's, through `teacher_proj` when it differs
    # from the decoder width) is read from the checkpoint.
    model, params = load_student(config, mesh, _gamma_width(config))
    fn = zeroshot.student_features_fn(model, ("gamma",), d.person_view)
    transform = zeroshot.ViewsTransform(config.model.image_size, d.eval_resize,
                                        person=model.uses_person_view, person_view=d.person_view)
    feats = {}
    for s in splits:
      out, host = zeroshot.extract(sources[s], transform, fn, params, mesh,
                                   batch_size=config.eval.batch_size,
                                   num_workers=d.num_workers, preemption=preemption)
      feats[s] = (out["gamma"], host["label"])
  else:
    encoder = linear_probe.build_encoder(config)
    abstract = build.abstract_params(encoder, build.image_batch(encoder.image_size, 1))
    params = start.load_weights_into(config.init, abstract, target="encoder", allow_new=False,
                                     mesh=mesh, config=config)
    fn = linear_probe.pooled_features(encoder, feature)
    feats = {s: features_lib.extract(config, mesh, fn, params, s, preemption) for s in splits}
  manifest = run_info.write(workdir, config, sources)
  extract_s = time.perf_counter() - begin

  bank, bank_labels = feats[d.train_split]
  out = {}
  for split in (d.val_split, d.test_split):
    x, y = feats[split]
    result, probs = knn.knn_evaluate(bank, bank_labels, x, y, class_names, config.knn.k,
                                     config.knn.temperature)
    out[split] = result
    _write_split(result, probs, y, os.path.join(workdir, "eval", split),
                 f"kNN ({feature}, k={config.knn.k}) on {config.data.name} {split}")
  val, test = out[d.val_split], out[d.test_split]
  results = {"dataset": d.name, "readout": "knn", "feature": feature, "k": int(config.knn.k),
             "temperature": float(config.knn.temperature), "bank_split": d.train_split,
             "bank_size": int(len(bank_labels)), "feature_dim": int(bank.shape[1]),
             "init": config.init, "val_top1": val["top1"], "val_top3": val["top3"],
             **_headline(test, "test_"), **classification.results_metrics(test, "test_"),
             "test_split_sha256": manifest["splits"][d.test_split]["ids_sha256"],
             "extract_seconds": extract_s}
  _log_metrics(workdir, config, {"knn_val_top1": val["top1"], "knn_test_top1": test["top1"],
                                 "knn_test_top3": test["top3"]})
  logging.info("kNN (%s, k=%d, T=%g) on %s: val top-1 %.4f; test top-1 %.4f, top-3 %.4f "
               "(%d images)", feature, config.knn.k, config.knn.temperature, d.name,
               val["top1"], test["top1"], test["top3"], test["num_examples"])
  return _finish(workdir, results)


def _gamma_width(config) -> int:
  """The width of γ in `config.init`: `teacher_proj`'s output when it has one, else the
  decoder width."""
  if start.is_our_checkpoint(config.init):
    params, _ = start.read_params(config.init, prefer_best=False)
    if "teacher_proj" in params:
      return int(np.shape(params["teacher_proj"]["kernel"])[1])
  m = config.model
  return int(m.decoder_width or vit.get_variant(m.variant).decoder_width)


# --------------------------------------------------------------------------------------------
# The zero-shot task.


def prompt_settings(zs_config) -> dict[str, tuple[str, ...]]:
  """`{'caption': (caption template,), 'ensemble': templates}` from `config.zeroshot`."""
  return {"caption": (zs_config.caption_template,), "ensemble": tuple(zs_config.ensemble)}


def run_zeroshot(config, workdir: str, preemption: loop_lib.Preemption) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  class_names = class_names_for(config.data.name)
  d, t = config.data, config.teacher
  config = resolve_student_config(config, need_fusion=True)
  module, teacher_params = clip.load_clip(t.path, dtype=vit.dtype_of(t.dtype))
  teacher_params = jax.device_put(teacher_params, sharding.replicated(mesh))
  model, params = load_student(config, mesh, module.spec.projection_dim)
  splits = (d.val_split, d.test_split)
  sources = {s: builders.load_source(d.name, s, d.data_dir) for s in splits}
  manifest = run_info.write(workdir, config, sources)

  # ---------------------------------------------------------------- prompts → class embeddings
  encode = zeroshot.text_encoder(module, teacher_params, t.tokenizer or t.path)
  settings = prompt_settings(config.zeroshot)
  class_emb = {name: zeroshot.class_embeddings(encode, class_names, templates)
               for name, templates in settings.items()}
  scale = config.zeroshot.logit_scale or zeroshot.teacher_logit_scale(teacher_params)

  # ---------------------------------------------------------------- image embeddings
  student_fn = zeroshot.student_features_fn(model, ("gamma",), d.person_view)
  teacher_fn = zeroshot.teacher_image_fn(module, t.input_norm)
  with_teacher = bool(config.zeroshot.teacher)

  def fn(both, batch):
    out = student_fn(both["student"], batch)
    if with_teacher:
      out.update(teacher_fn(both["teacher"], batch))
    return out

  transform = zeroshot.ViewsTransform(config.model.image_size, d.eval_resize,
                                      person=model.uses_person_view, person_view=d.person_view)
  begin = time.perf_counter()
  embedded = {s: zeroshot.extract(sources[s], transform, fn,
                                  {"student": params, "teacher": teacher_params}, mesh,
                                  batch_size=config.eval.batch_size, num_workers=d.num_workers,
                                  preemption=preemption) for s in splits}
  extract_s = time.perf_counter() - begin

  # ---------------------------------------------------------------- scoring, best-val setting
  who = {"student": "gamma"} | ({"teacher": "teacher"} if with_teacher else {})
  order = list(settings)
  scored: dict[str, dict[str, dict]] = {}
  summary: dict[str, dict] = {}
  for reader, key in who.items():
    scored[reader] = {}
    for setting in order:
      per_split = {}
      for split in splits:
        out, host = embedded[split]
        result, probs = zeroshot.zeroshot_evaluate(out[key], host["label"], class_emb[setting],
                                                   class_names, scale)
        per_split[split] = (result, probs, host["label"])
      scored[reader][setting] = per_split
    best = zeroshot.best_setting({s: scored[reader][s][d.val_split][0] for s in order}, order)
    summary[reader] = {"setting": best, **{
        s: {f"{split}_top1": scored[reader][s][split][0]["top1"] for split in splits}
        | {f"{split}_top3": scored[reader][s][split][0]["top3"] for split in splits}
        for s in order}}
    for split in splits:
      result, probs, labels = scored[reader][best][split]
      name = split if reader == "student" else f"teacher_{split}"
      _write_split(result, probs, labels, os.path.join(workdir, "eval", name),
                   f"zero-shot ({reader}, {best} prompts) on {d.name} {split}")

  def best_result(reader: str, split: str) -> dict:
    return scored[reader][summary[reader]["setting"]][split][0]

  test, val = best_result("student", d.test_split), best_result("student", d.val_split)
  host_test = embedded[d.test_split][1]
  results = {
      "dataset": d.name, "readout": "zeroshot", "token": "gamma", "init": config.init,
      "fusion": config.model.fusion, "prompt_setting": summary["student"]["setting"],
      "prompts": {s: list(v) for s, v in settings.items()}, "logit_scale": float(scale),
      "val_top1": val["top1"], "val_top3": val["top3"],
      **_headline(test, "test_"), **classification.results_metrics(test, "test_"),
      "test_person_views": int(np.sum(host_test.get("has_person", np.zeros(0, bool)))),
      "settings": summary,
      "test_split_sha256": manifest["splits"][d.test_split]["ids_sha256"],
      "extract_seconds": extract_s,
  }
  if with_teacher:
    tt, tv = best_result("teacher", d.test_split), best_result("teacher", d.val_split)
    results.update({"teacher_prompt_setting": summary["teacher"]["setting"],
                    "teacher_val_top1": tv["top1"], "teacher_val_top3": tv["top3"],
                    **_headline(tt, "teacher_test_"),
                    **classification.results_metrics(tt, "teacher_test_")})
  _log_metrics(workdir, config, {k: results[k] for k in (
      "val_top1", "test_top1", "test_top3", "teacher_test_top1", "teacher_test_top3")
      if k in results})
  logging.info("zero-shot on %s (%s prompts): student test top-1 %.4f, top-3 %.4f%s",
               d.name, results["prompt_setting"], test["top1"], test["top3"],
               f"; teacher {results['teacher_test_top1']:.4f} / "
               f"{results['teacher_test_top3']:.4f}" if with_teacher else "")
  return _finish(workdir, results)


def _log_metrics(workdir: str, config, values: dict) -> None:
  writer = metrics_lib.MetricWriter(workdir, config.log.tensorboard)
  writer.write(0, values, prefix="readout/")
  writer.close()


# --------------------------------------------------------------------------------------------
# During pre-training.


def pretrain_eval_fn(config, mesh, model: uniemox.UniEmoX, teacher, preemption,
                     start_step: int) -> Callable | None:
  """The pre-training loop's `eval_fn(state, step) -> dict` from `config.eval` (None when
  `config.eval.every_steps` is 0).

  Each call extracts the features of a fixed random subset (`eval.bank_max_examples` of
  `eval.bank_split`, `eval.max_examples` of `eval.split`) of the labelled data set
  `eval.dataset`, and returns `knn_top1`, `knn_top3`, `knn_macro_f1` (and, with
  `eval.zeroshot`, `zeroshot_top1`, `zeroshot_top3` of γ against the caption template), the
  seconds it took (`eval_seconds`), the mean training step time since the previous
  evaluation (`step_seconds`) and their ratio, the cost in steps (`eval_cost_steps`).
  """
  e = config.eval
  if not e.every_steps:
    return None
  data_dir = e.data_dir or config.data.data_dir
  class_names = class_names_for(e.dataset)
  subsets = {}
  for role, split, limit, salt in (("bank", e.bank_split, e.bank_max_examples, 1),
                                   ("query", e.split, e.max_examples, 2)):
    source = builders.load_source(e.dataset, split, data_dir)
    subsets[role] = knn.Subset(source, knn.subset_indices(len(source), limit,
                                                          seed=config.seed * 1000 + salt))
  outputs = sorted({e.feature} | ({"gamma"} if e.zeroshot else set()))
  fn = zeroshot.student_features_fn(model, outputs, config.data.person_view)
  transform = zeroshot.ViewsTransform(
      config.model.image_size, e.resize or None,
      person="gamma" in outputs and model.uses_person_view, person_view=config.data.person_view)
  class_emb = scale = None
  if e.zeroshot:
    encode = zeroshot.text_encoder(teacher.module, teacher.params, teacher.tokenizer_path)
    class_emb = zeroshot.class_embeddings(encode, class_names, (e.caption_template,))
    scale = zeroshot.teacher_logit_scale(teacher.params)
  clock = {"time": time.perf_counter(), "step": start_step}
  logging.info("in-training evaluation every %d steps on %s: kNN (%s) over %d %s images, "
               "queries %d %s images%s", e.every_steps, e.dataset, e.feature,
               len(subsets["bank"]), e.bank_split, len(subsets["query"]), e.split,
               ", and zero-shot γ" if e.zeroshot else "")

  def run_eval(state, step: int) -> dict:
    begin = time.perf_counter()
    trained = {"seconds": begin - clock["time"], "steps": step - clock["step"]}
    feats = {}
    for role, source in subsets.items():
      feats[role] = zeroshot.extract(source, transform, fn, state.params, mesh,
                                     batch_size=e.batch_size, num_workers=config.data.num_workers,
                                     preemption=preemption, where="evaluation")
    (bank, bank_host), (query, query_host) = feats["bank"], feats["query"]
    result, _ = knn.knn_evaluate(bank[e.feature], bank_host["label"], query[e.feature],
                                 query_host["label"], class_names, e.k, e.temperature)
    out = {"knn_top1": result["top1"], "knn_top3": result["top3"],
           "knn_macro_f1": result["metrics"]["macro_f1"]}
    if e.zeroshot:
      zs, _ = zeroshot.zeroshot_evaluate(query["gamma"], query_host["label"], class_emb,
                                         class_names, scale)
      out.update(zeroshot_top1=zs["top1"], zeroshot_top3=zs["top3"])
    now = time.perf_counter()
    out["eval_seconds"] = now - begin
    if trained["steps"] > 0:
      out["step_seconds"] = trained["seconds"] / trained["steps"]
      out["eval_cost_steps"] = out["eval_seconds"] / max(out["step_seconds"], 1e-9)
    clock.update(time=now, step=step)
    return out

  return run_eval
