"""Config validation: everything that can be checked before anything heavy runs.

Each problem names the config key, what was found and what to do; all problems are reported
at once.
"""
from __future__ import annotations

import os

import jax

from uniemox_jax import losses, preprocess
from uniemox_jax.data import pipeline
from uniemox_jax.data.classes import SPLITS as SPLIT_NAMES
from uniemox_jax.models import fusion, mae, vit
from uniemox_jax.start import NotACheckpointError, checkpoint_location

README_DATA = "README.md, section 'Real data and weights'"
README_DEMO = "README.md, section 'Quick start'"
README_START = "README.md, section 'Starting points, checkpoints and resume'"


class ConfigError(ValueError):
  pass


def _data_hint(config) -> str:
  task = config.task if config.task != "eval" else "finetune"
  cfg_file = {"pretrain": "pretrain.py", "finetune": "finetune.py",
              "linear_probe": "linear_probe.py"}.get(task, "pretrain.py")
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
    problems.append(f"config.task={config.task!r}: must be one of {tuple(TASKS)}")

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
  if "fusion" in model and model.fusion not in fusion.FUSIONS:
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

  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _split_problems(key: str, split: str) -> list[str]:
  """TFDS split strings such as 'train', 'train+val' or 'train[:10%]', over our splits."""
  names = [part.split("[", 1)[0].strip() for part in str(split).split("+")]
  bad = [n for n in names if n not in SPLIT_NAMES]
  if bad or not names:
    return [f"{key}={split!r}: unknown split {bad}; use {', '.join(SPLIT_NAMES)}, joined with "
            "'+' (slices like 'train[:10%]' are allowed)"]
  return []
