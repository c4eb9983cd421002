"""Predict's masks score what evaluate scores, on a real run.

python -m benchmarks.one_truth --workdir=RUN [--tta=dihedral]

For each setting of the component step (the run's own, then on and off),
scores the run's test patients with `lgg_jax.evaluate` and segments the
same patients' folders with `lgg_jax.predict` (its Dice against the
`_mask` files beside the slices), and prints both per-patient Dice columns
and their largest difference. They must agree to 1e-6: one inference path.
"""

from __future__ import annotations

import csv
import pathlib
import tempfile

from absl import flags

from lgg_jax import cli, command_flags, evaluate, predict, state
from lgg_jax.data import pipeline

command_flags.take("workdir", "tta")  # a run folder (its test patients are scored); TTA for both (empty: the run's own)


def _patient_folders(config) -> pathlib.Path:
  """The kaggle_3m/ folder of the run's dataset (manual_dir may name it or the folder above)."""
  root = pipeline.resolve_manual_dir(config.data)
  return root / "kaggle_3m" if (root / "kaggle_3m").is_dir() else root


def compare(workdir, largest_component=None, tta=None) -> tuple[dict, dict]:
  """(evaluate's per-patient Dice, predict's) of the run's test patients."""
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    evaluate.evaluate_run(workdir, split="test", tta=tta, largest_component=largest_component,
                          out=str(tmp / "evaluation"))
    with open(tmp / "evaluation" / "per_patient.csv") as f:
      evaluated = {r["patient"]: float(r["dice"]) for r in csv.DictReader(f)}
    source = _patient_folders(state.load_config(workdir))
    cases = tmp / "cases"
    cases.mkdir()
    for patient in evaluated:
      (cases / patient).symlink_to(source / patient)
    predicted = {r["case"]: r["dice"] for r in predict.predict(
        workdir, cases, tmp / "predictions", tta=tta, largest_component=largest_component)}
  return evaluated, predicted


def main(argv):
  del argv
  for setting in (None, True, False):
    evaluated, predicted = compare(command_flags.one(command_flags.WORKDIR, 'run folder'), setting,
                                   command_flags.inference_overrides(with_threshold=False)['tta'])
    worst = max(abs(evaluated[p] - predicted[p]) for p in evaluated)
    mean_e = sum(evaluated.values()) / len(evaluated)
    mean_p = sum(predicted.values()) / len(predicted)
    label = {None: "the run's own", True: "on", False: "off"}[setting]
    print(f"\n## largest component: {label}; evaluate {mean_e:.4f}, predict {mean_p:.4f}, "
          f"largest difference {worst:.1e}\n\n| patient | evaluate | predict |\n|---|---|---|")
    for p in sorted(evaluated):
      print(f"| {p} | {evaluated[p]:.6f} | {predicted[p]:.6f} |")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
