"""Where a run starts: our checkpoints' locations, reading their parameters, and the start
order of every training task (README "Starting points, checkpoints and resume"):

1. the workdir's own latest readable checkpoint (a restarted or pre-empted run continues);
2. `config.resume`: another run's workdir / checkpoint directory / step directory — the full
   state (parameters, optimizer, step, RNG, data position) is taken over;
3. `config.init`: weights only (a UniEmoX pre-training run or checkpoint, an official MAE /
   UniEmoX PyTorch checkpoint, a Hugging Face ViTMAE directory), loaded partially with a
   report of what was loaded, skipped and newly initialised (`weights.into`);
4. from scratch.

Restores go through abstract targets with the current shardings, so a checkpoint written on
any number of devices loads onto this run's mesh. Tools (export, predict, notebooks) read
weights through `read_params` here, never through a trainer.
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

from uniemox_jax import checkpointing, errors
from uniemox_jax.weights import into
from uniemox_jax.weights.into import StartingPointError  # noqa: F401 - re-exported

README_START = into.README_START


class NotACheckpointError(errors.UserError, FileNotFoundError):
  """A path given as one of our checkpoints (config.resume, --checkpoint) is not one."""


# --------------------------------------------------------------------------------------
# Locating and reading our own checkpoints.


def checkpoint_location(path: str) -> tuple[str, int | None]:
  """`(checkpoint directory, step or None)` for a workdir, a checkpoints dir or a step dir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
    return path, None
  raise NotACheckpointError(f"{path!r} is not a workdir, a checkpoints directory or a step "
                            "directory of ours")


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
    raise StartingPointError(f"{item} holds no 'params' (keys {sorted(tree)}): not a "
                             "training checkpoint of ours")
  sub = {"params": tree["params"]}
  restored = reader.restore(item, args=ocp.args.PyTreeRestore(
      item=jax.tree.map(lambda m: np.zeros((), m.dtype), sub),
      restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), sub),
      partial_restore=True))
  return restored["params"], f"{directory} step {step}"


def kind_of(params) -> str:
  """What one of our checkpoints holds: 'pretrain' (UniEmoX), 'finetune' (a classifier) or
  'encoder'."""
  return "pretrain" if "mae" in params else "finetune" if "head" in params else "encoder"


KIND_NAMES = {"pretrain": "a UniEmoX pre-training checkpoint",
              "finetune": "a fine-tuned classifier", "encoder": "a bare encoder"}


def peek_kind(path: str, prefer_best: bool = True) -> tuple[str, str]:
  """`(kind_of, description)` of one of our checkpoints from its metadata only (no arrays
  are read: cheap enough for `validate`)."""
  directory, step = resolve_step(path, prefer_best)
  item = os.path.join(directory, str(step), "state")
  tree = ocp.PyTreeCheckpointer().metadata(item).item_metadata.tree
  if "params" not in tree:
    raise StartingPointError(f"{item} holds no 'params' (keys {sorted(tree)}): not a "
                             "training checkpoint of ours")
  return kind_of(tree["params"]), f"{directory} step {step}"


# --------------------------------------------------------------------------------------
# Weights (config.init) into a target tree.


def _our_tree(path: str, target: str) -> tuple[dict, str]:
  """One of our checkpoints, re-rooted to the target's layout (`pretrain`: UniEmoX tree,
  `finetune`: classifier tree, `encoder`: a bare encoder)."""
  params, desc = read_params(path, prefer_best=target != "pretrain")
  kind = kind_of(params)
  if target == "pretrain":
    if kind != "pretrain":
      raise StartingPointError(
          f"config.init={path!r} ({desc}) is {KIND_NAMES[kind]}; pre-training needs "
          f"{into.EXPECTED['pretrain']} ({README_START})")
    return params, desc
  encoder = (params["mae"]["encoder"] if kind == "pretrain" else params["encoder"]
             if kind == "finetune" else params)
  if target == "encoder":
    if kind == "finetune":
      raise StartingPointError(
          f"config.init={path!r} ({desc}) is a fine-tuned classifier (its encoder has no "
          "final norm); a linear probe needs pre-trained encoder weights: a UniEmoX "
          f"pre-training run or an MAE checkpoint ({README_START})")
    return dict(encoder), desc
  out = {"encoder": dict(encoder)}
  for key in ("fc_norm", "head"):
    if kind == "finetune" and key in params:
      out[key] = params[key]
  return out, desc


def load_weights_into(path: str, target_params, *, target: str, config, allow_new: bool = True,
                      mesh=None) -> dict:
  """Loads the weights at `path` (ours or another project's) into a copy of `target_params`
  (arrays or shapes); see `weights.into.merge` for what is loaded and reported.

  The load is checked against the target (`weights.into.check_encoder`): a source that gives
  no encoder, or leaves most of it newly initialised, raises `StartingPointError` naming the
  source and what it holds, unless `config.init_allow_partial` accepts the partial load. The
  load report is logged either way.
  """
  if target not in into.TARGETS:
    raise ValueError(f"target must be one of {into.TARGETS}")
  what = f"config.init={path!r}"
  report = None
  if is_our_checkpoint(path):
    source, desc = _our_tree(path, target)
    holds = f"{desc} ({into.key_groups('/'.join(k) for k in into.flat(source))})"
    fresh = set()
  else:
    try:
      source, report = into.foreign_tree(path, target, config.model, config.seed)
    except (ValueError, FileNotFoundError, ImportError) as e:
      # What the file holds does not fit the model (wrong variant, not weights, no torch).
      raise StartingPointError(f"{what}: {e}") from e
    desc = path
    holds = into.describe_report(report)
    fresh = into.fresh_paths(source, report, target)
  result = into.merge(source, target_params, target=target, what=what,
                      variant=config.model.variant, allow_new=allow_new, fresh=fresh,
                      holds=holds, return_result=True)
  logging.info("config.init read from %s", desc)
  if report is not None and (report.missing or report.unexpected):
    logging.info("conversion report for %s:\n%s", path, report.summary())
  into.check_encoder(result, what=what, target=target, holds=holds,
                     allow_partial=bool(config.init_allow_partial))
  params = result.params
  if mesh is not None:
    from uniemox_jax import sharding  # pylint: disable=g-import-not-at-top
    params = jax.device_put(params, sharding.tree_shardings(mesh, params))
  return params


# --------------------------------------------------------------------------------------
# The start order.


@dataclasses.dataclass
class Start:
  state: Any
  step: int
  data_state: Any
  eval_pending: bool
  origin: str  # 'workdir', 'resume', 'init' or 'scratch'


def eval_pending_after_restore(checkpointer: checkpointing.Checkpointer, step: int,
                               meta: dict) -> bool:
  """Whether the evaluation due at the restored `step` was interrupted (and not redone)."""
  return bool(meta.get("eval_pending")) and checkpointer.metrics(step) is None


def restore_or_initialize(config, checkpointer: checkpointing.Checkpointer, state, shardings,
                          target: str) -> Start:
  """The start order above, for a freshly initialised (sharded) train `state`."""
  abstract = checkpointing.abstract_like(state, shardings)
  if checkpointer.all_steps():
    restored = checkpointer.restore(abstract)
    if restored is None:
      raise checkpointing.NoReadableCheckpointError(
          f"{checkpointer.directory} has checkpoints {checkpointer.all_steps()} but none could "
          f"be read ({_failures(checkpointer)}). Move that directory away to start this run "
          "over (or use another --workdir); config.resume / config.init are only used when "
          "the workdir has no checkpoints")
    logging.info("resuming from this workdir's checkpoint at step %d", restored.step)
    pending = eval_pending_after_restore(checkpointer, restored.step, restored.meta)
    return Start(restored.state, restored.step, restored.data or None, pending, "workdir")

  if config.resume:
    directory, step = checkpoint_location(config.resume)
    other = checkpointing.Checkpointer(directory, read_only=True)
    restored = other.restore(abstract, step=step)
    if restored is None:
      raise NotACheckpointError(f"config.resume={config.resume!r}: no readable checkpoint "
                                f"in {directory} ({_failures(other) or 'none there'}); "
                                f"resume takes a run of this task ({README_START})")
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


def _failures(checkpointer: checkpointing.Checkpointer) -> str:
  """`step 4: ValueError: ...; step 2: ...` for the last failed restore."""
  return "; ".join(f"step {s}: {r}" for s, r in checkpointer.restore_failures)
