"""A trained model people can use from Python.

    from lgg_jax import Segmenter
    seg = Segmenter.load("runs/recipe_cpu")           # a run folder, an export, or a list (ensemble)
    seg = Segmenter.load("pretrained:recipe_cpu")     # the ensemble shipped with lgg_jax
    probabilities = seg.predict(volume)                # uint8 (S, 256, 256, 3), slices in order
    masks = seg.predict(volume, masks=True)            # bool, post-processed exactly as the model was scored

A thin wrapper over the inference layer: normalisation, input size and 2.5-D
neighbours come from each model's own config, and masks from
`inference.postprocess` with the settings the model was scored with (a
run's summary.json, an export's inference.json: threshold, TTA, component
step), so a user gets the masks that were measured. Only parameters and
BatchNorm statistics are restored.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from lgg_jax import inference, parallel, pretrained, state

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
INFERENCE_FILE = "inference.json"


def flatten_variables(variables: dict) -> dict[str, np.ndarray]:
  """{"params/encoder/conv1/kernel": array, ...}: safetensors' flat names."""
  return {"/".join(str(k) for k in path): np.asarray(v)
          for path, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}


def member_from_export(folder, mesh=None) -> inference.Member:
  """An exported model (lgg_jax.export): its config, weights and threshold."""
  folder = pathlib.Path(folder).expanduser()
  for name in (CONFIG_FILE, WEIGHTS_FILE):
    if not (folder / name).is_file():
      raise FileNotFoundError(f"{folder} is not an exported model: no {name}")
  config = state.config_from_dict(json.loads((folder / CONFIG_FILE).read_text()))
  graphdef, shapes = state.abstract_variables(config)
  try:
    tensors = load_file(str(folder / WEIGHTS_FILE))
  except Exception as e:  # safetensors raises its own error types for broken files
    raise ValueError(f"{folder / WEIGHTS_FILE}: unreadable safetensors file ({e})") from e
  flat = {}
  for path, shape in traverse_util.flatten_dict(shapes, keep_empty_nodes=True).items():
    if shape is traverse_util.empty_node:  # e.g. no BatchNorm statistics in a plain U-Net
      flat[path] = shape
      continue
    key = "/".join(str(k) for k in path)
    if key not in tensors:
      raise ValueError(f"{folder / WEIGHTS_FILE}: no tensor {key!r} (the config's model needs it)")
    if tensors[key].shape != shape.shape:
      raise ValueError(f"{folder / WEIGHTS_FILE}: tensor {key!r} has shape {tensors[key].shape}, "
                       f"the model needs {shape.shape}")
    flat[path] = tensors[key].astype(shape.dtype)
  variables = parallel.replicate(traverse_util.unflatten_dict(flat), mesh or parallel.make_mesh())
  saved = json.loads((folder / INFERENCE_FILE).read_text()) if (folder / INFERENCE_FILE).is_file() else {}
  settings = inference.Settings.from_dict(saved, inference.Settings.from_config(config))
  return inference.Member(config, graphdef, variables, saved.get("step"), str(folder), settings)


def load_member(path, checkpoint: str = "best", mesh=None) -> inference.Member:
  path = pathlib.Path(path).expanduser()
  if (path / WEIGHTS_FILE).is_file():
    return member_from_export(path, mesh)
  if (path / CONFIG_FILE).is_file():
    return inference.member_from_run(path, checkpoint, mesh)
  raise FileNotFoundError(f"{path} is not a run folder or an exported model (no {CONFIG_FILE})")


def model_paths(models) -> list:
  """Run folders and exports, each named model ("pretrained:recipe_cpu")
  replaced by its members' folders (checked against its SHA256SUMS)."""
  items = [models] if isinstance(models, (str, os.PathLike)) else list(models)
  paths = []
  for item in items:
    paths += pretrained.resolve(item) if pretrained.is_pretrained_name(item) else [item]
  if not paths:
    raise ValueError("no model given")
  return paths


def cli_models(values: list[str]) -> list[str]:
  """--model values: 'pretrained' means the shipped ensemble (pretrained.DEFAULT)."""
  return [pretrained.DEFAULT if v == "pretrained" else v for v in values]


def load_members(models, checkpoint: str = "best", mesh=None) -> list[inference.Member]:
  """Run folders, exports and named pretrained models (one or a list)."""
  paths = model_paths(models)
  mesh = mesh or parallel.make_mesh()
  return [load_member(p, checkpoint, mesh) for p in paths]


class Segmenter:
  """Probabilities and masks for a patient's slices; several models: their
  mean, with one setting for the ensemble (`inference.ensemble_settings`)."""

  def __init__(self, members: list[inference.Member], mesh=None):
    self.members = list(members)
    self.mesh = mesh or parallel.make_mesh()
    self.settings = inference.ensemble_settings(self.members)
    self._predictors = {}

  @classmethod
  def load(cls, path: str | os.PathLike | list, checkpoint: str = "best") -> Segmenter:
    mesh = parallel.make_mesh()
    return cls(load_members(path, checkpoint, mesh), mesh)

  @property
  def threshold(self) -> float:
    return self.settings.threshold

  @property
  def tta(self) -> str:
    return self.settings.tta

  def segment(self, volume: np.ndarray, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """(float32 probabilities, bool masks), each (S, 256, 256), of uint8 (S,
    256, 256, 3) slices in slice order; keyword overrides (threshold, tta,
    largest_component, component_fraction, component_rank) replace the models' settings."""
    settings = self.settings.replace(**overrides)
    probabilities = self._probabilities(volume, settings.tta)
    return probabilities, inference.postprocess(probabilities, settings)

  def _probabilities(self, volume: np.ndarray, tta: str) -> np.ndarray:
    if tta not in self._predictors:  # one compiled step per TTA mode
      self._predictors[tta] = inference.Predictor(self.members, self.mesh, self.settings.replace(tta=tta))
    return self._predictors[tta].predict_volume(volume)

  def predict(self, volume: np.ndarray, *, masks: bool = False, tta: str | None = None,
              threshold: float | None = None, largest_component: bool | None = None,
              component_fraction: float | None = None, component_rank: str | None = None) -> np.ndarray:
    """Probabilities, or with `masks=True` the post-processed masks."""
    if not masks:  # no post-processing to pay for
      return self._probabilities(volume, self.settings.tta if tta is None else tta)
    return self.segment(volume, tta=tta, threshold=threshold, largest_component=largest_component,
                        component_fraction=component_fraction, component_rank=component_rank)[1]
