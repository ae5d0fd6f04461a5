"""The one reader of weight files, whatever project wrote them.

`read(path)` understands:
  * a Hugging Face model directory: `config.json` (optional here; a layout may require it)
    and `model.safetensors`, `pytorch_model.bin`, or a sharded `*.index.json` with its shards;
  * `.safetensors` files (bfloat16 ones too, which `safetensors.numpy` refuses);
  * `.npz` files (no pickles);
  * PyTorch pickles (`.pth`, `.pt`, `.bin`) read with `torch.load(weights_only=True)`: nothing
    but tensors, containers and an argparse Namespace (training checkpoints pickle their
    arguments) can be unpickled;
  * TorchScript archives (OpenAI's released CLIP files), told apart from pickles by their
    contents.

What a file holds is then unwrapped into the model's state dict: `{'model': sd, 'att_fusion':
sd2, 'optimizer': ..., 'args': ...}` (training checkpoints: `model` plus the other state
dicts as groups), `{'state_dict': sd}` (open_clip, Lightning), a bare state dict, or a flat
file whose keys are prefixed `model.` / `att_fusion.` (our safetensors exports of such
checkpoints). DistributedDataParallel's `module.` prefixes are stripped and floating-point
tensors become float32 numpy arrays. PyTorch is imported only for pickles and TorchScript.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np

StateDict = dict[str, np.ndarray]

# A Hugging Face directory's weights, in the order they are looked for.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")

# Top-level entries of a training checkpoint that are not weights of a model.
NON_WEIGHT_ENTRIES = ("optimizer", "scaler", "args", "epoch", "lr_scheduler", "amp_scaler",
                      "config")


@dataclasses.dataclass
class Weights:
  """What `read` found.

  Attributes:
    source: the path given.
    format: how it was read ('safetensors', 'npz', 'torch', 'torchscript'; 'HF <file>' for
      a Hugging Face directory).
    tensors: the model's state dict (`module.` stripped, floats as float32).
    groups: other state dicts in the file by name (e.g. `att_fusion`).
    hf_config: the directory's `config.json`, when there is one.
    files: the files read.
    notes: what a reader of a particular layout noticed (renamed keys, partial q/k/v).
  """
  source: str
  format: str
  tensors: StateDict
  groups: dict[str, StateDict]
  hf_config: dict | None
  files: list[str]
  notes: list[str] = dataclasses.field(default_factory=list)


def hf_weight_files(directory: str) -> list[str]:
  """The weight files of a Hugging Face directory (the shards an index lists, in order)."""
  for name in HF_WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      if not name.endswith(".index.json"):
        return [path]
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
      shards = [os.path.join(directory, s) for s in sorted(set(weight_map.values()))]
      for shard in shards:
        if not os.path.isfile(shard):
          raise FileNotFoundError(f"{shard} (listed in the shard index {path}) does not exist.")
      return shards
  found = sorted(os.listdir(directory))
  raise FileNotFoundError(
      f"{directory!r} holds no model.safetensors(.index.json) or pytorch_model.bin(.index.json) "
      f"(found {found[:12]}); pass a Hugging Face model directory or the checkpoint file itself")


def read(path: str | os.PathLike, what: str = "checkpoint") -> Weights:
  """Reads a weight file or a Hugging Face directory (see the module docstring).

  `what` names the thing in error messages ('CLIP weights', 'checkpoint').
  """
  path = os.fspath(os.path.expanduser(os.fspath(path)))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {path!r} does not exist")
  hf_config = None
  if os.path.isdir(path):
    files = hf_weight_files(path)
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
      with open(config_file) as f:
        hf_config = json.load(f)
    raw: dict[str, Any] = {}
    for file in files:
      content, _ = read_file(file)
      raw.update(content)
    fmt = f"HF {os.path.basename(files[0])}" + (
        f" (+{len(files) - 1} shards)" if len(files) > 1 else "")
  else:
    files = [path]
    raw, fmt = read_file(path)
  tensors, groups = split_groups(raw, path)
  return Weights(path, fmt, tensors, groups, hf_config, files)


def read_file(file: str) -> tuple[Any, str]:
  """`(what the file holds, format)` for one file, by its contents and suffix."""
  if file.endswith(".safetensors"):
    return read_safetensors(file), "safetensors"
  if file.endswith(".npz"):
    with np.load(file, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}, "npz"
  if _is_torchscript(file):
    return _read_torchscript(file), "torchscript"
  return _read_torch(file), "torch"


def read_safetensors(file: str) -> StateDict:
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  try:
    return st_numpy.load_file(file)
  except TypeError:
    # numpy has no bfloat16: safetensors.numpy refuses such files. Parse the (simple) format.
    return _read_safetensors_raw(file)


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _read_safetensors_raw(file: str) -> StateDict:
  """safetensors: 8-byte little-endian header size, a JSON header, then the raw tensors."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
  with open(file, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(
        info["shape"])
  return out


def _import_torch(file: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {file!r} (a PyTorch checkpoint) needs PyTorch; install it, or convert the "
        "file to .safetensors on a machine that has it") from e
  return torch


def _is_torchscript(file: str) -> bool:
  """TorchScript archives are zip files with `code/` and `constants.pkl`; `torch.save` zips
  hold `data.pkl` only."""
  if not zipfile.is_zipfile(file):
    return False
  with zipfile.ZipFile(file) as z:
    return any(n.endswith("/constants.pkl") for n in z.namelist())


def _read_torchscript(file: str) -> dict[str, Any]:
  torch = _import_torch(file)
  with warnings.catch_warnings():
    # OpenAI's released files are TorchScript archives; torch marks the reader deprecated
    # but it is the only way to open them.
    warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
    module = torch.jit.load(file, map_location="cpu")
  return dict(module.state_dict())


def _read_torch(file: str) -> Any:
  torch = _import_torch(file)
  # Training checkpoints also pickle their argparse Namespace: allow that class, and nothing
  # else that could run code.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(file, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle raises several types; name the file and the way out.
    raise ValueError(
        f"could not read {file!r} with torch.load(weights_only=True): {e}. We do not unpickle "
        "arbitrary objects; re-save the checkpoint as {'model': model.state_dict()} (or as "
        ".safetensors) where you trust it") from e


def is_tensor(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list))


def to_numpy(x) -> np.ndarray:
  """A torch tensor / numpy array / number → numpy; floating point becomes float32."""
  if type(x).__module__.startswith("torch"):
    x = x.detach().cpu()
    if x.is_floating_point():
      x = x.float()
    x = x.numpy()
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
    x = x.astype(np.float32)
  return x


def strip_module(key: str) -> str:
  """Removes DistributedDataParallel's `module.` prefixes."""
  while key.startswith("module."):
    key = key[len("module."):]
  return key


def clean(sd: Mapping[str, Any]) -> StateDict:
  """The tensors of `sd` as numpy (floats float32), without `module.` prefixes."""
  return {strip_module(k): to_numpy(v) for k, v in sd.items() if is_tensor(v)}


def split_groups(raw: Any, source: str) -> tuple[StateDict, dict[str, StateDict]]:
  """`(model state dict, {group: state dict})` from whatever a checkpoint file held."""
  if not isinstance(raw, Mapping):
    raise ValueError(f"{source}: expected a dict of tensors, found {type(raw).__name__}")
  if isinstance(raw.get("model"), Mapping):
    groups = {k: clean(v) for k, v in raw.items()
              if k != "model" and k not in NON_WEIGHT_ENTRIES and isinstance(v, Mapping)
              and any(is_tensor(t) for t in v.values())}
    return clean(raw["model"]), groups
  if isinstance(raw.get("state_dict"), Mapping):
    return clean(raw["state_dict"]), {}
  tensors = {strip_module(k): v for k, v in raw.items() if is_tensor(v)}
  if not tensors:
    raise ValueError(f"{source}: no tensors found (top-level entries: {sorted(raw)[:20]})")
  if any(k.startswith("model.") for k in tensors):
    # A flat file may hold several state dicts as `model.<key>`, `att_fusion.<key>`.
    split: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
      group, _, rest = key.partition(".")
      split.setdefault(group, {})[rest] = value
    model = split.pop("model")
    return clean(model), {k: clean(v) for k, v in split.items()}
  return clean(tensors), {}


def content_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
  """sha256 (hex) of the weights `read(path)` would read (and, for a directory, its
  `config.json` and shard index), each file hashed with its name and size. Streamed."""
  path = os.fspath(os.path.expanduser(os.fspath(path)))
  if not os.path.exists(path):
    raise FileNotFoundError(f"no weights at {path!r}")
  if os.path.isdir(path):
    files = hf_weight_files(path)
    extra = [os.path.join(path, n) for n in ("config.json",) + HF_WEIGHT_FILES
             if n == "config.json" or n.endswith(".index.json")]
    files = [f for f in extra[:1] if os.path.isfile(f)] + files + [
        f for f in extra[1:] if os.path.isfile(f)]
  else:
    files = [path]
  digest = hashlib.sha256()
  for f in files:
    if os.path.isdir(path):
      digest.update(f"{os.path.basename(f)}\0{os.path.getsize(f)}\0".encode())
    with open(f, "rb") as fh:
      while chunk := fh.read(chunk_bytes):
        digest.update(chunk)
  return digest.hexdigest()
