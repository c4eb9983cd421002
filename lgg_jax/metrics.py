"""Hard-mask segmentation metrics, computed the honest way.

Everything starts from per-slice counts (intersection, predicted pixels,
true pixels) so that slices, patients and batches can be aggregated exactly.

Empty-mask rule (stated once, used everywhere): when a slice (or a patient's
whole volume) has no true and no predicted tumour pixel, its Dice is 1.0; when
exactly one of them is empty, its Dice is 0.0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

# Reports give patients with fewer true tumour pixels than this (at 256x256: about a 2 cm wide
# abnormality over a few slices) a mean of their own: they lose the most at low resolution.
SMALL_TUMOUR_PIXELS = 10_000


def slice_counts(logits: jax.Array, masks: jax.Array, threshold: float = 0.5) -> dict:
  """Per-slice integer counts for thresholded predictions (NHWC inputs)."""
  pred = jax.nn.sigmoid(logits) >= threshold
  truth = masks > 0.5
  return {"intersection": jnp.sum(pred & truth, axis=(1, 2, 3), dtype=jnp.int32),
          "predicted": jnp.sum(pred, axis=(1, 2, 3), dtype=jnp.int32),
          "true": jnp.sum(truth, axis=(1, 2, 3), dtype=jnp.int32)}


def dice_from_counts(intersection, predicted, true, xp=np):
  """Dice from pixel counts, with the empty rule above; `xp` is numpy
  (float64, on the host) or jax.numpy (inside a jitted step)."""
  dtype = np.float64 if xp is np else jnp.float32
  intersection, predicted, true = (xp.asarray(a, dtype) for a in (intersection, predicted, true))
  total = predicted + true
  return xp.where(total == 0, 1.0, 2 * intersection / xp.maximum(total, 1))


def per_patient_dice(patient_ids: np.ndarray, counts: dict) -> dict[str, float]:
  """Volumetric Dice per patient: the patient's slices taken as one volume."""
  result = {}
  for pid in np.unique(patient_ids):
    sel = patient_ids == pid
    result[str(pid)] = float(dice_from_counts(*(counts[k][sel].sum() for k in
                                               ("intersection", "predicted", "true"))))
  return result


def summarise(patient_ids: np.ndarray, counts: dict) -> dict:
  """The headline numbers for one split.

  patient_dice: mean over patients of volumetric Dice (Buda et al. 2019).
  slice_dice: mean per-slice Dice over all slices (empty rule above).
  tumour_slice_dice: mean per-slice Dice over slices with true tumour.
  pooled_dice: the seed's batch-pooled Dice over every pixel, for comparison.
  empty_false_positive_rate: tumour-free slices with any predicted pixel.
  """
  slice_dice = dice_from_counts(counts["intersection"], counts["predicted"], counts["true"])
  tumour = counts["true"] > 0
  per_patient = per_patient_dice(patient_ids, counts)
  pooled = dice_from_counts(counts["intersection"].sum(), counts["predicted"].sum(), counts["true"].sum())
  empty = ~tumour
  return {
      "patient_dice": float(np.mean(list(per_patient.values()))),
      "patient_dice_median": float(np.median(list(per_patient.values()))),
      "slice_dice": float(slice_dice.mean()),
      "tumour_slice_dice": float(slice_dice[tumour].mean()) if tumour.any() else float("nan"),
      "pooled_dice": float(pooled),
      "empty_false_positive_rate": float((counts["predicted"][empty] > 0).mean()) if empty.any() else 0.0,
      "patients": len(per_patient),
      "slices": int(len(slice_dice)),
  }


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
  """medpy.metric.binary.hd95: surfaces by erosion with connectivity 1, the
  distances of each surface to the other pooled, their 95th percentile.
  Both empty -> 0; exactly one empty -> nan (undefined)."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("nan")
  # Every surface voxel lies in the union's bounding box, so distances taken
  # inside it are exact.
  box = ndi.find_objects((pred | truth).astype(np.uint8))[0]
  pred, truth = pred[box], truth[box]
  structure = ndi.generate_binary_structure(pred.ndim, 1)

  def surface(v):
    return v ^ ndi.binary_erosion(v, structure=structure, iterations=1)

  sp, st = surface(pred), surface(truth)
  distances = np.hstack([ndi.distance_transform_edt(~st, sampling=spacing)[sp],
                         ndi.distance_transform_edt(~sp, sampling=spacing)[st]])
  return float(np.percentile(distances, 95))


def components(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(labels, voxel count of each label 1..n) of a volume's 3-D connected
  components, faces touching (what the post-processing keeps or drops)."""
  labels, n = ndi.label(np.asarray(volume, bool))
  return labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def component_count(volume: np.ndarray) -> int:
  return int(components(volume)[1].size)
