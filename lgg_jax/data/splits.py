"""Train / validation / test splits.

A split can also come from a file (`config.split.file`, nnU-Net's
splits_final.json habit): JSON with "train", "val" and "test" lists of
patient ids. Every run writes the split it used as workdir/split.json, so
folds can be shared and reproduced.

`patient`: K-fold over patients (fold `fold` is the test set), stratified by
each patient's fraction of tumour slices; validation patients come from the
remaining folds. No patient is in two splits, and the split depends only on
the sorted patient ids, their tumour fractions and the seed.

`slice`: the seed notebook's slice-level split, where one patient's slices
land in train and test alike. It inflates Dice; it exists only so the
leakage ablation can measure by how much.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import numpy as np

from lgg_jax import choices


PROTOCOLS = ("patient", "slice")


@dataclasses.dataclass(frozen=True)
class Split:
  train: np.ndarray   # record indices
  val: np.ndarray
  test: np.ndarray
  patients: dict      # split name -> sorted patient ids it contains

  def summary(self) -> dict:
    return {name: {"slices": int(len(getattr(self, name))), "patients": len(self.patients[name])}
            for name in ("train", "val", "test")}


def check_settings(protocol: str, num_folds: int, fold: int, val_fraction: float) -> None:
  choices.check("config.split.protocol", protocol, PROTOCOLS)
  if num_folds < 2:
    raise ValueError(f"config.split.num_folds must be >= 2, got {num_folds}")
  if not 0 <= fold < num_folds:
    raise ValueError(f"config.split.fold must be in [0, {num_folds}), got {fold}")
  if not 0 < val_fraction < 1:
    raise ValueError(f"config.split.val_fraction must be in (0, 1), got {val_fraction}")


def check(split_config) -> None:
  """config.split's folds, before any data is read."""
  check_settings(split_config.protocol, split_config.num_folds, split_config.fold, split_config.val_fraction)


def make_split(patient_ids: np.ndarray, has_tumor: np.ndarray, *, protocol: str = "patient",
               num_folds: int = 5, fold: int = 0, val_fraction: float = 0.15, seed: int = 0) -> Split:
  """`patient_ids` and `has_tumor` are per record, in record order."""
  check_settings(protocol, num_folds, fold, val_fraction)
  patient_ids = np.asarray(patient_ids)
  has_tumor = np.asarray(has_tumor, bool)
  if protocol == "patient":
    return _patient_split(patient_ids, has_tumor, num_folds, fold, val_fraction, seed)
  logging.warning("split protocol 'slice' puts slices of one patient in train and test: "
                  "its Dice is inflated and only meant for the leakage ablation")
  return _slice_split(patient_ids, has_tumor, num_folds, fold, val_fraction, seed)


def whole(patient_ids: np.ndarray) -> Split:
  """Every record in test: a dataset scored whole (an external one), which
  needs no folds and may hold fewer patients than folds."""
  patient_ids = np.asarray(patient_ids)
  nothing = np.zeros(0, np.int64)
  return Split(train=nothing, val=nothing, test=np.arange(len(patient_ids)),
               patients={"train": [], "val": [], "test": sorted({str(p) for p in patient_ids})})


def _stratified_folds(keys: np.ndarray, strata: np.ndarray, num_folds: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Fold label per key: sorted by stratum, each run of K gets a permutation."""
  order = np.lexsort((keys, strata))
  folds = np.empty(len(keys), int)
  for start in range(0, len(keys), num_folds):
    chunk = order[start:start + num_folds]
    folds[chunk] = rng.permutation(num_folds)[:len(chunk)]
  return folds


def _pick_stratified(candidates: np.ndarray, strata: np.ndarray, count: int,
                     rng: np.random.Generator) -> np.ndarray:
  """`count` candidates, one from each of `count` equal bins along the strata."""
  order = candidates[np.lexsort((candidates, strata[candidates]))]
  bins = np.array_split(order, count)
  return np.array(sorted(int(rng.choice(b)) for b in bins if len(b)))


def _validation_count(val_fraction: float, outside_test: int, unit: str) -> int:
  count = max(1, int(round(val_fraction * outside_test)))
  if count >= outside_test:
    raise ValueError(f"config.split.val_fraction={val_fraction} leaves no training {unit} "
                     f"(validation would take {count} of the {outside_test} outside the test fold)")
  return count


def _patient_split(patient_ids, has_tumor, num_folds, fold, val_fraction, seed) -> Split:
  patients = np.unique(patient_ids)  # sorted
  if len(patients) < num_folds + 1:
    raise ValueError(f"{len(patients)} patients cannot make {num_folds} folds plus validation")
  record_patient = np.searchsorted(patients, patient_ids)
  tumour_fraction = (np.bincount(record_patient, weights=has_tumor, minlength=len(patients))
                     / np.bincount(record_patient, minlength=len(patients)))
  rng = np.random.default_rng(seed)
  folds = _stratified_folds(patients, tumour_fraction, num_folds, rng)
  test = np.flatnonzero(folds == fold)
  rest = np.flatnonzero(folds != fold)
  val = _pick_stratified(rest, tumour_fraction, _validation_count(val_fraction, len(rest), "patients"), rng)
  train = np.setdiff1d(rest, val)
  members = {"train": train, "val": val, "test": test}
  return Split(**{name: np.flatnonzero(np.isin(record_patient, idx)) for name, idx in members.items()},
               patients={name: [str(p) for p in patients[idx]] for name, idx in members.items()})


def _slice_split(patient_ids, has_tumor, num_folds, fold, val_fraction, seed) -> Split:
  rng = np.random.default_rng(seed)
  records = np.arange(len(patient_ids))
  folds = _stratified_folds(records, has_tumor.astype(int), num_folds, rng)
  test = np.flatnonzero(folds == fold)
  rest = np.flatnonzero(folds != fold)
  val = _pick_stratified(rest, has_tumor.astype(int), _validation_count(val_fraction, len(rest), "slices"), rng)
  train = np.setdiff1d(rest, val)
  return Split(train=train, val=val, test=test,
               patients={name: sorted({str(p) for p in patient_ids[idx]})
                         for name, idx in (("train", train), ("val", val), ("test", test))})


SPLIT_NAMES = ("train", "val", "test")


def to_json(split: Split, config_split) -> str:
  return json.dumps({"protocol": config_split.protocol, "num_folds": config_split.num_folds,
                     "fold": config_split.fold, "seed": config_split.seed, "val_fraction": config_split.val_fraction,
                     "file": config_split.file, **{name: split.patients[name] for name in SPLIT_NAMES}}, indent=2)


def from_file(path, patient_ids: np.ndarray) -> Split:
  """The split a file names; patients it lists must exist, and appear once."""
  path = pathlib.Path(path).expanduser()
  try:
    listed = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"config.split.file={path}: unreadable ({e})") from e
  missing_keys = [k for k in SPLIT_NAMES if not isinstance(listed.get(k), list)]
  if missing_keys:
    raise ValueError(f"config.split.file={path}: needs lists {', '.join(missing_keys)} of patient ids")
  empty = [k for k in SPLIT_NAMES if not listed[k]]
  if empty:  # a run trains, picks its checkpoint on val and reports test: each needs a patient
    raise ValueError(f"config.split.file={path}: {', '.join(empty)} lists no patient; a run needs at least one "
                     "in each of train, val and test (to score other patients, use lgg_jax.evaluate "
                     "--manual_dir)")
  known = set(np.unique(patient_ids).tolist())
  seen = {}
  for name in SPLIT_NAMES:
    unknown = sorted(set(listed[name]) - known)
    if unknown:
      raise ValueError(f"config.split.file={path}: {name} lists patients the dataset lacks: {unknown[:5]}")
    for pid in listed[name]:
      if pid in seen:
        raise ValueError(f"config.split.file={path}: patient {pid} is in both {seen[pid]} and {name}")
      seen[pid] = name
  unused = sorted(known - set(seen))
  if unused:
    logging.warning("config.split.file=%s leaves %d patients of the dataset unused: %s", path, len(unused),
                    ", ".join(unused[:5]))
  return Split(**{name: np.flatnonzero(np.isin(patient_ids, listed[name])) for name in SPLIT_NAMES},
               patients={name: sorted(listed[name]) for name in SPLIT_NAMES})
