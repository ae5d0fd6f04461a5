"""Where earlier code found the MAE / UniEmoX / ViTMAE weight loaders: they live in
`uniemox_jax.weights.mae` (file reading in `uniemox_jax.weights.files`, the report in
`uniemox_jax.weights.report`). These names delegate there with the same signatures."""
from __future__ import annotations

from typing import Any, Mapping


def _mae():
  from uniemox_jax.weights import mae  # pylint: disable=g-import-not-at-top
  return mae


def __getattr__(name: str):
  # `convert.LoadReport`, `convert.RELEASED_FUSIONS`, ... (module-level names of weights.mae).
  if name.startswith("__"):
    raise AttributeError(name)
  return getattr(_mae(), name)


def read_state_dict(path):
  return _mae().read_state_dict(path)


def mae_state_dict_to_params(state_dict: Mapping[str, Any], **kwargs):
  return _mae().mae_state_dict_to_params(state_dict, **kwargs)


def load_mae_checkpoint(path, variant: str, image_size: int = 224, patch_size=None,
                        strict: bool = False, **kwargs):
  return _mae().load_mae_checkpoint(path, variant, image_size, patch_size, strict, **kwargs)


def classifier_state_dict_to_params(state_dict: Mapping[str, Any], **kwargs):
  return _mae().classifier_state_dict_to_params(state_dict, **kwargs)


def load_classifier_checkpoint(path, **kwargs):
  return _mae().load_classifier_checkpoint(path, **kwargs)


def uniemox_state_dicts_to_params(model_sd, fusion_sd, **kwargs):
  return _mae().uniemox_state_dicts_to_params(model_sd, fusion_sd, **kwargs)


def load_uniemox_checkpoint(path, **kwargs):
  return _mae().load_uniemox_checkpoint(path, **kwargs)


def params_to_mae_state_dict(params: Mapping[str, Any], *, image_size: int = 224):
  return _mae().params_to_mae_state_dict(params, image_size=image_size)


def detect_fusion(fusion_sd: Mapping[str, Any]):
  return _mae().detect_fusion(fusion_sd)
