"""Grain input pipeline over the prepared TFDS data source.

Training data order is a pure function of (seed, step): the record order is
a seeded shuffle reshuffled each epoch (grain's `repeat` reseeds), and
augmentation randomness is seeded per element. The grain iterator's state is
saved in every checkpoint, so a resumed run sees what an uninterrupted one
would. Each process reads only its own rows of every global batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import cv2
import grain
import numpy as np
import tensorflow_datasets as tfds

from lgg_jax.data import augment as augment_lib
from lgg_jax.data import builder as builder_lib
from lgg_jax.data import kaggle, splits, synthetic


@dataclasses.dataclass
class Data:
  source: object              # tfds data source: record index -> decoded example
  patient_ids: np.ndarray     # per record (str)
  slice_index: np.ndarray     # per record
  has_tumor: np.ndarray       # per record
  split: splits.Split
  fingerprint: str
  manual_dir: str
  clinical: dict              # patient id -> data.csv row (may be empty)


def resolve_manual_dir(data_config) -> pathlib.Path:
  """The configured folder, or the embedded synthetic dataset (made once)."""
  if data_config.manual_dir:
    return pathlib.Path(data_config.manual_dir).expanduser()
  spec = synthetic.SyntheticSpec(**data_config.synthetic.to_dict())
  root = pathlib.Path(data_config.data_dir).expanduser() / spec.name
  if not (root / "kaggle_3m").exists():
    logging.info("no manual_dir configured: writing the synthetic dataset %s to %s", spec.name, root)
  synthetic.write_dataset(root, spec)
  return root


def _prepare(config):
  manual_dir = resolve_manual_dir(config.data)
  return manual_dir, builder_lib.build(manual_dir, pathlib.Path(config.data.data_dir).expanduser() / "tfds")


def load(config) -> Data:
  """Prepares the dataset (process 0 first, the others then find it ready)."""
  import jax
  from jax.experimental import multihost_utils
  tfds.disable_progress_bar()
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _prepare(config)
    multihost_utils.sync_global_devices("lgg_jax: dataset prepared")
  manual_dir, builder = _prepare(config)
  meta_source = builder.as_data_source(
      "slices", decoders={"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()})
  # One pass over the records without decoding pixels.
  meta = [meta_source[i] for i in range(len(meta_source))]
  patient_ids = np.array([m["patient_id"].decode() for m in meta])
  has_tumor = np.array([m["has_tumor"] for m in meta], bool)
  split = splits.make_split(
      patient_ids, has_tumor, protocol=config.split.protocol, num_folds=config.split.num_folds,
      fold=config.split.fold, val_fraction=config.split.val_fraction, seed=config.split.seed)
  return Data(source=builder.as_data_source("slices"), patient_ids=patient_ids,
              slice_index=np.array([m["slice_index"] for m in meta], np.int32), has_tumor=has_tumor,
              split=split, fingerprint=pathlib.Path(builder.data_dir).parent.parent.name,
              manual_dir=str(manual_dir),
              clinical={m["patient_id"].decode(): json.loads(m["clinical"]) for m in meta})


_PADDING = {"image": np.zeros(kaggle.IMAGE_SHAPE, np.uint8),
            "mask": np.zeros(kaggle.IMAGE_SHAPE[:2] + (1,), np.uint8), "index": np.int32(-1)}


class _Records:
  """A view of the source restricted to some records; index -1 is padding."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    index = int(self._indices[i])
    if index < 0:
      return _PADDING
    example = self._source[index]
    return {"image": example["image"], "mask": example["mask"], "index": np.int32(index)}


NORMALIZATIONS = ("slice", "unit")


def normalise(image: np.ndarray, mode: str) -> np.ndarray:
  image = image.astype(np.float32)
  if mode == "unit":
    return image / 255.0
  if mode == "slice":  # per-channel z-score: removes per-patient gain
    mean = image.mean(axis=(0, 1), keepdims=True)
    std = image.std(axis=(0, 1), keepdims=True)
    return (image - mean) / (std + 1.0)
  raise ValueError(f"config.data.normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def resize(example: dict, size: int) -> dict:
  """Image (area) and mask (area, then >= 50%) at the model's size."""
  image, mask = example["image"], example["mask"][..., 0]
  if image.shape[0] != size:
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    mask = np.where(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA) >= 128, 255, 0)
  return {"image": image, "mask": mask.astype(np.uint8), "index": example["index"]}


def _finish(example: dict, normalization: str) -> dict:
  return {"image": normalise(example["image"], normalization),
          "mask": (example["mask"] > 0).astype(np.float32)[..., None],
          "index": example["index"]}


class _ProcessRows(grain.MapDataset):
  """Element k of this process: row k % local of its share of global batch k // local."""

  def __init__(self, parent, global_batch: int, local_batch: int, process_index: int):
    super().__init__(parent)
    self._global, self._local, self._offset = global_batch, local_batch, process_index * local_batch

  def __len__(self):
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._global + self._offset + row]

  def __str__(self):
    return f"ProcessRows(global={self._global}, local={self._local}, offset={self._offset})"


def train_dataset(data: Data, config, process_index: int = 0, process_count: int = 1):
  """Infinite iterator of this process's rows of each global batch."""
  local_batch = config.global_batch_size // process_count
  size, normalization = config.data.image_size, config.data.normalization
  augmenter = augment_lib.make(config.augment)
  ds = grain.MapDataset.source(_Records(data.source, data.split.train))
  ds = ds.shuffle(seed=config.seed).repeat(None)
  ds = ds.map(lambda e: resize(e, size))
  ds = ds.random_map(augmenter, seed=config.seed + 1)
  # Row r of global batch s is element s*B + r; this process reads its
  # contiguous rows of each global batch (lazily: the others are never read),
  # so global batches, their row order and their augmentations do not depend
  # on the process count.
  ds = _ProcessRows(ds, config.global_batch_size, local_batch, process_index)
  ds = ds.map(lambda e: _finish(e, normalization))
  ds = ds.batch(local_batch, drop_remainder=True)
  iter_ds = ds.to_iter_dataset()
  if config.data.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(iter_ds)


def eval_batches(data: Data, indices: np.ndarray, config, process_index: int = 0,
                 process_count: int = 1):
  """Yields this process's rows of padded global batches; padding has index -1."""
  batch = config.eval_batch_size
  local = batch // process_count
  n = -(-len(indices) // batch) * batch
  padded = np.full(n, -1, np.int64)
  padded[:len(indices)] = indices
  mine = padded.reshape(-1, process_count, local)[:, process_index].ravel()
  size, normalization = config.data.image_size, config.data.normalization
  ds = grain.MapDataset.source(_Records(data.source, mine))
  ds = ds.map(lambda e: _finish(resize(e, size), normalization))
  return iter(ds.batch(local, drop_remainder=False).to_iter_dataset())
