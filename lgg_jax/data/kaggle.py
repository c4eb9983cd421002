"""Reads and validates the published `kaggle_3m/` layout.

The whole source is checked before anything is written, so a broken download
fails fast with the file and the problem named, and no partial dataset is
left behind for a later run to trust.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import re
import zipfile

import numpy as np
import tifffile

IMAGE_SHAPE = (256, 256, 3)


class DataError(ValueError):
  """A problem with the input data; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Slice:
  patient_id: str          # folder name, e.g. TCGA_CS_4941_19960909
  index: int               # the <n> in <patient>_<n>.tif, 1-based
  image_path: str          # a name that `Source.read` understands
  mask_path: str


def _hidden(name: str) -> bool:
  return any(part.startswith(".") for part in name.split("/") if part)


class Source:
  """The files of one `kaggle_3m/`, in a folder or inside a zip archive.

  Names are paths relative to `kaggle_3m/` ("<patient>/<file>"); `describe`
  turns one into what an error message should show (a real path, or
  archive.zip:member).
  """

  def __init__(self, location: pathlib.Path, zip_file: zipfile.ZipFile | None = None, prefix: str = ""):
    self.location, self._zip, self._prefix = location, zip_file, prefix
    if zip_file is None:
      # os.walk with followlinks: a cohort assembled from symlinked patient
      # folders is read like copied ones (pathlib's rglob skips linked folders).
      names = sorted(str((pathlib.Path(root) / f).relative_to(location).as_posix())
                     for root, _, files in os.walk(location, followlinks=True) for f in files)
      self.names = [n for n in names if not _hidden(n)]
      self.folders = sorted(p.name for p in location.iterdir() if p.is_dir() and not _hidden(p.name))
    else:
      inside = [m for m in zip_file.infolist() if m.filename.startswith(prefix)]
      members = [m for m in inside if not _hidden(m.filename[len(prefix):])]
      names = [m for m in inside if not m.is_dir()]
      self.names = sorted(m.filename[len(prefix):] for m in members if not m.is_dir())
      self.folders = sorted({n.split("/")[0] for n in (m.filename[len(prefix):] for m in members)
                             if "/" in n and n.split("/")[0]})
      self._sizes = {m.filename[len(prefix):]: (m.file_size, m.CRC) for m in members}
    skipped = len(names) - len(self.names)
    if skipped:  # macOS's .DS_Store and ._* files, Jupyter's .ipynb_checkpoints/: not data
      logging.info("%s: skipped %d hidden files (names starting with '.')", self.describe(""), skipped)

  def describe(self, name: str) -> str:
    return f"{self.location}:{self._prefix}{name}" if self._zip else str(self.location / name)

  def read(self, name: str) -> bytes:
    try:
      if self._zip is not None:
        return self._zip.read(self._prefix + name)
      return (self.location / name).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
      raise DataError(f"{self.describe(name)}: cannot read ({e})") from e

  def fingerprint(self) -> str:
    """Identity of the content: every file's name and a hash of its bytes
    (inside a zip, its size and CRC-32), so a file edited to the same size
    (an empty mask TIFF is always 356 bytes) is a new source. The 62-patient
    dev set (4,243 files, 174 MB) hashes in under a second."""
    h = hashlib.sha256()
    for name in self.names:
      meta = self._sizes[name] if self._zip else hashlib.sha256(self.read(name)).hexdigest()
      h.update(f"{name}:{meta}\n".encode())
    return h.hexdigest()[:16]


def open_source(manual_dir: str | pathlib.Path) -> Source:
  """`manual_dir`: kaggle_3m/ itself, a folder containing it, or a folder
  (or a path) with a .zip archive that holds kaggle_3m/."""
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.exists():
    raise DataError(f"manual_dir {manual_dir} does not exist")
  if manual_dir.is_file():
    zips = [manual_dir]
  elif manual_dir.name == "kaggle_3m":
    return Source(manual_dir)
  else:
    folders = [p for p in manual_dir.rglob("kaggle_3m")
               if p.is_dir() and not _hidden(p.relative_to(manual_dir).as_posix()) and "__MACOSX" not in p.parts]
    if folders:
      return Source(_shallowest(folders, lambda p: len(p.parts), manual_dir))
    zips = sorted(manual_dir.rglob("*.zip"))
  for path in zips:
    try:
      archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise DataError(f"{path}: not a readable zip archive ({e})") from e
    # A zip made by macOS's Finder also holds __MACOSX/kaggle_3m/ (resource stubs).
    prefixes = {n[:n.index("kaggle_3m/") + len("kaggle_3m/")] for n in archive.namelist()
                if "kaggle_3m/" in n and not n.startswith("__MACOSX/")}
    if prefixes:
      return Source(path, archive, _shallowest(prefixes, lambda n: n.count("/"), path))
    if len(zips) == 1:
      raise DataError(f"{path}: the zip archive holds no kaggle_3m/ folder")
  raise DataError(f"manual_dir {manual_dir} holds no kaggle_3m/ folder and no zip archive with one")


def _shallowest(candidates, depth, where):
  """The one kaggle_3m/ nearest the top (Kaggle's download holds a second
  copy one level down); two at the same depth are an error naming both."""
  candidates = sorted(candidates, key=lambda c: (depth(c), str(c)))
  top = [c for c in candidates if depth(c) == depth(candidates[0])]
  if len(top) > 1:
    raise DataError(f"{where} holds {len(top)} kaggle_3m/ folders at the same depth ({', '.join(map(str, top))}): "
                    f"give manual_dir the one to use")
  if len(candidates) > 1:
    logging.warning("%s: reading %s (the others, deeper: %s)", where, top[0], ", ".join(map(str, candidates[1:])))
  return top[0]


_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tif$")


def list_slices(source: Source) -> list[Slice]:
  """Pairs every image with its mask; checks slice numbering per patient."""
  if not source.folders:
    raise DataError(f"{source.describe('')} holds no patient folders")
  by_folder: dict[str, list[str]] = {f: [] for f in source.folders}
  for name in source.names:
    parts = name.split("/")
    if len(parts) == 2:
      by_folder.setdefault(parts[0], []).append(parts[1])
    elif len(parts) > 2:
      raise DataError(f"{source.describe(name)}: unexpected nested file")
    elif name.lower().endswith((".tif", ".tiff")):  # a slice outside any patient folder
      raise DataError(f"{source.describe(name)}: a TIFF outside any patient folder "
                      f"(slices belong in kaggle_3m/<patient>/)")
  slices = []
  for folder, files in sorted(by_folder.items()):
    images, masks = {}, {}
    for file in files:
      m = _SLICE_RE.match(file)
      if m is None or m["patient"] != folder:
        raise DataError(f"{source.describe(folder + '/' + file)}: unexpected file name "
                        f"(want {folder}_<n>.tif or {folder}_<n>_mask.tif)")
      found = masks if m["mask"] else images
      n = int(m["n"])
      if n in found:
        raise DataError(f"{source.describe(folder + '/' + file)}: duplicate slice number {n} "
                        f"(also {source.describe(found[n])})")
      found[n] = f"{folder}/{file}"
    if not images and not masks:
      raise DataError(f"{source.describe(folder)}: empty patient folder")
    for n in sorted(set(images) - set(masks)):
      raise DataError(f"{source.describe(images[n])}: no mask (expected {folder}_{n}_mask.tif)")
    for n in sorted(set(masks) - set(images)):
      raise DataError(f"{source.describe(masks[n])}: mask without image (expected {folder}_{n}.tif)")
    numbers = sorted(images)
    if numbers != list(range(1, len(numbers) + 1)):
      missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
      unexpected = sorted(set(numbers) - set(range(1, len(numbers) + 1)))
      raise DataError(f"{source.describe(folder)}: slice numbers are not 1..{len(numbers)}; "
                      f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    slices += [Slice(folder, n, images[n], masks[n]) for n in numbers]
  return slices


def read_image(source: Source, name: str) -> np.ndarray:
  return _read(source, name, IMAGE_SHAPE)


def read_mask(source: Source, name: str) -> np.ndarray:
  """Returns the mask as uint8 {0, 255}, shape (256, 256)."""
  mask = _read(source, name, IMAGE_SHAPE[:2])
  bad = np.setdiff1d(np.unique(mask), (0, 255))
  if bad.size:
    raise DataError(f"{source.describe(name)}: mask values must be 0 or 255, found {bad[:5].tolist()}")
  return mask


def _read(source: Source, name: str, shape: tuple[int, ...]) -> np.ndarray:
  try:
    array = tifffile.imread(io.BytesIO(source.read(name)))
  except DataError:
    raise
  except Exception as e:  # tifffile raises many types for broken files
    raise DataError(f"{source.describe(name)}: unreadable TIFF ({type(e).__name__}: {e})") from e
  if array.dtype != np.uint8:
    raise DataError(f"{source.describe(name)}: dtype {array.dtype}, expected uint8")
  if array.shape != shape:
    raise DataError(f"{source.describe(name)}: shape {array.shape}, expected {shape}")
  return array


def natural_key(name: str) -> list:
  """Sorts "slice_2" before "slice_10" (numbers by value)."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def clinical_key(patient_id: str) -> str:
  """data.csv's id for a patient folder: TCGA_CS_4941_19960909 -> TCGA_CS_4941."""
  return patient_id[:12]


def read_clinical(source: Source, patient_ids: list[str]) -> dict[str, dict[str, str]]:
  """data.csv rows keyed by folder name (empty cells kept as ""); warns about
  patients with images but no row, and rows without images."""
  if "data.csv" not in source.names:
    logging.warning("%s is missing: no clinical columns", source.describe("data.csv"))
    return {}
  where = source.describe("data.csv")
  try:
    reader = csv.DictReader(io.StringIO(source.read("data.csv").decode("utf-8-sig")))
    if "Patient" not in (reader.fieldnames or []):
      raise DataError(f"{where}: no Patient column (its header: {reader.fieldnames})")
    rows = {row["Patient"]: row for row in reader}
  except (UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{where}: not a UTF-8 CSV table ({e})") from e
  by_folder, seen = {}, set()
  for pid in patient_ids:
    key = clinical_key(pid)
    if key in rows:
      by_folder[pid] = rows[key]
      seen.add(key)
    else:
      logging.warning("%s: patient %s has images but no row", where, pid)
  for key in sorted(set(rows) - seen):
    logging.warning("%s: patient %s has a row but no images", where, key)
  return by_folder
