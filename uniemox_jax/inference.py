r"""A model ready for inference: a linen module, its parameters and `model.json`, read from one of
our training checkpoints or from an inference export, and the export formats themselves.

Why a module of its own: `start.py` reads *training* checkpoints (full train state, run
directories, the start order of a run); an inference export is a different, smaller thing that
tools (`tools/export.py` writes it), `predict.py` and the notebooks all read, so its reader
lives here, one level below them (imports: models, data.classes, start).

An inference export is a directory:

  model.json          what the model is and how to feed it (below); no training config needed
  params/             the parameters only, as an Orbax PyTree checkpoint (no optimizer, step,
                      RNG or data iterator); restored as host arrays, so any device layout
  forward.jax_export  (--format=jax_export) the forward function serialized with `jax.export`,
                      batch dimension symbolic, lowered for CPU and GPU/TPU where they lower
  params.npz          (--format=jax_export) the same parameters as a flat `{"a/b/c": array}`
                      file, the first argument of the serialized function

`model.json` (`format_version` 1):
  kind            'classifier' (a fine-tuned ViTClassifier) or 'mae' (a pre-training run's
                  encoder + decoder)
  module          {"name": "ViTClassifier" | "MaskedAutoencoder", "fields": {...}}: rebuilds it
  variant, image_size, patch_size, num_classes, class_names (in label order)
  preprocessing   resize (shorter side, bicubic), crop (centre square), mean, std (of x/255)
  source          the checkpoint it came from, its run directory, data set and results.json
  jax_export      (when written) file names, platforms, input and output shapes

Reading one without this package (only jax and numpy):

  exp = jax.export.deserialize(open("DIR/forward.jax_export", "rb").read())
  logits = exp.call(dict(np.load("DIR/params.npz")), pixels_uint8)  # [B, S, S, 3] → [B, K]
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from uniemox_jax import preprocess, start
from uniemox_jax.data.classes import class_names_for
from uniemox_jax.models import build, classifier, mae, vit

FORMAT = "uniemox-jax inference export"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
PARAMS_DIR = "params"
JAX_EXPORT_FILE = "forward.jax_export"
JAX_EXPORT_PARAMS = "params.npz"
# Platforms `jax.export` is asked to lower for; those that do not lower here are left out.
JAX_EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")

# The modules an export may hold, by the name written in model.json (no string imports).
MODULES = {"ViTClassifier": classifier.ViTClassifier, "MaskedAutoencoder": mae.MaskedAutoencoder}
KINDS = {"ViTClassifier": "classifier", "MaskedAutoencoder": "mae"}
# Fields that only matter for training; an inference module never uses them.
_TRAINING_ONLY = ("drop_path_rate", "remat")


class NotAClassifierError(ValueError):
  """`--checkpoint` of predict (or a notebook) names weights without a classification head."""


# --------------------------------------------------------------------------------------
# Training runs.


def run_dir(path: str) -> str | None:
  """The run directory (the one holding `run_info.json`) of a workdir, checkpoints dir or
  step dir, or None."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(candidate, "run_info.json")):
      return candidate
  return None


def run_config(path: str) -> ml_collections.ConfigDict:
  """The resolved config a run recorded in `<workdir>/run_info.json` (key "config")."""
  where = run_dir(path)
  if where is None:
    raise FileNotFoundError(
        f"{path}: no run_info.json in it or the two directories above it; the model's "
        "config (variant, image size, classes) is read from there. Pass the run's workdir, "
        "or an inference export (python -m uniemox_jax.tools.export --format=orbax).")
  with open(os.path.join(where, "run_info.json")) as f:
    info = json.load(f)
  if "config" not in info:
    raise ValueError(f"{where}/run_info.json has no 'config' (keys {sorted(info)})")
  return ml_collections.ConfigDict(info["config"])


def _results(workdir: str | None) -> dict | None:
  path = os.path.join(workdir or "", "results.json")
  if workdir and os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return None


def _module_fields(module) -> dict:
  """The linen dataclass fields of `module` as JSON values (dtypes by name)."""
  out = {}
  for name in module.__dataclass_fields__:
    if name in ("parent", "name") or name in _TRAINING_ONLY:
      continue
    value = getattr(module, name)
    if name == "dtype":
      value = next(k for k, v in vit.DTYPES.items() if jnp.dtype(v) == jnp.dtype(value))
    out[name] = value
  return out


def module_from_info(info: Mapping[str, Any], **overrides):
  """Rebuilds the linen module that `model.json` describes (`overrides` win, e.g.
  `attention_impl='explicit'` for attention maps)."""
  spec = info["module"]
  if spec["name"] not in MODULES:
    raise ValueError(f"model.json: unknown module {spec['name']!r}; known: {sorted(MODULES)}")
  return build.from_config(MODULES[spec["name"]], dict(spec["fields"]), **overrides)


def _describe(module, kind: str, config, class_names, source: dict) -> dict:
  image_size = int(module.image_size)
  resize = (config.data.get("eval_resize") if "data" in config else None) or int(
      round(image_size / 0.875))
  patch = module.patch_size or vit.get_variant(module.variant).patch_size
  return {
      "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
      "module": {"name": type(module).__name__, "fields": _module_fields(module)},
      "variant": module.variant, "image_size": image_size, "patch_size": int(patch),
      "num_classes": len(class_names) if class_names else None,
      "class_names": list(class_names) if class_names else None,
      "preprocessing": {
          "resize": int(resize), "resize_side": "shorter", "interpolation": "bicubic",
          "crop": image_size, "crop_kind": "centre", "color": "RGB",
          "mean": list(preprocess.IMAGENET_MEAN), "std": list(preprocess.IMAGENET_STD),
          "normalize": "(pixels / 255 - mean) / std, NHWC"},
      "source": source,
  }


def from_checkpoint(path: str) -> tuple[Any, dict, dict]:
  """`(module, params, model_info)` of one of our training checkpoints (a workdir,
  checkpoints dir or step dir; the best-val step of a fine-tuning run).

  A fine-tuning checkpoint gives the `ViTClassifier`; a pre-training one its masked
  autoencoder (encoder + decoder, `kind='mae'`). Parameters are host numpy arrays.
  """
  params, desc = start.read_params(path)
  kind = start.kind_of(params)
  config = run_config(path)
  workdir = run_dir(path)
  source = {"checkpoint": desc, "path": os.path.abspath(path), "run": workdir,
            "task": config.get("task"), "dataset": config.data.get("name") if "data" in config
            else None, "results": _results(workdir)}
  if kind == "finetune":
    module = build.from_config(classifier.ViTClassifier, config.model, drop_path_rate=0.0,
                               remat=False)
    names = class_names_for(config.data.name)
    if len(names) != module.num_classes:
      raise ValueError(f"{path}: the run's config.model.num_classes={module.num_classes} "
                       f"but {config.data.name} has {len(names)} classes")
    return module, params, _describe(module, "classifier", config, names, source)
  if kind == "pretrain":
    module = build.from_config(mae.MaskedAutoencoder, config.model, remat=False)
    return module, params["mae"], _describe(module, "mae", config, None, source)
  raise ValueError(f"{path}: a bare encoder checkpoint (no 'mae' and no 'head' parameters); "
                   "only fine-tuning and pre-training runs can be loaded for inference")


# --------------------------------------------------------------------------------------
# The export.


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_JSON))


def read_model_info(directory: str) -> dict:
  path = os.path.join(directory, MODEL_JSON)
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ValueError(f"{path}: not a {FORMAT!r} (format {info.get('format')!r})")
  if int(info.get("format_version", 0)) > FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {info['format_version']} is newer than this "
                     f"code reads ({FORMAT_VERSION}); update uniemox-jax")
  return info


def write_model_info(directory: str, info: Mapping[str, Any]):
  tmp = os.path.join(directory, MODEL_JSON + ".tmp")
  with open(tmp, "w") as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, os.path.join(directory, MODEL_JSON))


def _prepare_dir(out_dir: str, overwrite: bool) -> str:
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory or "
                            "pass overwrite=True (--overwrite)")
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  return out_dir


def write_export(out_dir: str, params, info: Mapping[str, Any], overwrite: bool = False) -> dict:
  """Writes `params` (Orbax) and `model.json` to `out_dir`; returns the info written."""
  out_dir = _prepare_dir(out_dir, overwrite)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  ocp.PyTreeCheckpointer().save(os.path.join(out_dir, PARAMS_DIR), args=ocp.args.PyTreeSave(host))
  info = dict(info, files={"params": PARAMS_DIR},
              exported=datetime.datetime.now(datetime.timezone.utc).isoformat(),
              versions={"jax": jax.__version__})
  write_model_info(out_dir, info)
  return info


def load_export(directory: str, sharding=None) -> tuple[Any, dict, dict]:
  """`(module, params, model_info)` of an inference export.

  Parameters are restored as host numpy arrays (whatever devices wrote them), then placed
  with `sharding` (one `jax.sharding.Sharding` for every leaf) when given.
  """
  directory = os.path.abspath(directory)
  info = read_model_info(directory)
  item = os.path.join(directory, info.get("files", {}).get("params", PARAMS_DIR))
  if not os.path.isdir(item):
    raise FileNotFoundError(f"{directory}/{MODEL_JSON} names parameters {item}, which is "
                            "missing")
  reader = ocp.PyTreeCheckpointer()
  tree = reader.metadata(item).item_metadata.tree
  params = reader.restore(item, args=ocp.args.PyTreeRestore(
      item=jax.tree.map(lambda m: np.zeros((), m.dtype), tree),
      restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree)))
  if sharding is not None:
    params = jax.device_put(params, sharding)
  return module_from_info(info), params, info


def load(path: str) -> tuple[Any, dict, dict]:
  """`(module, params, model_info)` of an inference export or one of our training
  checkpoints."""
  if is_export(path):
    return load_export(path)
  if start.is_our_checkpoint(path):
    return from_checkpoint(path)
  raise FileNotFoundError(f"{path}: neither an inference export (no {MODEL_JSON}) nor a "
                          "workdir, checkpoints directory or step directory of ours")


def load_classifier(path: str) -> tuple[classifier.ViTClassifier, dict, dict]:
  """`load`, for a classifier only: other weights fail with what to do."""
  module, params, info = load(path)
  if info["kind"] != "classifier":
    raise NotAClassifierError(
        f"{path} is a pre-training checkpoint or its export (a masked autoencoder: encoder + "
        "decoder, no classification head), so it cannot predict emotions. Fine-tune it first "
        "(python main.py --config=configs/finetune.py:emo8 --workdir=WORKDIR "
        f"--config.init={path} ...) and pass that run, or export its encoder for features "
        f"(python -m uniemox_jax.tools.export --checkpoint={path} --format=orbax --out=DIR).")
  return module, params, info


# --------------------------------------------------------------------------------------
# jax.export.


def flatten_params(params) -> dict[str, np.ndarray]:
  """`{"encoder/blocks_0/attn/qkv/kernel": array, ...}`: the layout of `params.npz`."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  return {"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()}


def unflatten_params(flat: Mapping[str, Any]) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def forward_fn(module, kind: str):
  """`f(flat_params, pixels_u8 [B, S, S, 3]) -> [B, K] logits` (classifier) or
  `[B, 1 + L, D]` normalised encoder tokens (mae), float32; ImageNet normalisation inside."""

  def f(flat_params, pixels_u8):
    variables = {"params": unflatten_params(flat_params)}
    x = preprocess.student_pixels(pixels_u8)
    if kind == "classifier":
      return module.apply(variables, x)[0]
    _, aux = module.apply(variables, x, mask_ratio=0.0, decode=False)
    return aux["encoded"].astype(jnp.float32)

  return f


def _lower(f, args, platforms):
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  return jax_export.export(jax.jit(f), platforms=tuple(platforms))(*args)


def write_jax_export(out_dir: str, module, params, info: Mapping[str, Any],
                     platforms=JAX_EXPORT_PLATFORMS) -> dict:
  """Serializes the forward function (`forward_fn`) next to `params.npz` in `out_dir` (an
  export directory) and records it in `model.json`; returns the updated info.

  The batch dimension is symbolic (`b`); the platforms are those of `platforms` that lower
  with this jax (all three usually do, on any host)."""
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  try:
    import flatbuffers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ImportError("--format=jax_export needs the 'flatbuffers' package, which "
                      "jax.export uses to serialize: pip install flatbuffers") from None
  kind = info["kind"]
  flat = flatten_params(params)
  (batch,) = jax_export.symbolic_shape("b")
  size = int(info["image_size"])
  args = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()},
          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
  f = forward_fn(module, kind)
  try:
    exported = _lower(f, args, platforms)
  except Exception:  # pylint: disable=broad-except
    # Keep the platforms that lower one by one (a jaxlib without some platform's rules).
    ok = []
    for p in platforms:
      try:
        _lower(f, args, (p,))
        ok.append(p)
      except Exception:  # pylint: disable=broad-except
        pass
    if not ok:
      raise
    exported = _lower(f, args, ok)
  out_dir = os.path.abspath(out_dir)
  with open(os.path.join(out_dir, JAX_EXPORT_FILE), "wb") as fh:
    fh.write(exported.serialize())
  np.savez(os.path.join(out_dir, JAX_EXPORT_PARAMS), **flat)
  out_shape = ("b", info["num_classes"]) if kind == "classifier" else (
      "b", 1 + (size // info["patch_size"]) ** 2, int(flat["encoder/cls_token"].shape[-1]))
  info = dict(info)
  info["files"] = dict(info.get("files", {}), jax_export=JAX_EXPORT_FILE,
                       jax_export_params=JAX_EXPORT_PARAMS)
  info["jax_export"] = {
      "function": JAX_EXPORT_FILE, "params": JAX_EXPORT_PARAMS,
      "platforms": list(exported.platforms), "jax_version": jax.__version__,
      "call": "jax.export.deserialize(bytes).call(dict(np.load(params)), pixels)",
      "input": {"shape": ["b", size, size, 3], "dtype": "uint8",
                "what": "RGB pixels after the resize and centre crop of 'preprocessing'; "
                        "the normalisation is inside the function"},
      "output": {"shape": list(out_shape), "dtype": "float32",
                 "what": "logits" if kind == "classifier" else
                         "encoder tokens (CLS first) after the final LayerNorm"},
  }
  write_model_info(out_dir, info)
  return info


def load_jax_export(directory: str):
  """`(exported, flat_params)` of a `--format=jax_export` directory (what a plain-jax user
  does by hand: see the module docstring)."""
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  with open(os.path.join(directory, JAX_EXPORT_FILE), "rb") as f:
    exported = jax_export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(directory, JAX_EXPORT_PARAMS)) as z:
    flat = {k: z[k] for k in z.files}
  return exported, flat
