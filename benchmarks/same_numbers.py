"""Tiny trainings whose every logged number must survive a refactor bit for bit.

  python -m benchmarks.same_numbers --out=before.json [--old_layout]   # at the old commit
  python -m benchmarks.same_numbers --out=after.json --compare=before.json

At a commit before the model blocks (config.model.unet.*, ...) copy this
file into that checkout and pass --old_layout: the cases' keys are renamed
back (OLD_LAYOUT), which is how benchmarks/same_numbers_f42bddd.json was made.

Each case trains a tiny model on the embedded synthetic data (seconds on a
CPU) and records every epoch's metrics.jsonl line (lr, losses, grad norm,
validation scores) and the test scores of the best checkpoint. --compare
lists every number that differs and exits 1 if any does. The cases cover
each model, the frozen encoder, crops with deep supervision, the on-device
augmentation, each loss and optimizer, and the inference extras. Bit for bit
holds on one machine; XLA may round differently on another.
"""

from __future__ import annotations

import json
import math
import pathlib
import tempfile

from absl import app, flags

try:
  from lgg_jax import command_flags
  _OUT = command_flags.OUT
  command_flags.take("out")  # the JSON file to write the numbers to
except ImportError:  # a commit before lgg_jax.command_flags
  _OUT = flags.DEFINE_string("out", None, "The JSON file to write the numbers to.")

_OLD = flags.DEFINE_bool("old_layout", False, "Rename the cases' keys to the layout before the per-part blocks.")
_COMPARE = flags.DEFINE_string("compare", None, "A JSON file written by an earlier run to compare with.")
_CASES = flags.DEFINE_list("cases", None, "Run only these cases (default: all).")

TINY = {"data.image_size": 32, "data.synthetic.num_patients": 8, "data.synthetic.min_slices": 6,
        "data.synthetic.max_slices": 8, "global_batch_size": 8, "eval_batch_size": 16, "num_epochs": 2,
        "split.num_folds": 4, "split.val_fraction": 0.2, "schedule.warmup_steps": 2,
        "optimizer.learning_rate": 3e-3, "write_report": False}
UNET = {"model.unet.base_width": 4, "model.unet.depth": 3}

# Dotted overrides of lgg_jax's default config, per case.
CASES = {
    "unet": {**UNET},
    "unet_recipe": {**UNET, "model.unet.norm": "batch", "data.normalization": "patient", "data.neighbours": 1,
                    "data.tumour_fraction": 0.33, "augment.name": "nnunet", "augment.affine_probability": 0.3,
                    "augment.rotate_limit": 30.0, "augment.missing_sequence_probability": 0.25,
                    "inference.tta": "dihedral", "inference.largest_component": True,
                    "inference.choose_threshold": True},
    "unet_crops_ds": {**UNET, "model.unet.deep_supervision": True, "model.unet.norm": "batch",
                      "data.image_size": 256, "data.crop_size": 32, "data.normalization": "patient",
                      "data.crop_context": 8, "data.tumour_fraction": 0.33, "augment.name": "seed"},
    "unet_on_device": {**UNET, "data.on_device": True, "augment.name": "distortions", "loss.name": "dice",
                       "optimizer.name": "adam", "schedule.name": "constant"},
    "fpn": {"model.name": "fpn", "model.fpn.base_width": 4, "model.fpn.pyramid_channels": 8,
            "model.fpn.segmentation_channels": 8, "model.fpn.group_norm_groups": 4, "loss.name": "bce",
            "inference.tta": "flips"},
    "resnext_frozen": {"model.name": "resnext_unet", "model.resnext_unet.stem_width": 8,
                       "model.resnext_unet.blocks": (1, 1, 1, 1), "model.resnext_unet.groups": 4,
                       "model.resnext_unet.width_per_group": 16, "model.freeze_encoder_epochs": 1,
                       "model.freeze_encoder_bn_epochs": 1, "optimizer.name": "sgd"},
}


# Today's key prefixes -> the layout before the model blocks (--old_layout).
OLD_LAYOUT = (("model.unet.", "model."), ("model.fpn.base_width", "model.base_width"),
              ("model.resnext_unet.", "model.resnext."), ("schedule.name", "optimizer.schedule"),
              ("schedule.warmup_steps", "optimizer.warmup_steps"))


def old_layout(overrides: dict) -> dict:
  renamed = {}
  for key, value in overrides.items():
    for new, old in OLD_LAYOUT:
      if key.startswith(new):
        key = old + key[len(new):]
        break
    renamed[key] = value
  return renamed


def config_for(overrides: dict):
  from lgg_jax import config_defaults
  if _OLD.value:
    overrides = old_layout(overrides)
  config = config_defaults.get_config()
  config.lock()  # a misspelt key is an error, not a new setting
  config.update_from_flattened_dict(overrides)
  return config


def run_case(name: str, workdir: pathlib.Path) -> dict:
  from lgg_jax import train
  config = config_for({**TINY, **CASES[name]})
  config.data.data_dir = str(workdir / "cache")
  summary = train.train_and_evaluate(config, workdir / name)
  epochs = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
  return {"epochs": [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in epochs],
          "test": summary.get("test"), "best_step": summary.get("best_step")}


def differences(before, after, path="") -> list[str]:
  if isinstance(before, dict) and isinstance(after, dict):
    return [d for k in sorted(set(before) | set(after))
            for d in differences(before.get(k), after.get(k), f"{path}.{k}" if path else k)]
  if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
    return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
  same = before == after or (isinstance(before, float) and isinstance(after, float)
                             and math.isnan(before) and math.isnan(after))
  return [] if same else [f"{path}: {before!r} -> {after!r}"]


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError("give --out=FILE.json")
  names = _CASES.value or list(CASES)
  for name in names:
    if name not in CASES:
      raise app.UsageError(f"--cases: unknown case {name!r} (known: {', '.join(CASES)})")
  with tempfile.TemporaryDirectory() as tmp:
    numbers = {name: run_case(name, pathlib.Path(tmp)) for name in names}
  pathlib.Path(_OUT.value).write_text(json.dumps(numbers, indent=1))
  print(f"wrote {_OUT.value}: {len(numbers)} cases")
  if _COMPARE.value:
    before = json.loads(pathlib.Path(_COMPARE.value).read_text())
    diffs = differences({k: before.get(k) for k in numbers}, numbers)
    print("\n".join(diffs) if diffs else f"every number equals {_COMPARE.value}'s, bit for bit")
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
  app.run(main)
