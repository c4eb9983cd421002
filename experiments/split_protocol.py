"""Split-protocol ablation: how much the seed's slice-level split inflates Dice.

Command: python -m experiments.run --sweep=experiments/split_protocol.py --workdir=runs/sweeps/split
Runtime: 2 protocols x 5 folds of the full U-Net on one GPU (not yet measured).
Should show: the leaky slice split (a patient's slices in train and test)
scores higher than the patient split on the same data; the gap is the
inflation in the seed's reported numbers.
Under the slice protocol each fold scores a part of every patient; the table
pools a patient's parts into one volumetric Dice (experiments.run), while
its HD95 is the mean over parts of slices that are not neighbours: compare
the protocols on Dice.
"""

from experiments.common import common, members


def get_sweep(tiny: bool):
  grid = [{"split.protocol": p} for p in ("patient", "slice")]
  return {"title": "Split protocol: patient vs slice (leaky)", "config": "configs/unet.py",
          "common": common(tiny), "members": members(grid, tiny), "group_by": ["split.protocol"]}
