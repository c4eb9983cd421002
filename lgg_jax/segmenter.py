"""A trained model people can use from Python.

    from lgg_jax import Segmenter
    seg = Segmenter.load("runs/recipe_cpu")           # a run folder, an export, or a list (ensemble)
    seg = Segmenter.load("pretrained:recipe_cpu")     # the ensemble shipped with lgg_jax
    probabilities = seg.predict(volume)                # uint8 (S, 256, 256, 3), slices in order
    masks = seg.predict(volume, masks=True)            # bool, post-processed exactly as the model was scored
    assessed = seg.assess(volume)                      # masks, probabilities, uncertainty map, quality estimate

A thin wrapper over the inference layer: normalisation, input size and 2.5-D
neighbours come from each model's own config, and masks from
`inference.postprocess` with the settings the model was scored with (a
run's summary.json, an export's inference.json: threshold, TTA, component
step), so a user gets the masks that were measured. Only parameters and
BatchNorm statistics are restored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from lgg_jax import inference, parallel, pretrained, quality, state

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
  config = state.config_from_dict(json.loads((folder / CONFIG_FILE).read_text()), str(folder / CONFIG_FILE))
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


def quality_rule(models, member_count: int) -> quality.Rule:
  """The quality rule stored with the models: a pretrained model's own
  quality.json, else the first export's (a single model's), else the
  defaults (quality.DEFAULT_ENSEMBLE or quality.DEFAULT_SINGLE)."""
  items = [models] if isinstance(models, (str, os.PathLike)) else list(models)
  folders = [pretrained.model_dir(i) for i in items if pretrained.is_pretrained_name(i)]
  if member_count == 1:
    folders += [pathlib.Path(i).expanduser() for i in items if not pretrained.is_pretrained_name(i)]
  for folder in folders:
    rule = quality.Rule.load(folder)
    if rule is not None:
      return rule
  return quality.DEFAULT_ENSEMBLE if member_count > 1 else quality.DEFAULT_SINGLE


@dataclasses.dataclass
class Assessment:
  """What `Segmenter.assess` returns for one patient."""
  masks: np.ndarray          # bool (S, 256, 256), post-processed as the model was scored
  probabilities: np.ndarray  # float32 (S, 256, 256)
  uncertainty: np.ndarray    # float32 (S, 256, 256): the members' spread, or the two views' for one model
  estimate: quality.Estimate


class Segmenter:
  """Probabilities and masks for a patient's slices; several models: their
  mean, with one setting for the ensemble (`inference.ensemble_settings`)."""

  def __init__(self, members: list[inference.Member], mesh=None, rule: quality.Rule | None = None,
               settings: inference.Settings | None = None):
    self.members = list(members)
    self.mesh = mesh or parallel.make_mesh()
    self.settings = settings or inference.ensemble_settings(self.members)
    self.rule = rule or (quality.DEFAULT_ENSEMBLE if len(self.members) > 1 else quality.DEFAULT_SINGLE)
    self._predictors = {}

  @classmethod
  def load(cls, path: str | os.PathLike | list, checkpoint: str = "best") -> Segmenter:
    mesh = parallel.make_mesh()
    members = load_members(path, checkpoint, mesh)
    return cls(members, mesh, quality_rule(path, len(members)))

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

  def _predictor(self, tta: str) -> inference.Predictor:
    if tta not in self._predictors:  # one compiled step per TTA mode
      self._predictors[tta] = inference.Predictor(self.members, self.mesh, self.settings.replace(tta=tta))
    return self._predictors[tta]

  def _probabilities(self, volume: np.ndarray, tta: str) -> np.ndarray:
    return self._predictor(tta).predict_volume(volume)

  def assess(self, volume: np.ndarray, **overrides) -> Assessment:
    """Masks, probabilities, a voxel-wise uncertainty map and the quality
    estimate of one patient (`lgg_jax.quality`). An ensemble's members are
    run one by one, as for its mean: no extra pass; a single model runs once
    more, without TTA, on the mirrored volume (its second view: with the
    dihedral TTA's own views the mirrored volume would give the same mean)."""
    settings = self.settings.replace(**overrides)
    predictor = self._predictor(settings.tta)
    if len(self.members) > 1:
      members = predictor.member_probabilities(volume)
      probabilities = predictor.mean(members)  # what predict_volume gives, bit for bit
      masks = inference.postprocess(probabilities, settings)
      spread = quality.uncertainty(np.stack(members))
      estimate = quality.estimate(probabilities, masks, settings, self.rule,
                                  member_masks=[inference.postprocess(p, settings) for p in members])
    else:
      probabilities = predictor.predict_volume(volume)
      mirrored = self._predictor("none").mirrored_probabilities(volume)
      masks = inference.postprocess(probabilities, settings)
      spread = quality.uncertainty(np.stack([probabilities, mirrored]))
      estimate = quality.estimate(probabilities, masks, settings, self.rule,
                                  view_masks=[inference.postprocess(mirrored, settings)])
    return Assessment(masks, probabilities, spread, estimate)

  def predict(self, volume: np.ndarray, *, masks: bool = False, tta: str | None = None,
              threshold: float | None = None, largest_component: bool | None = None,
              component_fraction: float | None = None, component_rank: str | None = None) -> np.ndarray:
    """Probabilities, or with `masks=True` the post-processed masks."""
    if not masks:  # no post-processing to pay for
      return self._probabilities(volume, self.settings.tta if tta is None else tta)
    return self.segment(volume, tta=tta, threshold=threshold, largest_component=largest_component,
                        component_fraction=component_fraction, component_rank=component_rank)[1]
