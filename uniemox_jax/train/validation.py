"""Config validation: everything that can be checked before anything heavy runs.

Each problem names the config key, what was found and what to do; all problems are reported
at once. Besides the keys themselves, `check_paths` looks at what the paths hold, cheaply:
the teacher directory must hold a CLIP model and its tokenizer, `config.init` must hold
weights (a run of ours with checkpoints, weight files, not the CLIP teacher) of a kind the
task can start from, and the training split must hold at least one batch.
"""
from __future__ import annotations

import json
import os

import jax

from uniemox_jax import errors, losses, preprocess
from uniemox_jax.data import builders, pipeline
from uniemox_jax.data.classes import SPLITS as SPLIT_NAMES
from uniemox_jax.models import fusion, mae, vit
from uniemox_jax.start import (KIND_NAMES, NotACheckpointError, StartingPointError,
                               checkpoint_location, is_our_checkpoint, peek_kind)
from uniemox_jax.weights import files as weight_files

README_DATA = "README.md, section 'Real data and weights'"
README_DEMO = "README.md, section 'Quick start'"
README_START = "README.md, section 'Starting points, checkpoints and resume'"


class ConfigError(errors.UserError, ValueError):
  """Problems with the config (keys, values, paths), all of them in one message."""

# Weight files `config.init` may name (weights.files reads these).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".npz")
# What each task can start from, among our own checkpoints (`start.kind_of`).
INIT_KINDS = {"pretrain": ("pretrain",), "finetune": ("pretrain", "finetune", "encoder"),
              "linear_probe": ("pretrain", "encoder"), "eval": ("finetune",),
              "knn": ("pretrain", "encoder"), "zeroshot": ("pretrain",)}


def _data_hint(config) -> str:
  task = config.task if config.task != "eval" else "finetune"
  cfg_file = {"pretrain": "pretrain.py", "finetune": "finetune.py",
              "linear_probe": "linear_probe.py", "knn": "readout.py",
              "zeroshot": "readout.py"}.get(task, "pretrain.py")
  return (f"prepare the data first (python -m uniemox_jax.tools.prepare ..., see {README_DATA}), "
          f"or try the embedded demo: `bash demo.sh`, then "
          f"`python main.py --config=configs/{cfg_file}:demo` "
          f"(see {README_DEMO})")


def validate(config, *, num_devices: int | None = None, check_paths: bool = True) -> None:
  """Raises `ConfigError` listing every problem found in `config`."""
  from uniemox_jax.train.run import TASKS  # pylint: disable=g-import-not-at-top (a cycle)
  problems = []
  num_devices = num_devices or jax.device_count()
  if config.task not in TASKS:
    problems.append(f"config.task={config.task!r}{errors.did_you_mean(config.task, TASKS)}: "
                    f"must be one of {', '.join(TASKS)}")

  # --- sizes and ratios
  if config.batch_size <= 0 or config.batch_size % num_devices:
    problems.append(f"config.batch_size={config.batch_size} must be a positive multiple of the "
                    f"{num_devices} devices")
  model = config.model
  try:
    variant = vit.get_variant(model.variant)
  except ValueError as e:
    problems.append(f"config.model.variant: {e}")
    variant = None
  if variant is not None:
    patch = model.patch_size or variant.patch_size
    if model.image_size % patch:
      problems.append(f"config.model.image_size={model.image_size} is not a multiple of the "
                      f"patch size {patch}")
  if model.get("dtype") not in vit.DTYPES:
    problems.append(f"config.model.dtype={model.get('dtype')!r}: use one of {tuple(vit.DTYPES)}")
  if model.get("attention_impl", "explicit") not in vit.ATTENTION_IMPLS:
    problems.append(f"config.model.attention_impl={model.attention_impl!r}: use one of "
                    f"{vit.ATTENTION_IMPLS}")
  if "mask_ratio" in model and not 0.0 <= model.mask_ratio < 1.0:
    problems.append(f"config.model.mask_ratio={model.mask_ratio} must be in [0, 1)")
  if "decoder_output" in model and model.decoder_output not in mae.DECODER_OUTPUTS:
    problems.append(f"config.model.decoder_output={model.decoder_output!r}: use one of "
                    f"{mae.DECODER_OUTPUTS}")
  if "fusion" in model and model.fusion not in fusion.FUSIONS and not (
      model.fusion == "auto" and config.task in ("knn", "zeroshot")):  # auto: the checkpoint's
    problems.append(f"config.model.fusion={model.fusion!r}: use one of {sorted(fusion.FUSIONS)}")
  if config.total_steps < 0 or (config.total_steps == 0 and config.total_epochs <= 0):
    problems.append("config.total_epochs (or config.total_steps) must be positive")
  if config.warmup_epochs < 0:
    problems.append("config.warmup_epochs must be >= 0")
  if config.get("checkpoint") and config.checkpoint.get("keep_every_epochs", 0) < 0:
    problems.append("config.checkpoint.keep_every_epochs must be >= 0 (0: off)")
  d, f = config.mesh.data, config.mesh.fsdp
  if not ((d == -1 and f > 0 and num_devices % f == 0) or (f == -1 and d > 0 and num_devices % d == 0)
          or (d > 0 and f > 0 and d * f == num_devices)):
    problems.append(f"config.mesh data={d} × fsdp={f} does not fit {num_devices} devices "
                    "(-1 on one axis takes the rest)")

  if config.task == "pretrain":
    loss = config.loss
    if not any(loss[k] for k in losses.LOSS_TERMS):
      problems.append("config.loss: every term has weight 0; switch on at least one of "
                      "con, sim, rec, nce")
    if loss.relation_scope not in losses.RELATION_SCOPES:
      problems.append(f"config.loss.relation_scope={loss.relation_scope!r}: use one of "
                      f"{losses.RELATION_SCOPES}")
    if config.teacher.input_norm not in preprocess.TEACHER_NORMS:
      problems.append(f"config.teacher.input_norm={config.teacher.input_norm!r}: use one of "
                      f"{tuple(preprocess.TEACHER_NORMS)}")
    if config.teacher.dtype not in vit.DTYPES:
      problems.append(f"config.teacher.dtype={config.teacher.dtype!r}: use one of "
                      f"{tuple(vit.DTYPES)}")
    if config.data.caption_field not in pipeline.CAPTION_FIELDS:
      problems.append(f"config.data.caption_field={config.data.caption_field!r}: use one of "
                      f"{pipeline.CAPTION_FIELDS}")
    if config.data.person_view not in pipeline.PERSON_VIEWS:
      problems.append(f"config.data.person_view={config.data.person_view!r}: use one of "
                      f"{pipeline.PERSON_VIEWS}")
    if not 0.0 < config.data.scale_min <= 1.0:
      problems.append(f"config.data.scale_min={config.data.scale_min} must be in (0, 1]")
    if check_paths:
      if not config.teacher.path:
        problems.append("config.teacher.path is empty: set it to a local CLIP ViT-B/16 "
                        f"(Hugging Face directory or OpenAI .pt; {README_DATA}) — or run the "
                        f"demo (`bash demo.sh`, {README_DEMO})")
      elif not os.path.exists(config.teacher.path):
        problems.append(f"config.teacher.path={config.teacher.path!r} does not exist "
                        f"({README_DATA}; the demo's tiny teacher is made by `bash demo.sh`)")
      else:
        problems += _teacher_problems(config.teacher,
                                      need_text=bool(config.loss.con or config.loss.nce))
      tok = config.teacher.tokenizer
      if tok and not os.path.exists(tok):
        problems.append(f"config.teacher.tokenizer={tok!r} does not exist")

  if config.task in ("finetune", "linear_probe", "eval"):
    mix = config.get("mixup")
    if mix is not None and not 0.0 <= mix.label_smoothing < 1.0:
      problems.append("config.mixup.label_smoothing must be in [0, 1)")
    if config.optim.layer_decay and not 0.0 < config.optim.layer_decay <= 1.0:
      problems.append(f"config.optim.layer_decay={config.optim.layer_decay} must be in (0, 1]")
    if config.task == "eval" and check_paths and not config.init:
      problems.append("config.task='eval' needs config.init: the checkpoint (or fine-tuning "
                      f"workdir) to evaluate ({README_START})")
    if config.task == "linear_probe" and check_paths and not config.init:
      problems.append("config.init is empty: a linear probe needs the pre-trained encoder "
                      "(a UniEmoX pre-training workdir or checkpoint, or an MAE/UniEmoX .pth; "
                      f"{README_START})")
    eval_batch = config.get("eval", {}).get("batch_size", 0)
    if eval_batch <= 0 or eval_batch % num_devices:
      problems.append(f"config.eval.batch_size={eval_batch} must be a positive multiple of the "
                      f"{num_devices} devices")

  problems += _readout_problems(config, num_devices, check_paths)

  for key in ("train_split", "val_split", "test_split"):
    if key in config.data:
      problems += _split_problems(f"config.data.{key}", config.data[key])
  if config.task == "eval" and "eval" in config and "split" in config.eval:
    problems += _split_problems("config.eval.split", config.eval.split)

  if check_paths:
    if not config.data.data_dir:
      problems.append(f"config.data.data_dir is empty: it must point at the TFDS data of "
                      f"{config.data.name!r}; {_data_hint(config)}")
    elif not os.path.isdir(config.data.data_dir):
      problems.append(f"config.data.data_dir={config.data.data_dir!r} does not exist; "
                      f"{_data_hint(config)}")
    for key in ("init", "resume"):
      path = config.get(key)
      if path and not os.path.exists(path):
        problems.append(f"config.{key}={path!r} does not exist ({README_START})")
    if config.get("resume") and os.path.exists(config.resume):
      try:
        checkpoint_location(config.resume)
      except NotACheckpointError as e:
        problems.append(f"config.resume: {e}; resume takes a run of ours (weights from "
                        f"elsewhere go in config.init; {README_START})")
    if config.init and os.path.exists(config.init):
      problems += _init_problems(config)
    if config.data.data_dir and os.path.isdir(config.data.data_dir):
      problems += _data_problems(config)

  if len(problems) == 1:
    raise ConfigError(f"invalid config: {problems[0]}")
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _hf_config(directory: str) -> dict | None:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _has_weight_files(directory: str) -> bool:
  return any(os.path.isfile(os.path.join(directory, n)) for n in weight_files.HF_WEIGHT_FILES)


def _listing(directory: str, n: int = 8) -> str:
  names = sorted(os.listdir(directory))
  return ", ".join(names[:n]) + (" ..." if len(names) > n else "") if names else "nothing"


def _teacher_problems(teacher, need_text: bool) -> list[str]:
  """The teacher path holds a CLIP model (config.json + weights, or a weight file) and, when
  the losses use the text tower (`need_text`: L_con, L_nce), a tokenizer is at hand."""
  path, key = teacher.path, "config.teacher.path"
  expected = ("a Hugging Face CLIP directory (config.json + model.safetensors or "
              "pytorch_model.bin, vocab.json + merges.txt) or an OpenAI CLIP .pt file "
              f"({README_DATA})")
  if os.path.isdir(path):
    cfg = _hf_config(path)
    if cfg is None or not _has_weight_files(path):
      missing = [n for n, ok in (("config.json", cfg is not None),
                                 ("model.safetensors / pytorch_model.bin",
                                  _has_weight_files(path))) if not ok]
      return [f"{key}={path!r} holds no CLIP model (no {' and no '.join(missing)}; found "
              f"{_listing(path)}); expected {expected}"]
    model_type = cfg.get("model_type", "")
    if model_type and model_type != "clip":
      return [f"{key}={path!r} holds a {model_type!r} model (config.json), not CLIP; "
              f"expected {expected}"]
    tok = teacher.tokenizer or path
    if need_text and os.path.isdir(tok) and not (os.path.isfile(os.path.join(tok, "tokenizer.json")) or (
        os.path.isfile(os.path.join(tok, "vocab.json"))
        and os.path.isfile(os.path.join(tok, "merges.txt")))):
      which = "config.teacher.tokenizer" if teacher.tokenizer else key
      return [f"{which}={tok!r} has no CLIP tokenizer files (vocab.json + merges.txt, or "
              "tokenizer.json); copy them from the Hugging Face CLIP directory or set "
              "config.teacher.tokenizer to a directory that has them"]
    return []
  if not path.endswith(WEIGHT_SUFFIXES):
    return [f"{key}={path!r} is a file but not a CLIP checkpoint ({', '.join(WEIGHT_SUFFIXES)}); "
            f"expected {expected}"]
  if need_text and not teacher.tokenizer:
    return [f"{key}={path!r} is a single file (OpenAI CLIP), which has no tokenizer: set "
            "config.teacher.tokenizer to a directory with vocab.json + merges.txt (any Hugging "
            "Face CLIP directory has them)"]
  return []


def _init_problems(config) -> list[str]:
  """`config.init` holds weights the task can start from (cheap: listings, a config.json,
  our checkpoints' metadata)."""
  path, key, task = config.init, "config.init", config.task
  expected = {
      "pretrain": "one of our pre-training runs, an MAE .pth or a Hugging Face ViTMAE "
                  "directory",
      "finetune": "one of our pre-training runs, an MAE / UniEmoX .pth or a Hugging Face "
                  "ViTMAE directory",
      "linear_probe": "one of our pre-training runs or an MAE / UniEmoX .pth",
      "eval": "one of our fine-tuning runs or a fine-tuned classifier .pth",
      "knn": "one of our pre-training runs or an MAE / UniEmoX .pth",
      "zeroshot": "one of our pre-training runs or a released UniEmoX .pth (with its fusion)",
  }.get(task, "weights")
  if is_our_checkpoint(path):
    try:
      kind, desc = peek_kind(path, prefer_best=task != "pretrain")
    except (NotACheckpointError, StartingPointError) as e:
      return [f"{key}={path!r}: {errors.message_of(e)}; expected {expected} ({README_START})"]
    except Exception:  # noqa: BLE001 - unreadable metadata: the load itself reports it
      return []
    allowed = INIT_KINDS.get(task, ())
    if allowed and kind not in allowed:
      why = {"linear_probe": " (its encoder has no final norm)",
             "eval": " (it has no classification head: fine-tune it first)"}.get(task, "")
      return [f"{key}={path!r} ({desc}) is {KIND_NAMES[kind]}{why}; the {task} task needs "
              f"{expected} ({README_START})"]
    return []
  if os.path.isdir(path):
    cfg = _hf_config(path)
    if cfg and (cfg.get("model_type") == "clip"
                or any("CLIP" in a for a in cfg.get("architectures", []))):
      return [f"{key}={path!r} is a CLIP model (config.json model_type 'clip'): the teacher "
              f"(config.teacher.path), not an encoder to start from; expected {expected} "
              f"({README_START})"]
    if not _has_weight_files(path):
      files = sorted(n for n in os.listdir(path) if n.endswith(WEIGHT_SUFFIXES))
      hint = f"; to start from {files[0]!r}, pass the file itself" if files else ""
      return [f"{key}={path!r} holds neither a run of ours (checkpoints/<step>/) nor model "
              f"weights (model.safetensors, pytorch_model.bin; found {_listing(path)}); "
              f"expected {expected}{hint} ({README_START})"]
    return []
  if not path.endswith(WEIGHT_SUFFIXES):
    return [f"{key}={path!r} is not a weight file ({', '.join(WEIGHT_SUFFIXES)}) nor a run of "
            f"ours; expected {expected} ({README_START})"]
  return []


def _data_problems(config) -> list[str]:
  """The training split is prepared and holds at least one global batch."""
  if config.task in ("eval", "knn", "zeroshot") or "train_split" not in config.data:
    return []
  split = config.data.train_split
  if _split_problems("x", split):
    return []  # reported already
  try:
    size = len(builders.load_source(config.data.name, split, config.data.data_dir))
  except (builders.DatasetNotPreparedError, ValueError) as e:
    return [f"config.data.data_dir={config.data.data_dir!r}: {e}"]
  if size < config.batch_size:
    return [f"config.batch_size={config.batch_size} is larger than the {size} examples of "
            f"{config.data.name} split {split!r} in {config.data.data_dir}: not one training "
            f"step would run; set config.batch_size to at most {size} (a multiple of the "
            "devices; the lr follows base_lr × batch / 256 unless config.optim.lr is set)"]
  return []


def _split_problems(key: str, split: str) -> list[str]:
  """TFDS split strings such as 'train', 'train+val' or 'train[:10%]', over our splits."""
  names = [part.split("[", 1)[0].strip() for part in str(split).split("+")]
  bad = [n for n in names if n not in SPLIT_NAMES]
  if bad or not names:
    return [f"{key}={split!r}: unknown split {bad}; use {', '.join(SPLIT_NAMES)}, joined with "
            "'+' (slices like 'train[:10%]' are allowed)"]
  return []


# The features a kNN read-out can use (evaluators.zeroshot.STUDENT_FEATURES).
KNN_FEATURES = ("mean", "cls", "gamma")


def _readout_problems(config, num_devices: int, check_paths: bool) -> list[str]:
  """The read-out tasks (knn, zeroshot) and pre-training's in-training evaluation
  (`config.eval.every_steps > 0`)."""
  problems = []
  if config.task in ("knn", "zeroshot"):
    if config.eval.batch_size <= 0 or config.eval.batch_size % num_devices:
      problems.append(f"config.eval.batch_size={config.eval.batch_size} must be a positive "
                      f"multiple of the {num_devices} devices")
    if check_paths and not config.init:
      problems.append(f"config.init is empty: the {config.task} read-out needs the pre-trained "
                      "weights (a UniEmoX pre-training workdir or checkpoint"
                      + (", or an MAE / UniEmoX .pth" if config.task == "knn" else
                         " or a released UniEmoX .pth") + f"; {README_START})")
    if config.data.person_view not in pipeline.PERSON_VIEWS:
      problems.append(f"config.data.person_view={config.data.person_view!r}: use one of "
                      f"{pipeline.PERSON_VIEWS}")
    problems += _knn_problems("config.knn", config.knn)
    if config.task == "zeroshot":
      zs = config.zeroshot
      for key, templates in (("caption_template", (zs.caption_template,)),
                             ("ensemble", tuple(zs.ensemble))):
        if not templates or any("{emotion}" not in str(t) for t in templates):
          problems.append(f"config.zeroshot.{key}={templates!r}: every prompt template needs "
                          "an '{emotion}' placeholder")
      if zs.logit_scale < 0:
        problems.append(f"config.zeroshot.logit_scale={zs.logit_scale} must be >= 0 (0: the "
                        "teacher's)")
      if check_paths:
        if not config.teacher.path:
          problems.append("config.teacher.path is empty: zero-shot scores the student against "
                          "the text tower of the CLIP it was distilled from; set it to that "
                          f"CLIP ({README_DATA})")
        elif not os.path.exists(config.teacher.path):
          problems.append(f"config.teacher.path={config.teacher.path!r} does not exist "
                          f"({README_DATA})")
        else:
          problems += _teacher_problems(config.teacher, need_text=True)
  if config.task == "pretrain" and "eval" in config and config.eval.every_steps:
    e = config.eval
    if e.every_steps < 0:
      problems.append(f"config.eval.every_steps={e.every_steps} must be >= 0 (0: off)")
    if e.batch_size <= 0 or e.batch_size % num_devices:
      problems.append(f"config.eval.batch_size={e.batch_size} must be a positive multiple of "
                      f"the {num_devices} devices")
    if e.max_examples < 0 or e.bank_max_examples < 0:
      problems.append("config.eval.max_examples and bank_max_examples must be >= 0 (0: all)")
    try:
      builders.canonical_name(e.dataset)
    except ValueError as err:
      problems.append(f"config.eval.dataset: {err}")
    problems += _split_problems("config.eval.split", e.split)
    problems += _split_problems("config.eval.bank_split", e.bank_split)
    problems += _knn_problems("config.eval", e)
    if e.zeroshot and "{emotion}" not in e.caption_template:
      problems.append(f"config.eval.caption_template={e.caption_template!r} needs an "
                      "'{emotion}' placeholder")
    if (e.zeroshot and check_paths and not (config.loss.con or config.loss.nce)
        and config.teacher.path and os.path.exists(config.teacher.path)):
      problems += _teacher_problems(config.teacher, need_text=True)  # the prompts' tokenizer
    if check_paths and not problems:
      data_dir = e.data_dir or config.data.data_dir
      if data_dir and os.path.isdir(data_dir):
        for key in ("split", "bank_split"):
          try:
            builders.load_source(e.dataset, e[key], data_dir)
          except (builders.DatasetNotPreparedError, ValueError) as err:
            problems.append(f"config.eval.{key}={e[key]!r} of config.eval.dataset="
                            f"{e.dataset!r} in {data_dir!r}: {err}")
  return problems


def _knn_problems(prefix: str, section) -> list[str]:
  problems = []
  if section.feature not in KNN_FEATURES:
    problems.append(f"{prefix}.feature={section.feature!r}: use one of {KNN_FEATURES}")
  if section.k < 1:
    problems.append(f"{prefix}.k={section.k} must be >= 1")
  if section.temperature <= 0:
    problems.append(f"{prefix}.temperature={section.temperature} must be > 0")
  return problems
