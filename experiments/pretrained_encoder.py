"""ImageNet encoder weights or not, ResNeXt50-UNet, 5 folds.

Command: python -m experiments.run --sweep=experiments/pretrained_encoder.py --workdir=runs/sweeps/pretrained
Set WEIGHTS to a local torchvision resnext50_32x4d file (.pth or .safetensors);
without it those members are reported as skipped. Nothing is downloaded.
Runtime: 2 x 5 folds on one GPU (not yet measured).
Should show: pretrained weights converge faster and generalise better.
"""

from experiments.common import common, members

WEIGHTS = "~/weights/resnext50_32x4d-1a0047aa.pth"


def get_sweep(tiny: bool):
  grid = [{"model.name": "resnext_unet", "model.pretrained_path": ""},
          {"model.name": "resnext_unet", "model.pretrained_path": WEIGHTS}]
  return {"title": "Pretrained encoder", "config": "configs/resnext.py", "common": common(tiny), "members": members(grid, tiny),
          "group_by": ["model.pretrained_path"]}
