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
A patient already saved is skipped, so an interrupted run resumes;
`models.json` names the models, and an --out holding other models' files
is refused. The test patients rebuilt from --manual_dir must be those the
member recorded (split.json or its card), or nothing is predicted.
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
  """Predicts the member's held-out patients (its split rebuilt from
  `manual_dir`, which must give the test patients the member recorded);
  returns the patients written now."""
  config = member.config.copy_and_resolve_references()
  config.data.manual_dir = str(manual_dir)
  config.split.file = ""
  data = pipeline.load(config)
  recorded = sorted(loading.held_out_patients(pathlib.Path(member.source)))
  rebuilt = data.patients(data.split.test)
  if rebuilt != recorded:
    raise ValueError(f"--manual_dir={manual_dir} gives {member.source}'s fold {config.split.fold} other test "
                     f"patients than it held out ({len(set(rebuilt) - set(recorded))} it did not hold out, e.g. "
                     f"{', '.join(sorted(set(rebuilt) - set(recorded))[:3]) or '-'}; "
                     f"{len(set(recorded) - set(rebuilt))} missing): give the folder of the patients it was "
                     "trained and tested on")
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


MODELS_FILE = "models.json"


def check_same_models(out: pathlib.Path, folds: dict[int, str]) -> None:
  """Files already in `out` are skipped, not predicted again: they must be these models'."""
  saved = cv_files.saved_patients(out) if out.is_dir() else []
  if not saved:
    return
  if not (out / MODELS_FILE).is_file():
    raise ValueError(f"{out}: holds {len(saved)} patients' probabilities but no {MODELS_FILE} naming their "
                     "models; give an empty --out")
  before = {int(k): v for k, v in json.loads((out / MODELS_FILE).read_text())["folds"].items()}
  other = {k: before[k] for k in folds if k in before and before[k] != folds[k]}
  if other:
    raise ValueError(f"{out}: its probabilities of fold(s) {', '.join(map(str, sorted(other)))} came from "
                     f"{', '.join(other.values())}, not {', '.join(folds[k] for k in sorted(other))}: give another "
                     "--out")


def main(argv):
  del argv
  if not command_flags.MANUAL_DIR.value:
    raise ValueError("--manual_dir is needed: the folder of the patients the fold models held out")
  out = pathlib.Path(command_flags.OUT.value or "cv_probabilities")
  mesh = parallel.make_mesh()
  members, folds = [], {}
  for path in loading.model_paths(loading.cli_models(command_flags.MODELS.value or ["pretrained:recipe_cpu"])):
    member = loading.load_member(path, mesh=mesh)
    fold = int(member.config.split.fold)
    if fold in folds:
      raise ValueError(f"{path} and {folds[fold]} are both fold {fold}: give one model per fold")
    folds[fold] = str(path)
    members.append(member)
  check_same_models(out, folds)
  out.mkdir(parents=True, exist_ok=True)
  (out / MODELS_FILE).write_text(json.dumps({"folds": {str(k): v for k, v in sorted(folds.items())}}, indent=1))
  for member in members:
    save_fold_probabilities(member, command_flags.MANUAL_DIR.value, out, mesh)
  print(f"{len(cv_files.saved_patients(out))} patients in {out}")


if __name__ == "__main__":
  cli.run(main)
