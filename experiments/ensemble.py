"""The shipped ensemble's runs (lgg_jax/pretrained/recipe_cpu/): configs/recipe_cpu.py
trained on the 5 patient folds of the 62 dev patients, and the inference
settings it could ship with, each measured on those very runs.

Command: python -m experiments.run --sweep=experiments/ensemble.py [--folds=0,1]
  (e0 trains with r7's overrides; runs trained elsewhere with the same command
  line (`configs/recipe_cpu.py` plus e0's overrides) are reused when linked as
  runs/sweeps/ensemble/e0-recipe-fold{K}-seed0; --folds records finished folds
  while later ones train)
Runtime on 2 CPU cores: e0 trains 5 folds of 40 epochs (80 min each when the
cores are free); e1-e6 re-score them (2-10 min a fold).
Should show: e1 (dihedral TTA + largest 3-D component, the recipe's r9
settings) near r9's 0.815, another draw of the same recipe; what TTA is worth:
e2 flips against dihedral, e3 none against flips (the ensemble misses the
20 s target for a 40-slice patient with dihedral TTA, benchmarks/segment_speed.py;
rule: ship no TTA, the cheapest, unless flips beat it with an interval
excluding 0); e4-e6 whether keeping every component of at least 0.1/0.2/0.3
of the largest beats largest-only (rule: largest-only unless a fraction's
interval excludes 0 in its favour; a fraction so chosen is reported as selected).
Figures: benchmarks/QUALITY.md ("The shipped ensemble").
"""

from experiments.common import TINY
from experiments.recipe import MANUAL_DIR, NO_INFERENCE_EXTRAS

TRAINED = "configs/recipe_cpu.py retrained (plain inference)"
RECIPE = "+ dihedral TTA and the largest 3-D component (r9's settings)"
FLIPS = "side: 3-view flip TTA instead of dihedral TTA"
COMPONENT_FRACTIONS = (0.1, 0.2, 0.3)


def rows(tiny: bool = False) -> list[dict]:
  training = {"config": "configs/recipe_cpu.py", **NO_INFERENCE_EXTRAS, "write_report": False}
  side = [
      {"name": "e2-tta-flips", "label": FLIPS, "evaluate": RECIPE, "inference": {"inference.tta": "flips"},
       "compare_to": RECIPE},
      {"name": "e3-tta-none", "label": "side: no TTA", "evaluate": RECIPE, "inference": {"inference.tta": "none"},
       "compare_to": FLIPS},
  ] + [
      {"name": f"e{4 + i}-fraction-{fraction:g}", "label": f"side: + components >= {fraction:g} of the largest kept",
       "evaluate": RECIPE, "inference": {"inference.component_fraction": fraction}, "compare_to": RECIPE}
      for i, fraction in enumerate(COMPONENT_FRACTIONS)]
  return [
      {"name": "e0-recipe", "label": TRAINED, "overrides": {**training, "num_epochs": 1} if tiny else training},
      {"name": "e1-recipe-settings", "label": RECIPE, "evaluate": TRAINED,
       "inference": {"inference.tta": "dihedral", "inference.largest_component": True}},
  ] + (side[:1] if tiny else side)  # CI: one side row stands for the rest


def get_sweep(tiny: bool):
  common = dict(TINY) if tiny else {"data.manual_dir": MANUAL_DIR}
  return {"title": "The shipped ensemble: the recipe retrained on 5 folds, and its inference settings",
          "config": "configs/recipe_cpu.py", "common": common, "rows": rows(tiny),
          "folds": (0,) if tiny else (0, 1, 2, 3, 4), "seeds": (0,)}
