"""Procedural brain-MRI-like dataset in the published `kaggle_3m/` layout.

Why: tests, CI and the README's first run need data that is free, small and
shaped exactly like the real dataset, so the same reader, builder and
pipeline serve both. The volumes imitate what matters for segmentation:

* a bright scalp ring (fat is bright in every sequence, FLAIR included), a
  dark skull, a textured brain with dark ventricles and a multiplicative bias
  field, so a FLAIR intensity threshold alone cannot find the tumour;
* per-patient appearance (channel gains, noise, tumour contrast and shape);
* tumours as smooth irregular 3-D blobs over several consecutive slices,
  FLAIR-hyperintense, slightly T1-hypointense, sometimes ring-enhancing on
  post-contrast; about a third of slices positive, some tumours small.

Everything is a deterministic function of (seed, patient index).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np
import tifffile

# The 18 columns of the published data.csv, in order.
CLINICAL_COLUMNS = (
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster",
    "CNCluster", "RPPACluster", "OncosignCluster", "COCCluster",
    "histological_type", "neoplasm_histologic_grade", "tumor_tissue_site",
    "laterality", "tumor_location", "gender", "age_at_initial_pathologic",
    "race", "ethnicity", "death01")

# Value ranges seen in the real table; `None` marks columns with missing cells.
_CLINICAL_VALUES = {
    "RNASeqCluster": (range(1, 5), 0.1), "MethylationCluster": (range(1, 6), 0.02),
    "miRNACluster": (range(1, 5), 0.0), "CNCluster": (range(1, 4), 0.03),
    "RPPACluster": (range(1, 5), 0.1), "OncosignCluster": (range(1, 4), 0.05),
    "COCCluster": (range(1, 4), 0.0), "histological_type": (range(1, 4), 0.0),
    "neoplasm_histologic_grade": (range(1, 3), 0.0), "tumor_tissue_site": (range(1, 2), 0.0),
    "laterality": (range(1, 4), 0.0), "tumor_location": ((1, 2, 5, 6), 0.0),
    "gender": (range(1, 3), 0.0), "age_at_initial_pathologic": (range(20, 76), 0.0),
    "race": ((2, 3), 0.0), "ethnicity": (range(1, 3), 0.05), "death01": (range(0, 2), 0.0),
}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate. `image_size` stays 256 to match the real TIFFs."""
  num_patients: int = 40
  min_slices: int = 20
  max_slices: int = 40
  image_size: int = 256
  seed: int = 0

  @property
  def name(self) -> str:
    return (f"synthetic_p{self.num_patients}_s{self.min_slices}-{self.max_slices}"
            f"_{self.image_size}px_seed{self.seed}")


def patient_folder_name(index: int) -> str:
  # Real ids look like TCGA_CS_4941_19960909; "SY" marks synthetic.
  return f"TCGA_SY_{index + 1:04d}_{20000101 + index:08d}"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
  """Zero-mean, unit-std noise smooth on the scale of shape/cells."""
  coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
  field = cv2.resize(coarse, (shape[1] + 3 * shape[1] // cells, shape[0] + 3 * shape[0] // cells),
                     interpolation=cv2.INTER_CUBIC)
  field = field[:shape[0], :shape[1]]
  return (field - field.mean()) / (field.std() + 1e-6)


def _patient_style(rng: np.random.Generator) -> dict:
  return dict(
      gains=rng.uniform(0.75, 1.25, size=3),          # per-channel contrast
      noise=rng.uniform(0.015, 0.05),
      bias_strength=rng.uniform(0.05, 0.25),
      scalp_flair=rng.uniform(0.75, 1.0),             # as bright as tumour or brighter
      brain_flair=rng.uniform(0.30, 0.40),
      tumour_flair=rng.uniform(0.18, 0.40),           # added over brain; sometimes subtle
      tumour_t1=rng.uniform(-0.10, -0.02),
      enhancing=rng.random() < 0.4,
      texture=rng.uniform(0.03, 0.07),
      bright_spots=int(rng.integers(2, 9)),           # small unlabelled FLAIR hyperintensities
  )


def _tumour(rng: np.random.Generator, n_slices: int, size: int) -> dict:
  small = rng.random() < 0.3
  extent = max(2, int(round(n_slices * rng.uniform(0.2, 0.38))))
  radius = size * (rng.uniform(0.025, 0.05) if small else rng.uniform(0.06, 0.14))
  start = int(rng.integers(int(0.2 * n_slices), max(int(0.2 * n_slices) + 1, n_slices - extent - 1)))
  angle = rng.uniform(0, np.pi)
  return dict(
      z0=start, z1=min(n_slices - 1, start + extent),
      cx=size / 2 + rng.uniform(-0.22, 0.22) * size, cy=size / 2 + rng.uniform(-0.2, 0.2) * size,
      radius=radius, aspect=rng.uniform(0.6, 1.0), angle=angle,
      lobes=rng.standard_normal(4) * rng.uniform(0.05, 0.15) / np.arange(1, 5), phases=rng.uniform(0, 2 * np.pi, 4),
      drift=rng.uniform(-0.01, 0.01, size=2) * size)


def _tumour_mask(t: dict, z: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  if not t["z0"] <= z <= t["z1"]:
    return np.zeros(yy.shape, bool)
  # Radius follows a half-sine over the slices so the blob is a smooth 3-D body.
  u = (z - t["z0"] + 0.5) / (t["z1"] - t["z0"] + 1)
  r = t["radius"] * np.sqrt(max(np.sin(np.pi * u), 0.0)) + 1.0
  cx = t["cx"] + t["drift"][0] * (z - t["z0"])
  cy = t["cy"] + t["drift"][1] * (z - t["z0"])
  dx, dy = xx - cx, yy - cy
  c, s = np.cos(t["angle"]), np.sin(t["angle"])
  rx, ry = c * dx + s * dy, (-s * dx + c * dy) / t["aspect"]
  theta = np.arctan2(ry, rx)
  wobble = 1.0 + sum(a * np.sin((k + 2) * theta + p + 0.3 * z)
                     for k, (a, p) in enumerate(zip(t["lobes"], t["phases"])))
  return np.hypot(rx, ry) < r * wobble


def generate_patient(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [S,H,W,3], masks uint8 [S,H,W] in {0,255})."""
  rng = np.random.default_rng([spec.seed, index])
  size = spec.image_size
  n = int(rng.integers(spec.min_slices, spec.max_slices + 1))
  style = _patient_style(rng)
  tumours = [_tumour(rng, n, size)]
  if rng.random() < 0.25:  # a satellite lesion over roughly the same slices
    satellite = _tumour(rng, n, size)
    satellite.update(z0=tumours[0]["z0"] + 1, z1=max(tumours[0]["z0"] + 2, tumours[0]["z1"] - 2),
                     radius=satellite["radius"] * 0.5)
    tumours.append(satellite)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  head_a, head_b = size * rng.uniform(0.36, 0.42), size * rng.uniform(0.42, 0.47)
  centre = np.array([size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)])
  bias = 1.0 + style["bias_strength"] * _smooth_noise(rng, (size, size), 3)
  gyri = _smooth_noise(rng, (size, size), 24)
  spots = [(rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(1.5, 3.5),
            int(rng.integers(0, n))) for _ in range(style["bright_spots"])]

  images = np.zeros((n, size, size, 3), np.float32)
  masks = np.zeros((n, size, size), np.uint8)
  for z in range(n):
    # Head cross-section shrinks towards both ends of the volume.
    zc = (z + 0.5) / n
    scale = np.sqrt(max(1.0 - ((zc - 0.45) / 0.62) ** 2, 0.05))
    rr = np.hypot((xx - centre[0]) / (head_a * scale), (yy - centre[1]) / (head_b * scale))
    thickness = 7.0 / (head_a * scale)
    scalp = (rr < 1.0) & (rr >= 1.0 - thickness)
    skull = (rr < 1.0 - thickness) & (rr >= 1.0 - 2 * thickness)
    brain = rr < 1.0 - 2 * thickness
    texture = style["texture"] * np.tanh(gyri + np.sin(3 * zc))
    # Sulci: thin dark lines where the gyral field crosses zero.
    sulci = brain & (np.abs(gyri + 0.3 * np.sin(9 * zc)) < 0.06)
    vent = np.zeros_like(brain)
    if 0.35 < zc < 0.7:
      for side in (-1, 1):
        vx = centre[0] + side * 0.09 * head_a
        vent |= (((xx - vx) / (0.05 * head_a)) ** 2 + ((yy - centre[1]) / (0.28 * head_b * scale)) ** 2) < 1
    t1 = np.where(scalp, 0.85, 0.0) + np.where(skull, 0.06, 0.0) + np.where(brain, 0.38 + texture, 0.0)
    flair = (np.where(scalp, style["scalp_flair"], 0.0) + np.where(skull, 0.05, 0.0)
             + np.where(brain, style["brain_flair"] + texture, 0.0))
    t1c = np.where(scalp, 0.75, 0.0) + np.where(skull, 0.08, 0.0) + np.where(brain, 0.36 + texture, 0.0)
    for ch in (t1, flair, t1c):
      ch[sulci | vent] = 0.12
    for sx, sy, sr, sz in spots:
      if abs(z - sz) <= 1:
        spot = brain & (np.hypot(xx - sx, yy - sy) < sr)
        flair[spot] += style["tumour_flair"] * 1.2
    mask = np.zeros((size, size), bool)
    for t in tumours:
      m = _tumour_mask(t, z, yy, xx) & brain
      if not m.any():
        continue
      mask |= m
      # Heterogeneous hyperintensity: weaker towards the rim, patchy inside.
      dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
      core = np.clip(dist / 4.0, 0.3, 1.0) * (1.0 + 0.25 * gyri)
      flair[m] += (style["tumour_flair"] * core)[m]
      t1[m] += style["tumour_t1"]
      if style["enhancing"]:
        ring = m & (dist < 3.0) & (dist > 1.0)
        t1c[ring] += 0.25
    masks[z] = np.where(mask, 255, 0)
    stack = np.stack([t1, flair, t1c], -1) * bias[..., None] * style["gains"]
    stack += rng.standard_normal(stack.shape).astype(np.float32) * style["noise"]
    images[z] = np.abs(stack)  # magnitude images: Rician-like background
  images = np.clip(images * 200.0, 0, 255).astype(np.uint8)
  return images, masks


def _clinical_row(rng: np.random.Generator, patient: str) -> list:
  row = [patient]
  for column in CLINICAL_COLUMNS[1:]:
    values, missing = _CLINICAL_VALUES[column]
    row.append("" if rng.random() < missing else int(rng.choice(list(values))))
  return row


def write_dataset(root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> pathlib.Path:
  """Writes `root/kaggle_3m/` and returns that path.

  Written into a temporary sibling and renamed at the end, so an interrupted
  run never leaves a half-written dataset where a later run would trust it.
  Every third patient's TIFFs are deflate-compressed (both forms occur).
  """
  root = pathlib.Path(root)
  target = root / "kaggle_3m"
  if target.exists():
    return target
  root.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".kaggle_3m.", dir=root))
  try:
    rng = np.random.default_rng([spec.seed, 10**6])
    rows = []
    for index in range(spec.num_patients):
      folder = patient_folder_name(index)
      images, masks = generate_patient(spec, index)
      (staging / folder).mkdir()
      compression = "zlib" if index % 3 == 2 else None
      for n, (image, mask) in enumerate(zip(images, masks), start=1):
        tifffile.imwrite(staging / folder / f"{folder}_{n}.tif", image, compression=compression)
        tifffile.imwrite(staging / folder / f"{folder}_{n}_mask.tif", mask, compression=compression)
      rows.append(_clinical_row(rng, folder[:12]))
    with open(staging / "data.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(CLINICAL_COLUMNS)
      writer.writerows(rows)
    staging.rename(target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target
