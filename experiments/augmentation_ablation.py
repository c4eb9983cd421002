"""Augmentation ablation: none vs the seed's set vs seed + distortions.

Command: python -m experiments.run --sweep=experiments/augmentation_ablation.py --workdir=runs/sweeps/augment
Runtime: 3 sets x 5 folds of the full U-Net on one GPU (not yet measured;
the distortion set needs grain workers: set data.num_workers).
Should show: augmentation helps on held-out patients; distortions help less
than they cost when training is short.
"""

from experiments.common import common, members


def get_sweep(tiny: bool):
  grid = [{"augment.name": name} for name in ("none", "seed", "distortions")]
  return {"title": "Augmentation ablation", "config": "configs/unet.py", "common": common(tiny), "members": members(grid, tiny),
          "group_by": ["augment.name"]}
