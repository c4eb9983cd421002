"""The seed's model comparison done right: per-patient Dice on patient folds.

Command: python -m experiments.run --sweep=experiments/model_comparison.py \
    --workdir=runs/sweeps/models   (add --config... overrides via the sweep; set
    data.manual_dir below for real data)
Runtime: 3 models x 5 folds at 256x256 on one GPU, roughly 15 runs of
~10-30 min each (not yet measured: no GPU run so far).
Should show: the ResNeXt50-UNet ahead of the U-Net and the FPN once Dice is
measured per patient on held-out patients (the seed's 0.89/0.83/0.78 were
slice-level and leaky); published per-patient Dice on this data is 0.82-0.84.
"""

from experiments.common import common, members

MANUAL_DIR = ""  # the folder holding kaggle_3m/; empty: the synthetic dataset


def get_sweep(tiny: bool):
  # Each model starts from its own config (its learning rate among others).
  grid = [{"config": f"configs/{c}.py"} for c in ("unet", "fpn", "resnext")]
  if MANUAL_DIR and not tiny:
    grid = [{**g, "data.manual_dir": MANUAL_DIR} for g in grid]
  return {"title": "Model comparison (test per-patient Dice, patient folds)", "config": "configs/unet.py",
          "common": common(tiny), "members": members(grid, tiny), "group_by": ["config"]}
