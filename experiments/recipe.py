"""The CPU recipe on the 62 real dev patients: its ablation and its 5-fold
cross-validation, in one sweep.

Command: python -m experiments.run --sweep=experiments/recipe.py
  (set MANUAL_DIR below if the dev patients are elsewhere than ../shared/data/lgg_dev)
Runtime on 2 CPU cores: rows r0-r6 and the side row s1 train 16 epochs
(15-18 min a run, 18 runs), r7 trains the recipe's 40 epochs on all 5 folds
(about 45 min a run); r8-r10 only re-score r7's checkpoints (minutes). About
9 hours in all.
Should show: each element's measured gain (the paired per-patient difference to
the chain row before it, with its interval; an element that does not help says so), two
seeds of the baseline as the noise floor, the side row s1 choosing the
percentile clip by measurement (compared with r6), and in r9 the recipe's 5-fold
development cross-validation (the recipe was tuned on these folds), target mean
per-patient Dice >= 0.80 with false positives on <= 3% of tumour-free slices.
Figures: benchmarks/QUALITY.md ("The CPU recipe: 5-fold development
cross-validation" and "Ablation on real dev patients").
The shipped ensemble's settings (TTA, component fraction) are measured by
experiments/ensemble.py on the recipe's folds trained again: r7's runs were
not kept, and retraining did not reproduce them (benchmarks/QUALITY.md).
"""

import pathlib

from experiments.common import TINY

MANUAL_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg_dev")
ABLATION_EPOCHS = 16
FOLDS = (0, 1)
NO_INFERENCE_EXTRAS = {"inference.tta": "none", "inference.choose_threshold": False,
                       "inference.largest_component": False}


def rows(tiny: bool = False) -> list[dict]:
  """Each chain row adds one element to the chain row before it (all from
  configs/unet_cpu.py); a side row (compare_to) changes one setting of the row it names."""
  epochs = 1 if tiny else ABLATION_EPOCHS
  base = {"config": "configs/unet_cpu.py", "num_epochs": epochs, "split.num_folds": 5, **NO_INFERENCE_EXTRAS}
  norm = {**base, "data.normalization": "patient"}
  neighbours = {**norm, "data.neighbours": 1}
  sampling = {**neighbours, "data.tumour_fraction": 0.33}
  augmentation = {**sampling, "augment.name": "nnunet", "augment.affine_probability": 0.3,
                  "augment.rotate_limit": 30.0, "augment.scale_limit": 0.2, "augment.shift_limit": 0.05,
                  "schedule.warmup_steps": 200}
  missing = {**augmentation, "augment.missing_sequence_probability": 0.25}
  batchnorm = {**missing, "model.unet.norm": "batch"}
  recipe = {"config": "configs/recipe_cpu.py", **NO_INFERENCE_EXTRAS}
  return [
      {"name": "r0-before", "label": "unet_cpu (before)", "overrides": base, "seeds": (0, 1)},
      {"name": "r1-normalisation", "label": "+ per-patient normalisation", "overrides": norm},
      {"name": "r2-neighbours", "label": "+ 2.5-D input (k=1)", "overrides": neighbours},
      {"name": "r3-sampling", "label": "+ tumour sampling (33%)", "overrides": sampling},
      {"name": "r4-augmentation", "label": "+ nnU-Net augmentation", "overrides": augmentation},
      {"name": "r5-missing-sequences", "label": "+ missing-sequence simulation (25%)", "overrides": missing},
      {"name": "r6-batchnorm", "label": "+ BatchNorm in the U-Net", "overrides": batchnorm},
      {"name": "s1-clip-p10-p99", "label": "side: + BatchNorm, brain clipped at p10-p99 (Buda's numbers)",
       "overrides": {**batchnorm, "data.normalization_percentiles": (10.0, 99.0)},
       "compare_to": "+ BatchNorm in the U-Net"},
      {"name": "r7-epochs", "label": "+ 40 epochs (the recipe's training)",
       "overrides": {**batchnorm, "num_epochs": 2} if tiny else recipe,
       "folds": (0,) if tiny else (0, 1, 2, 3, 4)},
      {"name": "r8-tta", "label": "+ dihedral TTA", "evaluate": "+ 40 epochs (the recipe's training)",
       "inference": {"inference.tta": "dihedral"}},
      {"name": "r9-recipe", "label": "+ largest 3-D component (the recipe)", "evaluate": "+ dihedral TTA",
       "inference": {"inference.largest_component": True}},
      {"name": "r10-threshold", "label": "+ threshold chosen on the validation patients (not in the recipe)",
       "evaluate": "+ largest 3-D component (the recipe)", "inference": {"inference.choose_threshold": True}},
  ]


def get_sweep(tiny: bool):
  common = dict(TINY) if tiny else {"data.manual_dir": MANUAL_DIR}
  return {"title": "CPU recipe on the real dev patients: ablation and 5-fold development cross-validation",
          "config": "configs/unet_cpu.py", "common": common, "rows": rows(tiny),
          "folds": (0,) if tiny else FOLDS, "seeds": (0,)}
