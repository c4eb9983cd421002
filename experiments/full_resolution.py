"""Full resolution for the cost of 128x128: crops, then deep supervision, on
the 5 patient folds of the 62 dev patients, and the new recipe's shipped settings.

Command: python -m experiments.run --sweep=experiments/full_resolution.py [--folds=0] [--rows=...]
  (train in a git worktree at a fixed commit; a member resumes from its checkpoints)
Runtime on 2 CPU cores: f0 and f1 train 40 epochs a fold. A crop step costs
what a 128x128 step costs, but validation runs on whole 256x256 slices: 87
minutes to 2 h 13 min a fold measured beside other work, about 3 h 20 min
on a slower CPU (benchmarks/QUALITY.md, "Crops and deep supervision"); f2
re-scores f1's checkpoints (minutes).
Rows:
  f0-crops      configs/recipe_cpu.py with 128x128 crops of the 256x256 slices
                (data.crop_size) instead of whole slices downsized to 128x128
  f1-crops-ds   + deep supervision (configs/recipe_crops_cpu.py)
  f2-shipped    f1 scored with the settings that would ship (no TTA, largest
                3-D component by volume, as the current ensemble)
Each trained row uses plain inference, as experiments/ensemble.py's e0, the
runs of today's shipped ensemble, which f0 is compared with
(`python -m benchmarks.rerun_noise --old=ensemble/e0-recipe --new=full_resolution/f0-crops`).
Should show: what full-resolution crops are worth against the shipped runs
(f0 vs e0), what deep supervision adds (f1 vs f0), and the new recipe's
cross-validated figure with its shipped settings (f2), small tumours apart.
Rules, stated before any fold was scored: an element counts as a gain only if
its paired per-patient difference has a 95% interval excluding 0 and its
mean exceeds the retraining noise floor (benchmarks/QUALITY.md: the same
recipe trained twice differs by up to 0.034 in the mean over 62 patients);
the new recipe is f1 unless f0 beats it by that rule, and it ships only if
its shipped settings beat today's 0.780 over the same 62 patients with an
interval excluding 0. Figures: benchmarks/QUALITY.md ("Full resolution").
"""

from experiments.common import TINY
from experiments.recipe import MANUAL_DIR, NO_INFERENCE_EXTRAS

CROPS = "recipe_cpu with 128x128 crops at 256x256"
CROPS_DS = "+ deep supervision (configs/recipe_crops_cpu.py)"
SHIPPED = "f1 with the shipped settings (no TTA, largest component)"
TINY_CROPS = {"data.image_size": 256, "data.crop_size": 32, "data.crop_context": 8}


def rows(tiny: bool = False) -> list[dict]:
  training = {"config": "configs/recipe_crops_cpu.py", **NO_INFERENCE_EXTRAS, "write_report": False}
  if tiny:
    training = {**training, **TINY_CROPS, "num_epochs": 1}
  return [
      {"name": "f0-crops", "label": CROPS, "overrides": {**training, "model.unet.deep_supervision": False}},
      {"name": "f1-crops-ds", "label": CROPS_DS, "overrides": training},
      {"name": "f2-shipped", "label": SHIPPED, "evaluate": CROPS_DS,
       "inference": {"inference.tta": "none", "inference.largest_component": True}},
  ]


def get_sweep(tiny: bool):
  common = dict(TINY) if tiny else {"data.manual_dir": MANUAL_DIR}
  return {"title": "Full resolution: 128x128 crops of the 256x256 slices, deep supervision, the new recipe",
          "config": "configs/recipe_crops_cpu.py", "common": common, "rows": rows(tiny),
          "folds": (0,) if tiny else (0, 1, 2, 3, 4), "seeds": (0,)}
