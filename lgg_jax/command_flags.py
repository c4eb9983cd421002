"""Flags shared by the commands that use trained models, each defined once.

absl keeps one flag of a name per process, and the commands import one
another (main -> train -> evaluate; the benchmarks import predict and
export), so each command's own flags sit at its module level and the ones
several commands take are defined here. A command names the shared flags it
takes (`take`, absl's key flags: they show in its --help); `cli.run` makes
any other flag of the project given on its command line an error, so that
nothing set is silently ignored. Unset values mean the command's default.
Every module that defines flags at import time and shares a name with
another takes it from here: the test suite imports them all into one process.
"""

from __future__ import annotations

import sys

from absl import flags

from lgg_jax import registry
from lgg_jax.choices import COMPONENT_RANKS

WORKDIR = flags.DEFINE_list("workdir", None, "Run folder(s) written by lgg_jax.main (lgg_jax.main: the one "
                            "to train in); several, comma-separated: an ensemble, where the command takes one "
                            "(so a folder's path cannot hold a comma).")
MODEL = flags.DEFINE_list("model", None, "Export folder(s), run folder(s) or 'pretrained' (the shipped "
                          "ensemble); several: an ensemble.")
CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
INPUT = flags.DEFINE_string("input", None, "Slices, patient folders or NIfTI volumes (lgg_jax.predict's doc).")
MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "A dataset folder (kaggle_3m/ or the folder holding it).")
SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split of the run's own data.")
MODELS = flags.DEFINE_list("models", None, "Models, of the kind the command's doc names (architectures to "
                           "time, or trained runs or exports).")
OUT = flags.DEFINE_string("out", None, "Output folder (unset: the command's default, named in its doc above).")
SAVE_PROBABILITIES = flags.DEFINE_bool("save_probabilities", False, "Also write each patient's mean probability "
                                       "and voxel-wise uncertainty as float32 NIfTI (the review page shows them).")
ONNX = flags.DEFINE_bool("onnx", False, "ONNX: export model.onnx and onnx_predict.py (the [onnx] extra), or "
                         "time it.")
TTA = flags.DEFINE_string("tta", "", f"Test-time augmentation ({', '.join(registry.names('tta'))}); empty: "
                          "the model's own.")
LARGEST_COMPONENT = flags.DEFINE_bool("largest_component", None, "Keep each patient's largest 3-D component "
                                      "(--nolargest_component: do not); unset: the model's own.")
COMPONENT_FRACTION = flags.DEFINE_float("component_fraction", None, "With the component step, also keep every "
                                        "component of at least this fraction of the largest; unset: the "
                                        "model's own.")
COMPONENT_RANK = flags.DEFINE_enum("component_rank", "", ["", *COMPONENT_RANKS], "What ranks the components: "
                                   "voxels, or summed or highest probability; empty: the model's own.")
THRESHOLD = flags.DEFINE_string("threshold", "model", "Probability threshold: a number in (0, 1), or 'model' "
                                "(the model's own); lgg_jax.evaluate also takes 'val' (chosen on the run's "
                                "validation patients).")

INFERENCE = ("tta", "largest_component", "component_fraction", "component_rank", "threshold")


def take(*names: str) -> None:
  """Declares the shared flags the calling command reads: absl key flags of
  the calling module (flags.declare_key_flag would name this module)."""
  caller = sys._getframe(1).f_globals.get("__name__")
  module = sys.argv[0] if caller == "__main__" else caller  # absl's name for a main module
  for name in names:
    flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])


def one(flag, what: str) -> str | None:
  """The single value of a list flag that a command takes once."""
  if flag.value and len(flag.value) != 1:
    raise ValueError(f"--{flag.name} takes one {what} here, got {len(flag.value)}: {','.join(flag.value)}")
  return flag.value[0] if flag.value else None


def model_or_workdir() -> tuple[list[str] | None, list[str] | None]:
  """(--model, --workdir) of a command that takes either, never both: one of
  them would be ignored (an ensemble of both kinds: --model=A,B)."""
  if MODEL.value and WORKDIR.value:
    raise ValueError(f"give --model or --workdir, not both: --model={','.join(MODEL.value)} would run "
                     f"without --workdir={','.join(WORKDIR.value)} (for an ensemble of both, list them all "
                     "in --model)")
  return MODEL.value, WORKDIR.value


def threshold(allow_val: bool = False) -> float | str | None:
  """--threshold as a number, None (the model's own) or 'val' where allowed."""
  value = THRESHOLD.value.strip()
  if value in ("", "model"):
    return None
  if value == "val" and allow_val:
    return "val"
  want = "want a number in (0, 1) or 'model'" + (" or 'val'" if allow_val else "")
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"--threshold={value}: {want}") from None
  if number < 0:  # the old float flag's spelling of "the model's own"
    return None
  if not 0 < number < 1:
    raise ValueError(f"--threshold={value}: {want}")
  return number


def inference_overrides(with_threshold: bool = True) -> dict:
  """The inference flags as `inference.Settings` overrides (None: unset)."""
  if TTA.value and TTA.value not in registry.names("tta"):
    raise ValueError(f"--tta={TTA.value}: want one of {', '.join(registry.names('tta'))} (empty: the model's own)")
  values = {"tta": TTA.value or None, "largest_component": LARGEST_COMPONENT.value,
            "component_fraction": COMPONENT_FRACTION.value, "component_rank": COMPONENT_RANK.value or None}
  if with_threshold:
    values["threshold"] = threshold()
  return values
