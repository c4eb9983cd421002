"""Reading the files `benchmarks.cv_probabilities` writes, and the flags of
the benchmarks that read them (defined once: the suite imports them all)."""

from __future__ import annotations

import pathlib

import numpy as np
from absl import flags

PROBABILITIES = flags.DEFINE_string("probabilities", "cv_probabilities/recipe_cpu",
                                    "Folder written by benchmarks.cv_probabilities.")
JSON = flags.DEFINE_string("json", "", "Also write the per-patient rows here.")


def load_patient(path: pathlib.Path) -> dict:
  """One saved patient: probabilities, truth, fold."""
  with np.load(path) as saved:
    return {"patient": path.stem, "probabilities": saved["probabilities"], "truth": saved["truth"],
            "fold": int(saved["fold"]), "mirrored": saved["mirrored"] if "mirrored" in saved else None}


def saved_patients(folder) -> list[pathlib.Path]:
  """Each patient's finished file (not one cv_probabilities was stopped writing: *.partial.npz)."""
  return sorted(p for p in pathlib.Path(folder).glob("TCGA_*.npz") if not p.name.endswith(".partial.npz"))
