"""A trained model people can use from Python.

    from lgg_jax import Segmenter
    seg = Segmenter.load("runs/recipe_cpu")           # a run folder, an export, or a list (ensemble)
    probabilities = seg.predict(volume)                # uint8 (S, 256, 256, 3), slices in order
    masks = seg.predict(volume, masks=True)            # bool, at the model's validated threshold

A thin wrapper over the inference layer: normalisation, input size and 2.5-D
neighbours come from each model's own config, so a model trained with newer
settings loads without change here. Only parameters and BatchNorm
statistics are restored.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from lgg_jax import inference, parallel, state

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
  settings = json.loads((folder / INFERENCE_FILE).read_text()) if (folder / INFERENCE_FILE).is_file() else {}
  return inference.Member(config, graphdef, variables, settings.get("step"), str(folder), settings.get("threshold"))


def load_member(path, checkpoint: str = "best", mesh=None) -> inference.Member:
  path = pathlib.Path(path).expanduser()
  if (path / WEIGHTS_FILE).is_file():
    return member_from_export(path, mesh)
  if (path / CONFIG_FILE).is_file():
    return inference.member_from_run(path, checkpoint, mesh)
  raise FileNotFoundError(f"{path} is neither a run folder nor an exported model (no {CONFIG_FILE})")


class Segmenter:
  """Probabilities (and masks) for a patient's slices; several models: their mean."""

  def __init__(self, members: list[inference.Member], mesh=None):
    self.members = list(members)
    self.mesh = mesh or parallel.make_mesh()
    self._predictors = {}

  @classmethod
  def load(cls, path: str | os.PathLike | list, checkpoint: str = "best") -> Segmenter:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    mesh = parallel.make_mesh()
    return cls([load_member(p, checkpoint, mesh) for p in paths], mesh)

  @property
  def threshold(self) -> float:
    return float(np.mean([m.threshold for m in self.members]))

  @property
  def tta(self) -> str:
    return self.members[0].config.inference.tta

  def predict(self, volume: np.ndarray, *, tta: str | None = None, masks: bool = False,
              threshold: float | None = None) -> np.ndarray:
    """uint8 (S, 256, 256, 3) slices in slice order -> float32 probabilities
    (S, 256, 256), or bool masks at `threshold` (default: the models')."""
    tta = self.tta if tta is None else tta
    if tta not in self._predictors:
      self._predictors[tta] = inference.Predictor(self.members, self.mesh, tta)
    probabilities = self._predictors[tta].predict_volume(volume)
    if masks:
      return probabilities >= (self.threshold if threshold is None else threshold)
    return probabilities
