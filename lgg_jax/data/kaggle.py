"""Reads and validates the published `kaggle_3m/` layout.

The whole source is checked before anything is written, so a broken download
fails fast with the file and the problem named, and no partial dataset is
left behind for a later run to trust.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import pathlib
import re

import numpy as np
import tifffile

IMAGE_SHAPE = (256, 256, 3)


class DataError(ValueError):
  """A problem with the input data; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Slice:
  patient_id: str          # folder name, e.g. TCGA_CS_4941_19960909
  index: int               # the <n> in <patient>_<n>.tif, 1-based
  image_path: pathlib.Path
  mask_path: pathlib.Path


def find_kaggle_root(manual_dir: str | pathlib.Path) -> pathlib.Path:
  """`manual_dir` may be `kaggle_3m/` itself or a folder that contains it."""
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise DataError(f"manual_dir {manual_dir} does not exist or is not a folder")
  if manual_dir.name == "kaggle_3m":
    return manual_dir
  candidates = sorted(p for p in manual_dir.rglob("kaggle_3m") if p.is_dir())
  if not candidates:
    raise DataError(f"manual_dir {manual_dir} holds no kaggle_3m/ folder")
  return candidates[0]


_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tif$")


def list_slices(root: pathlib.Path) -> list[Slice]:
  """Pairs every image with its mask; checks slice numbering per patient."""
  slices = []
  patients = sorted(p for p in root.iterdir() if p.is_dir())
  if not patients:
    raise DataError(f"{root} holds no patient folders")
  for folder in patients:
    images, masks = {}, {}
    for f in folder.iterdir():
      m = _SLICE_RE.match(f.name)
      if m is None or m["patient"] != folder.name:
        raise DataError(f"{f}: unexpected file name (want {folder.name}_<n>.tif or _<n>_mask.tif)")
      (masks if m["mask"] else images)[int(m["n"])] = f
    if not images and not masks:
      raise DataError(f"{folder}: empty patient folder")
    for n in sorted(set(images) - set(masks)):
      raise DataError(f"{images[n]}: no mask (expected {folder.name}_{n}_mask.tif)")
    for n in sorted(set(masks) - set(images)):
      raise DataError(f"{masks[n]}: mask without image (expected {folder.name}_{n}.tif)")
    numbers = sorted(images)
    if numbers != list(range(1, len(numbers) + 1)):
      missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
      raise DataError(f"{folder}: slice numbers are not 1..{len(numbers)}; missing {missing[:10]}")
    slices += [Slice(folder.name, n, images[n], masks[n]) for n in numbers]
  return slices


def read_image(path: pathlib.Path) -> np.ndarray:
  return _read(path, IMAGE_SHAPE)


def read_mask(path: pathlib.Path) -> np.ndarray:
  """Returns the mask as uint8 {0, 255}, shape (256, 256)."""
  mask = _read(path, IMAGE_SHAPE[:2])
  bad = np.setdiff1d(np.unique(mask), (0, 255))
  if bad.size:
    raise DataError(f"{path}: mask values must be 0 or 255, found {bad[:5].tolist()}")
  return mask


def _read(path: pathlib.Path, shape: tuple[int, ...]) -> np.ndarray:
  try:
    array = tifffile.imread(path)
  except Exception as e:  # tifffile raises many types for broken files
    raise DataError(f"{path}: unreadable TIFF ({type(e).__name__}: {e})") from e
  if array.dtype != np.uint8:
    raise DataError(f"{path}: dtype {array.dtype}, expected uint8")
  if array.shape != shape:
    raise DataError(f"{path}: shape {array.shape}, expected {shape}")
  return array


def read_clinical(root: pathlib.Path, patient_ids: list[str]) -> dict[str, dict[str, str]]:
  """data.csv rows keyed by folder name; warns about unmatched patients."""
  path = root / "data.csv"
  if not path.exists():
    logging.warning("%s is missing: no clinical columns", path)
    return {}
  with open(path, newline="") as f:
    rows = {row["Patient"]: row for row in csv.DictReader(f)}
  by_folder, seen = {}, set()
  for pid in patient_ids:
    key = pid[:12]  # TCGA_CS_4941_19960909 -> TCGA_CS_4941
    if key in rows:
      by_folder[pid] = rows[key]
      seen.add(key)
    else:
      logging.warning("%s: patient %s has images but no row in data.csv", path, pid)
  for key in sorted(set(rows) - seen):
    logging.warning("%s: patient %s has a row but no images", path, key)
  return by_folder


def fingerprint(root: pathlib.Path) -> str:
  """Cheap identity of a source: names and sizes of all files."""
  h = hashlib.sha256()
  for f in sorted(root.rglob("*")):
    if f.is_file():
      h.update(f"{f.relative_to(root)}:{f.stat().st_size}\n".encode())
  return h.hexdigest()[:16]
