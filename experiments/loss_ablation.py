"""Loss ablation: BCE vs soft Dice vs Dice+BCE (the default), U-Net, 5 folds.

Command: python -m experiments.run --sweep=experiments/loss_ablation.py --workdir=runs/sweeps/loss
Runtime: 3 losses x 5 folds of the full U-Net on one GPU (not yet measured).
Should show: plain BCE under-segments small tumours (lower per-patient Dice,
fewer false positives); Dice+BCE at least as good as either alone.
"""

from experiments.common import common, members


def get_sweep(tiny: bool):
  grid = [{"loss.name": name} for name in ("bce", "dice", "dice_bce")]
  return {"title": "Loss ablation", "config": "configs/unet.py", "common": common(tiny), "members": members(grid, tiny),
          "group_by": ["loss.name"]}
