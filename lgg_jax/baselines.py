"""Non-learned reference: threshold the FLAIR channel.

Tumour is FLAIR-hyperintense, so this is the first thing a model must beat.
Intensities are divided by the volume's 99th FLAIR percentile so one
threshold can serve patients of different gain; the threshold is chosen to
maximise mean per-patient Dice on the patients it is fitted on.
"""

from __future__ import annotations

import numpy as np

from lgg_jax import metrics

FLAIR = 1  # channel order: pre-contrast, FLAIR, post-contrast


def normalised_flair(volume: np.ndarray) -> np.ndarray:
  flair = volume[..., FLAIR].astype(np.float32)
  return flair / max(float(np.percentile(flair, 99)), 1.0)


def predict(volume: np.ndarray, threshold: float) -> np.ndarray:
  return normalised_flair(volume) >= threshold


def patient_dice(volumes, masks, threshold: float) -> np.ndarray:
  return np.array([float(metrics.dice_from_counts(
      (predict(v, threshold) & (m > 0)).sum(), predict(v, threshold).sum(), (m > 0).sum()))
      for v, m in zip(volumes, masks)])


def fit_threshold(volumes, masks, grid=np.linspace(0.2, 1.5, 27)) -> tuple[float, float]:
  """(best threshold, its mean per-patient Dice) on the given patients."""
  scores = [patient_dice(volumes, masks, t).mean() for t in grid]
  best = int(np.argmax(scores))
  return float(grid[best]), float(scores[best])
