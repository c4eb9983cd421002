"""How much a crop to the brain's bounding box could enlarge the brain.

python -m benchmarks.brain_box --manual_dir=../shared/data/lgg_dev

Buda et al. crop each volume to the bounding box of its voxels above 10% of
the volume's maximum (any channel, any slice) before resizing. For each
patient this prints the side of that box made square (pixels of 256): a
crop to it would magnify the brain by 256 / side at the model's input, so
if the sides are close to 256 the crop cannot move Dice and is not worth a
training row. Also the box of every non-zero voxel (the recipe's "brain"
for normalisation). Prints markdown.
"""

from __future__ import annotations

import itertools

import numpy as np
from absl import flags

from lgg_jax import cli
from lgg_jax.data import kaggle


def square_side(volume: np.ndarray, threshold: float) -> int:
  """Side of the square covering the voxels of (S, H, W, C) above `threshold`."""
  rows, cols = np.nonzero((volume > threshold).any(axis=(0, 3)))
  if not len(rows):
    return 0
  return int(max(np.ptp(rows), np.ptp(cols)) + 1)


def main(argv):
  del argv
  source = kaggle.open_source(_MANUAL_DIR.value)
  above, nonzero = [], []
  # list_slices gives every patient's slices together, in slice order.
  for _, slices in itertools.groupby(kaggle.list_slices(source), key=lambda s: s.patient_id):
    volume = np.stack([kaggle.read_image(source, s.image_path) for s in slices])
    above.append(square_side(volume, _FRACTION.value * float(volume.max())))
    nonzero.append(square_side(volume, 0))
  print(f"{len(above)} patients; square box side in pixels of 256 (min / 10th pct / median / max):\n")
  print("| voxels counted | min | p10 | median | max | magnification at the median |")
  print("|---|---|---|---|---|---|")
  for name, sides in ((f"above {_FRACTION.value:.0%} of the maximum (Buda)", above), ("non-zero", nonzero)):
    sides = np.array(sides)
    print(f"| {name} | {sides.min()} | {np.percentile(sides, 10):.0f} | {np.median(sides):.1f} | "
          f"{sides.max()} | {256 / np.median(sides):.3f}x |")


if __name__ == "__main__":
  _MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "kaggle_3m/, a folder holding it, or its zip archive.")
  _FRACTION = flags.DEFINE_float("fraction", 0.1, "Voxels above this fraction of the volume's maximum count.")
  flags.mark_flags_as_required(["manual_dir"])
  cli.run(main)
