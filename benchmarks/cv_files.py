"""Reading the files `benchmarks.cv_probabilities` writes (no flags: any benchmark may import it)."""

from __future__ import annotations

import pathlib

import numpy as np


def load_patient(path: pathlib.Path) -> dict:
  """One saved patient: probabilities, truth, fold."""
  with np.load(path) as saved:
    return {"patient": path.stem, "probabilities": saved["probabilities"], "truth": saved["truth"],
            "fold": int(saved["fold"]), "mirrored": saved["mirrored"] if "mirrored" in saved else None}


def saved_patients(folder) -> list[pathlib.Path]:
  return sorted(pathlib.Path(folder).glob("TCGA_*.npz"))
