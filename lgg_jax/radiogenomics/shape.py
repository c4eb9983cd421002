"""Tumour shape features of Buda et al. 2019 (arXiv 1906.03720), after the
definitions of Czarnek et al. 2017 (J Neurooncol 132:55-62) and Mazurowski
et al. 2017 (J Neurooncol 133:27-35).

A mask is bool (S, H, W), the patient's slices in order. Where the papers
leave a detail open, the choice is a parameter here:

* BEVR (bounding ellipsoid volume ratio, 3-D): tumour volume / volume of the
  minimum-volume ellipsoid enclosing it. The ellipsoid encloses the convex
  hull of the voxels' corners (not their centres, which would let the ratio
  exceed 1); it comes from Khachiyan's algorithm, then is grown to hold every
  hull vertex, so BEVR <= 1 always. BEVR is invariant under any affine map,
  so it does not depend on the voxel spacing: the unknown slice spacing of
  the published slices does not matter, and a 2x scaling or a translation
  leaves it unchanged (up to Khachiyan's tolerance). A one-slice tumour is a
  slab one slice thick; a one-slice disc gives 1/sqrt(3) (a cylinder in its
  minimum ellipsoid), whatever the slice thickness. The corners' hull
  overhangs a voxelised shape by about half a voxel, so a voxelised ball of
  radius r reads about 1 - 2.6/r (0.92 at r = 30 voxels). With the default
  tolerance the ellipsoid's volume is within about 0.2% of the minimum.
* ASD (angular standard deviation, 2-D): the boundary of the tumour on one
  slice is split into `bins` equiangular sectors around the centroid; ASD is
  the mean over sectors of the standard deviation of the centroid-to-boundary
  distances in each sector (sectors with fewer than 2 boundary points are
  skipped). Distances are in pixels times `pixel_spacing`, not normalised
  (Buda 2019's summary normalises only margin fluctuation; the row spacing
  stands for an isotropic in-plane spacing), so ASD scales
  with the tumour: x2 when the shape is scaled 2x. `normalise_asd=True`
  divides the distances by their mean, making it scale-free.
* MF (margin fluctuation, 2-D): the centroid-to-boundary distances in the
  boundary's order, divided by their mean (removing the tumour's size), minus
  their circular moving average over `mf_window` of the boundary's points;
  MF is the standard deviation of that difference. The window is a fraction
  of the boundary, so MF is scale-free: a 2x scaled shape gives the same MF
  up to pixelisation.
* The 2-D features use the slice with the largest tumour area
  (`slice_choice="largest"`, this module's reading of Czarnek 2017 and
  Mazurowski 2017, whose full text was not at hand to confirm it) and,
  on it, the largest 8-connected component's outer boundary (pixel centres,
  OpenCV's contour tracing) and its centroid.

Covariates: `volume` (voxels times the voxel volume from `spacing`) and
`slice_count` (slices holding tumour). An empty mask (a missed tumour) has
every feature undefined (NaN) and `empty` true; a tumour touching the edge of
the image or the first or last slice is measured as far as it is visible and
flagged `touches_border`.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
from scipy import ndimage, spatial

FEATURES = ("bevr", "asd", "mf")
COVARIATES = ("volume", "slice_count")


@dataclasses.dataclass(frozen=True)
class ShapeSettings:
  """The choices the papers leave open (see the module docstring)."""
  slice_choice: str = "largest"   # 2-D features on the slice with the largest tumour area
  asd_bins: int = 10              # equiangular sectors around the centroid (Czarnek 2017)
  normalise_asd: bool = False
  mf_window: float = 0.05         # moving-average window, as a fraction of the boundary's points
  spacing: tuple = (1.0, 1.0, 1.0)  # (slice, row, column) spacing: only `volume` and ASD use it
  khachiyan_tolerance: float = 1e-3

  def check(self) -> None:
    if self.slice_choice != "largest":
      raise ValueError(f"slice_choice must be 'largest', got {self.slice_choice!r}")
    if self.asd_bins < 1:
      raise ValueError(f"asd_bins must be >= 1, got {self.asd_bins}")
    if not 0 < self.mf_window < 1:
      raise ValueError(f"mf_window must be a fraction in (0, 1), got {self.mf_window}")
    if len(self.spacing) != 3 or min(self.spacing) <= 0:
      raise ValueError(f"spacing must be three positive numbers (slice, row, column), got {self.spacing}")


def _wolfe_atwood(lifted: np.ndarray, weights: np.ndarray, tolerance: float) -> np.ndarray:
  """Khachiyan's weights on the lifted points, with Wolfe-Atwood away steps
  (Todd and Yildirim 2007), which make it converge linearly. Each step is a
  rank-one change of the scatter matrix, so the points' distances are updated
  in O(n d) (Sherman-Morrison) and recomputed exactly now and then."""
  d = lifted.shape[1] - 1
  weights = weights.copy()
  for iteration in range(200_000):
    if iteration % 50 == 0:
      inverse = np.linalg.inv(lifted.T @ (weights[:, None] * lifted))
      distances = np.einsum("ij,jk,ik->i", lifted, inverse, lifted)
    j = int(np.argmax(distances))
    held = np.flatnonzero(weights > 0)
    i = int(held[np.argmin(distances[held])])
    toward, away = distances[j] / (d + 1) - 1, 1 - distances[i] / (d + 1)
    if max(toward, away) <= tolerance:
      break
    if toward >= away:  # move weight toward the farthest point
      k, step = j, (distances[j] - d - 1) / ((d + 1) * (distances[j] - 1))
      sign, scale = 1.0, 1 - step
    else:  # move weight away from the nearest point that has some
      k, step = i, min((d + 1 - distances[i]) / ((d + 1) * (distances[i] - 1)), weights[i] / (1 - weights[i]))
      sign, scale = -1.0, 1 + step
    weights *= scale
    weights[k] = max(weights[k] + sign * step, 0.0)
    # scatter' = scale * (scatter + sign * (step / scale) * q_k q_k^T)
    rate = sign * step / scale
    projected = inverse @ lifted[k]
    overlap = lifted @ projected
    denominator = 1 + rate * distances[k]
    distances = (distances - rate * overlap ** 2 / denominator) / scale
    inverse = (inverse - rate * np.outer(projected, projected) / denominator) / scale
  return weights


def minimum_volume_ellipsoid(points: np.ndarray, tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
  """Khachiyan's algorithm: (centre c, matrix A) with (x-c)^T A (x-c) <= 1 for
  every point and a volume at most about (1 + tolerance)^(d/2) times the
  minimum. It runs on a core set (points extreme along the axes and
  diagonals, then the worst outsiders, until none is left), and the ellipsoid
  is grown at the end until it holds every point exactly."""
  points = np.asarray(points, np.float64)
  n, d = points.shape
  if n <= d:
    raise ValueError(f"an ellipsoid in {d}-D needs more than {d} points, got {n}")
  lifted = np.hstack([points, np.ones((n, 1))])
  directions = np.array([v for v in np.ndindex(*(3,) * d) if any(v)], float)[: (3 ** d - 1) // 2] - 1
  projections = points @ directions.T
  core = np.unique(np.concatenate([projections.argmax(0), projections.argmin(0)]))
  weights = np.full(len(core), 1.0 / len(core))
  while True:
    weights = _wolfe_atwood(lifted[core], weights, tolerance)
    scatter = lifted[core].T @ (weights[:, None] * lifted[core])
    distances = np.einsum("ij,jk,ik->i", lifted, np.linalg.inv(scatter), lifted)
    outside = np.setdiff1d(np.flatnonzero(distances > (d + 1) * (1 + tolerance)), core)
    if not len(outside):
      break
    worst = outside[np.argsort(distances[outside])[::-1][:4 * d]]
    core, weights = np.concatenate([core, worst]), np.concatenate([weights, np.zeros(len(worst))])
  centre = weights @ points[core]
  centred = points[core] - centre
  shape = np.linalg.inv(centred.T @ (weights[:, None] * centred)) / d
  offsets = points - centre
  reach = float(np.max(np.einsum("ij,jk,ik->i", offsets, shape, offsets)))
  return centre, shape / max(reach, 1.0)


def ellipsoid_volume(shape: np.ndarray) -> float:
  d = shape.shape[0]
  unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
  return unit_ball / math.sqrt(float(np.linalg.det(shape)))


def corner_hull_points(mask: np.ndarray) -> np.ndarray:
  """The voxel corners that can lie on the mask's convex hull: on each line of
  corners along the last axis, the first and the last that a voxel of the
  mask touches (every other corner lies between them). (S, H, W) -> (n, 3)."""
  mask = np.asarray(mask, bool)
  occupied = mask.any(axis=-1)
  first = np.where(occupied, np.argmax(mask, axis=-1), np.iinfo(np.int64).max)
  last = np.where(occupied, mask.shape[-1] - np.argmax(mask[..., ::-1], axis=-1), -1)
  # A line of corners at (s, h) touches the voxel lines (s-1 or s, h-1 or h).
  first = np.pad(first, 1, constant_values=np.iinfo(np.int64).max)
  last = np.pad(last, 1, constant_values=-1)
  corner_first = np.minimum.reduce([first[a:a + first.shape[0] - 1, b:b + first.shape[1] - 1]
                                    for a in (0, 1) for b in (0, 1)])
  corner_last = np.maximum.reduce([last[a:a + last.shape[0] - 1, b:b + last.shape[1] - 1]
                                   for a in (0, 1) for b in (0, 1)])
  lines = np.argwhere(corner_last >= 0)
  starts, ends = corner_first[tuple(lines.T)], corner_last[tuple(lines.T)]
  return np.concatenate([np.column_stack([lines, starts]), np.column_stack([lines, ends])]).astype(np.float64)


def bounding_ellipsoid_volume_ratio(mask: np.ndarray, tolerance: float = 1e-3) -> float:
  mask = np.asarray(mask, bool)
  if not mask.any():
    return math.nan
  points = corner_hull_points(mask)
  hull = spatial.ConvexHull(points)
  _, shape = minimum_volume_ellipsoid(points[hull.vertices], tolerance)
  return float(mask.sum()) / ellipsoid_volume(shape)


def boundary(slice_mask: np.ndarray, min_samples: int = 360) -> tuple[np.ndarray, np.ndarray]:
  """The largest 8-connected component's outer boundary, in order, and its
  centroid, as (row, column). The boundary (through the border pixels'
  centres, OpenCV's contour tracing) is resampled at equal arc-length steps,
  max(min_samples, its pixel count) points, so diagonal and straight runs of
  pixels weigh alike and the features do not depend on the pixel count."""
  labels, count = ndimage.label(slice_mask, structure=np.ones((3, 3)))
  largest = 1 + int(np.argmax(ndimage.sum_labels(slice_mask, labels, range(1, count + 1))))
  component = labels == largest
  padded = np.pad(component, 1).astype(np.uint8)  # a tumour cut by the image edge keeps a closed contour
  contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  contour = (max(contours, key=len)[:, 0, ::-1] - 1).astype(np.float64)  # (x, y) -> (row, column)
  centre = np.argwhere(component).mean(axis=0)
  closed = np.vstack([contour, contour[:1]])
  arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
  if arc[-1] == 0:  # a one-pixel tumour
    return contour, centre
  positions = np.arange(max(min_samples, len(contour))) * (arc[-1] / max(min_samples, len(contour)))
  resampled = np.column_stack([np.interp(positions, arc, closed[:, 0]), np.interp(positions, arc, closed[:, 1])])
  return resampled, centre


def angular_standard_deviation(slice_mask: np.ndarray, bins: int = 10, pixel_spacing: float = 1.0,
                               normalise: bool = False) -> float:
  if not np.any(slice_mask):
    return math.nan
  points, centre = boundary(slice_mask)
  offsets = points - centre
  distances = np.hypot(*offsets.T) * pixel_spacing
  if normalise and distances.mean() > 0:
    distances = distances / distances.mean()
  angles = np.arctan2(offsets[:, 0], offsets[:, 1])
  sector = np.minimum(((angles + np.pi) / (2 * np.pi) * bins).astype(int), bins - 1)
  spreads = [distances[sector == b].std() for b in range(bins) if np.count_nonzero(sector == b) >= 2]
  return float(np.mean(spreads)) if spreads else 0.0


def margin_fluctuation(slice_mask: np.ndarray, window: float = 0.05) -> float:
  if not np.any(slice_mask):
    return math.nan
  points, centre = boundary(slice_mask)
  distances = np.hypot(*(points - centre).T)
  if len(distances) < 3 or distances.mean() == 0:  # a one-pixel tumour
    return 0.0
  distances = distances / distances.mean()
  size = 2 * int(round(window * len(distances) / 2)) + 1  # odd: centred on each point
  smooth = ndimage.uniform_filter1d(distances, size, mode="wrap")
  return float(np.std(distances - smooth))


def touches_border(mask: np.ndarray) -> bool:
  return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
              or mask[:, :, 0].any() or mask[:, :, -1].any())


def features(mask: np.ndarray, settings: ShapeSettings = ShapeSettings()) -> dict:
  """BEVR, ASD, MF and the covariates of one patient's (S, H, W) mask."""
  settings.check()
  mask = np.asarray(mask, bool)
  if mask.ndim != 3:
    raise ValueError(f"a mask must be (slices, rows, columns), got shape {mask.shape}")
  areas = mask.sum(axis=(1, 2))
  if not areas.any():
    return {"empty": True, "touches_border": False, "slice_count": 0, "volume": 0.0, "feature_slice": -1,
            **{name: math.nan for name in FEATURES}}
  k = int(np.argmax(areas))
  return {
      "empty": False,
      "touches_border": touches_border(mask),
      "slice_count": int(np.count_nonzero(areas)),
      "volume": float(mask.sum() * np.prod(settings.spacing)),
      "feature_slice": k,  # 0-based index of the slice the 2-D features use
      "bevr": bounding_ellipsoid_volume_ratio(mask, settings.khachiyan_tolerance),
      "asd": angular_standard_deviation(mask[k], settings.asd_bins, settings.spacing[1], settings.normalise_asd),
      "mf": margin_fluctuation(mask[k], settings.mf_window),
  }
