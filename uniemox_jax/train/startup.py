"""Where a run starts from, in this order (README "Starting points"):

1. the workdir's own latest readable checkpoint (a restarted or pre-empted run continues);
2. `config.resume`: another run's workdir / checkpoint directory / step directory — the full
   state (parameters, optimizer, step, RNG, data position) is taken over;
3. `config.init`: weights only (a UniEmoX pre-training run or checkpoint, an official MAE /
   UniEmoX PyTorch checkpoint, a Hugging Face ViTMAE directory), loaded partially with a
   report of what was loaded, skipped and newly initialised;
4. from scratch.

Restores go through abstract targets with the current shardings, so a checkpoint written on
any number of devices loads onto this run's mesh.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from uniemox_jax import checkpointing
from uniemox_jax.models import convert, vit
from uniemox_jax.train import loop as loop_lib
from uniemox_jax.train.common import NotACheckpointError, checkpoint_location

TARGETS = ("pretrain", "finetune", "encoder")


@dataclasses.dataclass
class Start:
  state: Any
  step: int
  data_state: Any
  eval_pending: bool
  origin: str


def restore_or_initialize(config, checkpointer: checkpointing.Checkpointer, state, shardings,
                          target: str) -> Start:
  abstract = loop_lib.abstract_state(state, shardings)
  if checkpointer.all_steps():
    restored = checkpointer.restore(abstract)
    if restored is None:
      raise RuntimeError(
          f"{checkpointer.directory} has checkpoints {checkpointer.all_steps()} but none could "
          "be read (see the errors above). Move that directory away to start over.")
    logging.info("resuming from this workdir's checkpoint at step %d", restored.step)
    pending = loop_lib.eval_pending_after_restore(checkpointer, restored.step, restored.meta)
    return Start(restored.state, restored.step, restored.data or None, pending, "workdir")

  if config.resume:
    directory, step = checkpoint_location(config.resume)
    other = checkpointing.Checkpointer(directory, read_only=True)
    restored = other.restore(abstract, step=step)
    if restored is None:
      raise NotACheckpointError(f"config.resume={config.resume!r}: no readable checkpoint "
                                f"in {directory}")
    logging.info("resuming from %s, step %d (config.resume)", directory, restored.step)
    return Start(restored.state, restored.step, restored.data or None, False, "resume")

  if config.init:
    params = load_weights_into(config.init, state.params, target=target, config=config)
    params = jax.device_put(params, shardings.params)
    return Start(state.replace(params=params), 0, None, False, "init")

  logging.warning("starting from scratch: no checkpoint in the workdir, no config.resume and "
                  "no config.init. The paper's recipes start pre-training from an ImageNet "
                  "MAE checkpoint and fine-tuning from a UniEmoX pre-training run; set "
                  "config.init to follow them (README 'Starting points, checkpoints and "
                  "resume').")
  return Start(state, 0, None, False, "scratch")


# --------------------------------------------------------------------------------------
# Locating and reading our own checkpoints.


def is_our_checkpoint(path: str) -> bool:
  try:
    checkpoint_location(path)
    return True
  except NotACheckpointError:
    return False


def resolve_step(path: str, prefer_best: bool = True) -> tuple[str, int]:
  """`(checkpoint directory, step)` that `read_params` reads for one of our checkpoints.

  For a directory with several steps: the best by validation metric when one was recorded
  (fine-tuning), else the latest.
  """
  directory, step = checkpoint_location(path)
  if step is None:
    ckpt = checkpointing.Checkpointer(directory, read_only=True)
    step = (ckpt.best_step() if prefer_best else None) or ckpt.latest_step()
    if step is None:
      raise NotACheckpointError(f"no checkpoint in {directory}")
  return directory, step


def weights_fingerprint(path: str, prefer_best: bool = True) -> str:
  """A sha256 (hex) that changes when the weights `path` names change: for our runs, the
  checkpoint `read_params` would pick and its files' sizes and times; for anything else, the
  names, sizes and modification times of the file(s). Cheap (nothing is read)."""
  digest = hashlib.sha256()
  if is_our_checkpoint(path):
    directory, step = resolve_step(path, prefer_best)
    root = os.path.join(directory, str(step))
    digest.update(f"{os.path.abspath(directory)}\0{step}\0".encode())
  else:
    root = os.path.abspath(path)
  files = ([root] if os.path.isfile(root) else
           sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names))
  for f in files:
    st = os.stat(f)
    digest.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
  return digest.hexdigest()


def read_params(path: str, prefer_best: bool = True) -> tuple[dict, str]:
  """The `params` of one of our checkpoints as host numpy arrays (any device layout).

  For a directory with several steps: the best by validation metric when one was recorded
  (fine-tuning), else the latest. Returns `(params, description)`.
  """
  directory, step = resolve_step(path, prefer_best)
  item = os.path.join(directory, str(step), "state")
  reader = ocp.PyTreeCheckpointer()
  tree = reader.metadata(item).item_metadata.tree
  if "params" not in tree:
    raise ValueError(f"{item} holds no 'params' (keys {sorted(tree)})")
  sub = {"params": tree["params"]}
  restored = reader.restore(item, args=ocp.args.PyTreeRestore(
      item=jax.tree.map(lambda m: np.zeros((), m.dtype), sub),
      restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), sub),
      partial_restore=True))
  return restored["params"], f"{directory} step {step}"


# --------------------------------------------------------------------------------------
# Weights into a target tree.


def _flat(tree) -> dict[tuple, Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _source_tree(path: str, target: str, config) -> tuple[dict, str, convert.LoadReport | None]:
  """Reads `path` and re-roots it to the target's layout (`pretrain`: UniEmoX tree,
  `finetune`: classifier tree, `encoder`: a bare encoder)."""
  m = config.model
  patch = m.patch_size or None
  if is_our_checkpoint(path):
    params, desc = read_params(path, prefer_best=target != "pretrain")
    kind = ("pretrain" if "mae" in params else "finetune" if "head" in params
            else "encoder")
    if target == "pretrain":
      if kind != "pretrain":
        raise ValueError(f"config.init={path!r} is a {kind} checkpoint; pre-training needs "
                         "UniEmoX pre-training weights or an MAE checkpoint")
      return params, desc, None
    encoder = (params["mae"]["encoder"] if kind == "pretrain" else params["encoder"]
               if kind == "finetune" else params)
    if target == "encoder":
      if kind == "finetune":
        raise ValueError(f"config.init={path!r} is a fine-tuned classifier (its encoder has no "
                         "final norm); a linear probe needs pre-trained encoder weights: a "
                         "UniEmoX pre-training run or an MAE checkpoint")
      return dict(encoder), desc, None
    out = {"encoder": dict(encoder)}
    for key in ("fc_norm", "head"):
      if kind == "finetune" and key in params:
        out[key] = params[key]
    return out, desc, None

  # A PyTorch / safetensors / Hugging Face checkpoint.
  if target == "pretrain":
    params, report = convert.load_uniemox_checkpoint(
        path, variant=m.variant, image_size=m.image_size, patch_size=patch, fusion=m.fusion,
        fusion_heads=m.fusion_heads, decoder_width=m.decoder_width or None,
        decoder_depth=None if m.decoder_depth < 0 else m.decoder_depth,
        decoder_heads=m.decoder_heads or None, return_report=True)
    return params, path, report
  if target == "finetune":
    params, report = convert.load_classifier_checkpoint(
        path, variant=m.variant, num_classes=m.num_classes, image_size=m.image_size,
        patch_size=patch, seed=config.seed)
    return params, path, report
  params, report = convert.load_mae_checkpoint(path, m.variant, image_size=m.image_size,
                                               patch_size=patch, return_report=True)
  return dict(params["encoder"]), path, report


def load_weights_into(path: str, target_params, *, target: str, config, allow_new: bool = True,
                      mesh=None) -> dict:
  """Loads the weights at `path` into a copy of `target_params` (arrays or shapes).

  Every target parameter found in the source (same path, same shape) is loaded; a learned
  position embedding of another grid is resized; the rest keeps its initial value and is
  reported as newly initialised (an error when `allow_new` is False, e.g. for evaluation).
  Source parameters with no place in the target are reported as skipped. A shape mismatch
  anywhere else is an error naming the parameter and both shapes.
  """
  if target not in TARGETS:
    raise ValueError(f"target must be one of {TARGETS}")
  source, desc, report = _source_tree(path, target, config)
  src, dst = _flat(source), _flat(target_params)
  loaded, resized, new = [], [], []
  out = {}
  for key, leaf in dst.items():
    name = "/".join(key)
    if key not in src:
      new.append(name)
      out[key] = leaf
      continue
    value = np.asarray(src[key])
    if value.shape != tuple(leaf.shape):
      if key[-1] == "pos_embed" and value.ndim == 3:
        grid = int(round((leaf.shape[1] - 1) ** 0.5))
        value = vit.resize_pos_embed(value, (grid, grid))
        resized.append(f"{name} {tuple(src[key].shape)}→{value.shape}")
      if value.shape != tuple(leaf.shape):
        raise ValueError(f"config.init={path!r}: parameter {name} has shape {value.shape} in "
                         f"the checkpoint but {tuple(leaf.shape)} in the model "
                         f"(config.model.variant={config.model.variant!r}?)")
    out[key] = value.astype(leaf.dtype)
    loaded.append(name)
  skipped = sorted("/".join(k) for k in src if k not in dst)
  if not loaded:
    raise ValueError(f"config.init={path!r}: no parameter matches the {target} model "
                     f"(checkpoint has {sorted('/'.join(k) for k in src)[:8]}...)")
  if new and not allow_new:
    raise ValueError(f"{desc} lacks parameters the model needs: {new}")
  logging.info("config.init %s → %s model: loaded %d tensors%s; newly initialised %d: %s; "
               "skipped %d: %s", desc, target, len(loaded),
               f" (resized: {resized})" if resized else "", len(new), new, len(skipped),
               skipped[:20] + (["..."] if len(skipped) > 20 else []))
  if report is not None and (report.missing or report.unexpected):
    logging.info("conversion report for %s:\n%s", path, report.summary())
  result = traverse_util.unflatten_dict(out)
  if mesh is not None:
    from uniemox_jax import sharding
    result = jax.device_put(result, sharding.tree_shardings(mesh, result))
  return result
