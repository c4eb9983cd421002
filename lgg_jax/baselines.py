"""Non-learned reference: threshold the FLAIR channel.

Tumour is FLAIR-hyperintense, so this is the first thing a model must beat.
Intensities are divided by the volume's 99th FLAIR percentile so one
threshold can serve patients of different gain; the threshold is chosen to
maximise mean per-patient Dice on the patients it is fitted on.
"""

from __future__ import annotations

import numpy as np

from lgg_jax import metrics
from lgg_jax.data import synthetic

FLAIR = 1  # channel order: pre-contrast, FLAIR, post-contrast


def normalised_flair(volume: np.ndarray) -> np.ndarray:
  flair = volume[..., FLAIR].astype(np.float32)
  return flair / max(float(np.percentile(flair, 99)), 1.0)


def predict(volume: np.ndarray, threshold: float) -> np.ndarray:
  return normalised_flair(volume) >= threshold


def patient_dice(volumes, masks, threshold: float) -> np.ndarray:
  return _dice_grid(volumes, masks, [threshold])[:, 0]


def fit_threshold(volumes, masks, grid=np.linspace(0.2, 1.5, 27)) -> tuple[float, float]:
  """(best threshold, its mean per-patient Dice) on the given patients."""
  scores = _dice_grid(volumes, masks, grid).mean(axis=0)
  best = int(np.argmax(scores))
  return float(grid[best]), float(scores[best])


def _dice_grid(volumes, masks, thresholds) -> np.ndarray:
  """Per-patient Dice at each threshold, [patients, thresholds]; each volume normalised once."""
  dice = np.zeros((len(volumes), len(thresholds)))
  for i, (volume, mask) in enumerate(zip(volumes, masks)):
    flair, truth = normalised_flair(volume), mask > 0
    for j, t in enumerate(thresholds):
      predicted = flair >= t
      dice[i, j] = metrics.dice_from_counts(predicted[truth].sum(), predicted.sum(), truth.sum())
  return dice


def main(argv):
  """python -m lgg_jax.baselines [--patients=12] [--seed=0]: the FLAIR-threshold
  baseline on synthetic patients, threshold fitted on those same patients."""
  del argv
  spec = synthetic.SyntheticSpec(num_patients=_PATIENTS.value, seed=_SEED.value)
  volumes, masks = zip(*[synthetic.generate_patient(spec, i) for i in range(spec.num_patients)])
  threshold, dice = fit_threshold(volumes, masks)
  print(f"FLAIR threshold {threshold:.2f}: mean per-patient Dice {dice:.4f} on {spec.num_patients} "
        f"synthetic patients (seed {spec.seed})")


if __name__ == "__main__":
  from absl import app, flags
  _PATIENTS = flags.DEFINE_integer("patients", 12, "Synthetic patients.")
  _SEED = flags.DEFINE_integer("seed", 0, "Synthetic dataset seed.")
  app.run(main)
