"""Each dev patient's probabilities from the fold model that held it out, saved once.

python -m benchmarks.cv_probabilities --models=pretrained:recipe_cpu \
    --manual_dir=../shared/data/lgg_dev --out=cv_probabilities/recipe_cpu

For every member (a run folder or an export whose config names a patient
fold), the patients of its fold's test split are predicted through the one
inference path (`inference.Predictor`, no TTA, no post-processing) and saved
as `<out>/<patient>.npz`: float32 probabilities (S, 256, 256), the
probabilities of the left-right mirrored volume mirrored back (a second view,
for the quality estimate), bool truth, and the member's fold. Post-processing rules (`benchmarks/component_rules.py`)
and quality signals are then scored on these files without predicting again.
A patient already saved is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from benchmarks import cv_files
from lgg_jax import cli, command_flags, inference, loading, parallel
from lgg_jax.data import pipeline

# Shared flags: --models (fold models: run folders, exports, or a pretrained name,
# its members; default pretrained:recipe_cpu), --manual_dir (the dev patients'
# kaggle_3m/ or the folder above it), --out (the folder for <patient>.npz;
# default cv_probabilities).
command_flags.take("models", "manual_dir", "out")


def save_fold_probabilities(member: inference.Member, manual_dir: str, out: pathlib.Path, mesh) -> list[str]:
  """Predicts the member's held-out patients; returns the patients written now."""
  config = member.config.copy_and_resolve_references()
  config.data.manual_dir = str(manual_dir)
  config.split.file = ""
  data = pipeline.load(config)
  patients = [p for p in data.patients(data.split.test) if not (out / f"{p}.npz").is_file()]
  predictor = inference.Predictor(member, mesh, member.settings.replace(tta="none"))
  written = []
  for patient, probabilities, truth in cli.progress(predictor.predict_patients(data, patients),
                                                    total=len(patients), desc=f"fold {config.split.fold}",
                                                    unit="patient"):
    partial = out / f"{patient}.partial.npz"
    mirrored = predictor.mirrored_probabilities(data.volume(patient)[0])
    np.savez_compressed(partial, probabilities=probabilities.astype(np.float32), truth=truth,
                        mirrored=mirrored.astype(np.float32), fold=np.int32(config.split.fold))
    partial.rename(out / f"{patient}.npz")
    written.append(patient)
  return written


def main(argv):
  del argv
  if not command_flags.MANUAL_DIR.value:
    raise ValueError("--manual_dir is needed: the folder of the patients the fold models held out")
  out = pathlib.Path(command_flags.OUT.value or "cv_probabilities")
  out.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  folds = {}
  for path in loading.model_paths(loading.cli_models(command_flags.MODELS.value or ["pretrained:recipe_cpu"])):
    member = loading.load_member(path, mesh=mesh)
    fold = int(member.config.split.fold)
    if fold in folds:
      raise ValueError(f"{path} and {folds[fold]} are both fold {fold}: give one model per fold")
    folds[fold] = str(path)
    save_fold_probabilities(member, command_flags.MANUAL_DIR.value, out, mesh)
  (out / "models.json").write_text(json.dumps({"folds": folds}, indent=1))
  print(f"{len(cv_files.saved_patients(out))} patients in {out}")


if __name__ == "__main__":
  cli.run(main)
