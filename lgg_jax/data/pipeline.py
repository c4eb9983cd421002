"""The prepared dataset as patients' volumes, and the grain training pipeline.

Records come in (patient, slice) order (the builder's version 1.1.0), and
every volume is formed by an explicit sort on the slice number as well.

Training data order is a pure function of (seed, step) (`TrainOrder`), and
augmentation randomness is seeded per element, so a resumed run sees what an
uninterrupted one would; the grain iterator's state is saved in every
checkpoint. Each process reads only its own rows of every global batch. The
training records are held in memory at the model's size (uint8), decoded once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from lgg_jax.data import builder as builder_lib
from lgg_jax.data import augment, crops, preprocess, splits, synthetic


@dataclasses.dataclass
class Data:
  source: object              # tfds data source: record index -> decoded example
  patient_ids: np.ndarray     # per record (str)
  slice_index: np.ndarray     # per record
  has_tumor: np.ndarray       # per record
  split: splits.Split
  fingerprint: str
  version: str                # the prepared dataset's version (1.1.0: ordered records)
  manual_dir: str
  clinical: dict              # patient id -> data.csv row (may be empty)
  _volumes: dict = dataclasses.field(default_factory=dict, repr=False)

  def records(self, patient: str) -> np.ndarray:
    """The patient's record indices, in slice order."""
    mine = np.flatnonzero(self.patient_ids == patient)
    if not len(mine):
      raise KeyError(f"no patient {patient!r} in {self.manual_dir}")
    return mine[np.argsort(self.slice_index[mine], kind="stable")]

  def patients(self, indices: np.ndarray) -> list[str]:
    return sorted({str(p) for p in self.patient_ids[indices]})

  def volume(self, patient: str, cache: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (S, 256, 256, 3) slices and bool (S, 256, 256) truth, in slice order."""
    if patient in self._volumes:
      return self._volumes[patient]
    examples = [self.source[int(i)] for i in self.records(patient)]
    volume = (np.stack([e["image"] for e in examples]), np.stack([e["mask"][..., 0] > 0 for e in examples]))
    if cache:
      self._volumes[patient] = volume
    return volume

  def order_signature(self, indices: np.ndarray) -> str:
    """Names the records behind `indices` and their order: a run resumes only
    on the same records in the same order."""
    h = hashlib.sha256(self.version.encode())
    for i in indices:
      h.update(f"{self.patient_ids[i]}:{self.slice_index[i]};".encode())
    return h.hexdigest()[:16]


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


def load(config, whole: bool = False) -> Data:
  """Prepares the dataset (process 0 first, the others then find it ready);
  `whole`: every patient in test (`splits.whole`), not config.split's folds."""
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
  if whole:
    split = splits.whole(patient_ids)
  elif config.split.file:
    split = splits.from_file(config.split.file, patient_ids)
  else:
    split = splits.make_split(
        patient_ids, has_tumor, protocol=config.split.protocol, num_folds=config.split.num_folds,
        fold=config.split.fold, val_fraction=config.split.val_fraction, seed=config.split.seed)
  return Data(source=builder.as_data_source("slices"), patient_ids=patient_ids,
              slice_index=np.array([m["slice_index"] for m in meta], np.int32), has_tumor=has_tumor,
              split=split, fingerprint=pathlib.Path(builder.data_dir).parent.parent.name,
              version=str(builder.version), manual_dir=str(manual_dir),
              clinical={m["patient_id"].decode(): json.loads(m["clinical"]) for m in meta})


# --------------------------------------------------------------------------- training records

@dataclasses.dataclass
class Resident:
  """Records at the model's size, decoded once: uint8 images (N, s, s, 3) and
  masks (N, s, s) {0, 255}; per row its record index, patient number, the
  rows of its 2.5-D stack, whether it shows tumour and whether it may be
  trained on; per patient the normalisation statistics (P, 3, 4), or None.

  Every slice of a patient is resident, for its neighbours and statistics;
  under the slice protocol a patient's held-out slices are resident but not
  trainable."""
  images: np.ndarray
  masks: np.ndarray
  records: np.ndarray
  patient: np.ndarray
  neighbours: np.ndarray
  has_tumor: np.ndarray
  trainable: np.ndarray
  stats: np.ndarray | None

  @property
  def trainable_records(self) -> np.ndarray:
    return self.records[self.trainable]


def resident(data: Data, indices: np.ndarray, data_config) -> Resident:
  size, k = data_config.image_size, data_config.neighbours
  images, masks, records, patient, neighbours, stats = [], [], [], [], [], []
  for number, pid in enumerate(data.patients(indices)):
    rows = data.records(pid)
    examples = [data.source[int(i)] for i in rows]
    small = np.stack([preprocess.resize_image(e["image"], size) for e in examples])
    neighbours.append(sum(len(r) for r in records) + preprocess.neighbour_rows(len(rows), k))
    images.append(small)
    masks.append(np.stack([preprocess.resize_mask(e["mask"][..., 0], size) for e in examples]))
    records.append(rows)
    patient.append(np.full(len(rows), number, np.int32))
    stats.append(preprocess.volume_statistics(small, data_config))
  records = np.concatenate(records)
  return Resident(images=np.concatenate(images), masks=np.concatenate(masks), records=records,
                  patient=np.concatenate(patient), neighbours=np.concatenate(neighbours).astype(np.int32),
                  has_tumor=data.has_tumor[records], trainable=np.isin(records, indices),
                  stats=None if stats[0] is None else np.stack(stats))


class TrainOrder:
  """Which resident row fills each position of the training stream.

  Position e is row e % B of global batch e // B. The first
  round(tumour_fraction * B) rows of each batch, spread evenly over it, come
  from a stream of tumour rows, the rest from a stream of all `rows`; each
  stream walks through fresh seeded permutations of its rows. A pure
  function of (seed, position): resuming needs only the position.
  """
  # Kept instead of grain's MapDataset shuffle/repeat/mix: grain permutes with
  # its own index shuffle, so every run's data order (and every trained number)
  # would change; the on-device path reads this same order.

  def __init__(self, rows: np.ndarray, tumour_rows: np.ndarray, batch: int, tumour_fraction: float, seed: int):
    if not 0.0 <= tumour_fraction <= 1.0:
      raise ValueError(f"config.data.tumour_fraction={tumour_fraction} must be in [0, 1]")
    self.all_rows, self.tumour_rows, self.batch, self.seed = np.asarray(rows), np.asarray(tumour_rows), batch, seed
    self.per_batch = int(round(tumour_fraction * batch)) if len(tumour_rows) else 0
    self._permutations: dict[tuple[int, int], np.ndarray] = {}  # the last few drawn

  def _permutation(self, stream: int, cycle: int) -> np.ndarray:
    """Cached on the instance (an lru_cache on the method kept every order alive)."""
    key = (stream, cycle)
    if key not in self._permutations:
      if len(self._permutations) >= 8:
        del self._permutations[next(iter(self._permutations))]  # the oldest
      size = len(self.tumour_rows) if stream else len(self.all_rows)
      self._permutations[key] = np.random.default_rng([self.seed, stream, cycle]).permutation(size)
    return self._permutations[key]

  def is_tumour_position(self, position: int) -> bool:
    """Whether the position is filled from the tumour stream."""
    r = int(position) % self.batch
    return ((r + 1) * self.per_batch) // self.batch > (r * self.per_batch) // self.batch

  def row(self, position: int) -> int:
    step, r = divmod(int(position), self.batch)
    tumour_before = (r * self.per_batch) // self.batch
    if self.is_tumour_position(position):
      j = step * self.per_batch + tumour_before
      cycle, i = divmod(j, len(self.tumour_rows))
      return int(self.tumour_rows[self._permutation(1, cycle)[i]])
    j = step * (self.batch - self.per_batch) + (r - tumour_before)
    cycle, i = divmod(j, len(self.all_rows))
    return int(self.all_rows[self._permutation(0, cycle)[i]])

  def rows(self, step: int) -> np.ndarray:
    return np.array([self.row(step * self.batch + r) for r in range(self.batch)], np.int32)


class _Stream(grain.MapDataset):
  """The infinite stream of positions, mapped to resident rows by the order."""

  def __init__(self, order: TrainOrder):
    super().__init__()
    self._order = order

  def __len__(self):
    return np.iinfo(np.int64).max

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return index, self._order.row(index)

  def __str__(self):
    return "TrainOrder"


class _Element:
  """(position, resident row) -> uint8 example: the slice stacked with its
  neighbours; with a crop plan, the window around the position's crop."""

  def __init__(self, res: Resident, plan: crops.CropPlan | None = None):
    self.res, self.plan = res, plan

  def __call__(self, position_row: tuple[int, int]) -> dict:
    position, row = position_row
    image, mask = preprocess.stack_rows(self.res.images, self.res.neighbours[row]), self.res.masks[row]
    if self.plan is not None:
      origin = self.plan.origin(row, position)
      image = crops.cut_window(image, origin, self.plan.crop, self.plan.context)
      mask = crops.cut_window(mask, origin, self.plan.crop, self.plan.context)
    return {"image": image, "mask": mask, "index": np.int32(self.res.records[row]), "row": np.int32(row)}


class _Centre:
  """The crop from the middle of the augmented window."""

  def __init__(self, plan: crops.CropPlan):
    self.plan = plan

  def __call__(self, example: dict) -> dict:
    cut = lambda a: np.ascontiguousarray(crops.centre(a, self.plan.crop, self.plan.context))
    return {**example, "image": cut(example["image"]), "mask": cut(example["mask"])}


class _Finish:
  """Normalise (with the patient's statistics) and cast: the model's input."""

  def __init__(self, res: Resident, normalization: str):
    self.res, self.normalization = res, normalization

  def __call__(self, example: dict) -> dict:
    stats = None if self.res.stats is None else self.res.stats[self.res.patient[example["row"]]]
    return {"image": preprocess.normalise(example["image"], self.normalization, stats),
            "mask": (example["mask"] > 0).astype(np.float32)[..., None], "index": example["index"]}


class _MissingSequences:
  """With probability p, a sample's pre-contrast, post-contrast or both
  channels become FLAIR copies: 15 of the dataset's 110 patients lack a
  sequence that way, and a model that never saw one can miss them entirely."""

  def __init__(self, probability: float):
    self.probability = probability

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= self.probability:
      return example
    missing = preprocess.missing_channels(int(rng.integers(len(preprocess.MISSING_PATTERNS))))
    return {**example, "image": preprocess.copy_flair(example["image"], missing)}


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


def train_order(res: Resident, config) -> TrainOrder:
  return TrainOrder(np.flatnonzero(res.trainable), np.flatnonzero(res.has_tumor & res.trainable),
                    config.global_batch_size,
                    config.data.tumour_fraction, config.seed)


def crop_plan(res: Resident, order: TrainOrder, config) -> crops.CropPlan | None:
  """Where the training crops sit (None: whole slices)."""
  if not config.data.get("crop_size", 0):
    return None
  return crops.CropPlan(res.masks, order, config.data.crop_size, config.data.crop_context, config.seed)


def train_dataset(res: Resident, config, process_index: int = 0, process_count: int = 1):
  """Infinite iterator of this process's rows of each global batch."""
  local_batch = config.global_batch_size // process_count
  order = train_order(res, config)
  plan = crop_plan(res, order, config)
  ds = _Stream(order).map(_Element(res, plan))
  ds = ds.random_map(augment.make(config.augment), seed=config.seed + 1)
  if plan is not None:
    ds = ds.map(_Centre(plan))
  ds = ds.map(_Finish(res, config.data.normalization))
  if config.augment.missing_sequence_probability > 0:
    ds = ds.random_map(_MissingSequences(config.augment.missing_sequence_probability), seed=config.seed + 2)
  # Row r of global batch s is element s*B + r; this process reads its
  # contiguous rows of each global batch (lazily: the others are never read),
  # so global batches, their row order and their augmentations do not depend
  # on the process count.
  ds = _ProcessRows(ds, config.global_batch_size, local_batch, process_index)
  ds = ds.batch(local_batch, drop_remainder=True)
  iter_ds = ds.to_iter_dataset()
  if config.data.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(iter_ds)
