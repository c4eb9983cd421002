"""Trained models for inference: run folders, exports and the shipped ensemble.

Each loader returns `inference.Member`s: a config, a graphdef, replicated
variables and the settings the model was scored with (a run's summary.json,
an export's inference.json), so every way masks leave the library starts
from the same members. `Segmenter` is the public face over these loaders.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from lgg_jax import inference, parallel, pretrained, quality, state
from lgg_jax.data import kaggle

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
INFERENCE_FILE = "inference.json"


def member_from_run(workdir, checkpoint: str = "best", mesh=None) -> inference.Member:
  """A run's checkpoint with the settings its test figures were scored with
  (summary.json's `inference`: a threshold chosen on validation included),
  else its config's."""
  config, graphdef, variables, step = state.restore_variables(workdir, checkpoint, mesh)
  summary = pathlib.Path(workdir) / "summary.json"
  settings = inference.Settings.from_config(config)
  if summary.is_file():
    settings = inference.Settings.from_dict(state.read_json(summary).get("inference", {}), settings)
  return inference.Member(config, graphdef, variables, step, str(workdir), settings)


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
  config = state.config_from_dict(state.read_json(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
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
  saved = state.read_json(folder / INFERENCE_FILE) if (folder / INFERENCE_FILE).is_file() else {}
  settings = inference.Settings.from_dict(saved, inference.Settings.from_config(config))
  return inference.Member(config, graphdef, variables, saved.get("step"), str(folder), settings)


def load_member(path, checkpoint: str = "best", mesh=None) -> inference.Member:
  path = pathlib.Path(path).expanduser()
  if (path / WEIGHTS_FILE).is_file():
    return member_from_export(path, mesh)
  if (path / CONFIG_FILE).is_file():
    return member_from_run(path, checkpoint, mesh)
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
  """The quality rule stored with the models: the quality.json of one
  pretrained name (measured on that whole ensemble) or of one export, else
  the defaults (quality.DEFAULT_ENSEMBLE or quality.DEFAULT_SINGLE). A rule
  was measured on its own members, so models mixed with others take the
  defaults: a threshold fitted to one ensemble's agreement does not carry."""
  items = [models] if isinstance(models, (str, os.PathLike)) else list(models)
  default = quality.DEFAULT_ENSEMBLE if member_count > 1 else quality.DEFAULT_SINGLE
  if len(items) != 1:
    if any(pretrained.is_pretrained_name(i) for i in items):
      logging.warning("quality rule: %s mixes a pretrained ensemble with other models; its measured rule is "
                      "not used (default %s %.4g)", ",".join(map(str, items)), default.signal, default.review_threshold)
    return default
  [item] = items
  folder = pretrained.model_dir(item) if pretrained.is_pretrained_name(item) else pathlib.Path(item).expanduser()
  return quality.Rule.load(folder) or default


# --------------------------------------------------------------------------- held-out patients

_CARD_SPLIT = {name: re.compile(rf"^- {name}: (.*)$", re.MULTILINE) for name in ("train", "val", "test")}


def _split_lists(model: pathlib.Path) -> tuple[pathlib.Path, dict[str, list[str]], str | None]:
  """(where, {"train", "val", "test": patients}, protocol): split.json (run
  folders write it), else the "- train/val/test: ..." lines of an export's
  model_card.md (protocol None: the card's split line names it)."""
  split = model / "split.json"
  if split.is_file():
    try:
      listed = json.loads(split.read_text())
      lists = {name: [str(p) for p in listed.get(name, [])] for name in ("train", "val")}
      lists["test"] = [str(p) for p in listed["test"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise kaggle.DataError(f"{split}: no readable \"test\" list of patients ({e})") from e
    return split, lists, listed.get("protocol", "patient")
  card = model / "model_card.md"
  if card.is_file():
    text = card.read_text()
    found = {name: pattern.search(text) for name, pattern in _CARD_SPLIT.items()}
    if found["test"]:
      protocol = re.search(r"^- split by patient \((\w+)\)", text, re.MULTILINE)
      return card, {name: [p.strip() for p in m.group(1).split(",") if p.strip()] if m else []
                    for name, m in found.items()}, protocol.group(1) if protocol else None
  raise kaggle.DataError(f"{model}: no split.json and no model_card.md listing the test patients; cross-validated "
                  f"masks need each model's held-out patients (pass run folders)")


def held_out_patients(model: pathlib.Path) -> list[str]:
  """The patients a model held out; an error if it trained on any of them
  (a slice-protocol split puts a patient's slices in train and test)."""
  where, lists, protocol = _split_lists(model)
  if protocol not in (None, "patient"):
    raise kaggle.DataError(f"{where}: split protocol {protocol!r}; its test patients also have slices in train, so "
                    "their masks would not be cross-validated (use runs split by patient)")
  seen = (set(lists["test"]) & set(lists["train"])) | (set(lists["test"]) & set(lists["val"]))
  if seen:
    raise kaggle.DataError(f"{where}: {len(seen)} test patient(s) also in train or val ({', '.join(sorted(seen)[:5])}); "
                    "their masks would not be cross-validated")
  return lists["test"]
