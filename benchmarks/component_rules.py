"""Which 3-D component the post-processing keeps: by volume, or by the model's confidence.

python -m benchmarks.component_rules --probabilities=cv_probabilities/recipe_cpu

Reads the cross-validated probabilities that `benchmarks.cv_probabilities`
saved (each dev patient predicted by the fold model that held it out) and
scores every rule of `inference.COMPONENT_RANKS` with the shipped threshold
and no TTA, per patient at 256x256: Dice, HD95, false positives on tumour-free
slices, missed patients, and the mean over patients with small tumours
(fewer than metrics.SMALL_TUMOUR_PIXELS true pixels). Prints a markdown table, and for each confidence
rule its paired per-patient Dice difference to "volume" with a 95% BCa
bootstrap interval over patients, and the patients whose Dice it moves.

The choice rule, written down before any score was seen: "volume" (today's
rule) stays unless a confidence rule's paired difference has an interval
that excludes 0 in its favour; if both confidence rules do, the one with the
larger mean difference is chosen. Fractions are not searched here (they were
measured in experiments/ensemble.py).
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import cv_files
from experiments import run
from lgg_jax import cli, command_flags, config_defaults, evaluate, inference

SHIPPED_THRESHOLD = 0.5

command_flags.take("threshold")  # the probability threshold; 'model': the shipped one, 0.5
command_flags.take("probabilities", "json")  # --probabilities (cv_probabilities' folder), --json (per-patient rows)


def score_rules(patients: list[dict], threshold: float, ranks=inference.COMPONENT_RANKS) -> dict[str, list[dict]]:
  """rank -> per-patient rows (patient, fold, dice, hd95_px, ...) with the component step on."""
  evaluation = config_defaults.get_config().evaluation
  rows = {rank: [] for rank in ranks}
  for saved in patients:
    for rank in ranks:
      settings = inference.Settings(threshold, "none", True, 0.0, rank)
      row, _ = evaluate.score_patient(inference.postprocess(saved["probabilities"], settings), saved["truth"],
                                      evaluation)
      rows[rank].append({"patient": saved["patient"], "fold": saved["fold"], **row})
  return rows


def decide(differences: dict[str, dict]) -> str:
  """The rule stated in the module docstring."""
  winners = {rank: d for rank, d in differences.items() if d["low"] > 0}
  return max(winners, key=lambda rank: winners[rank]["mean"]) if winners else "volume"


def table(rows: dict[str, list[dict]]) -> tuple[list[str], dict[str, dict]]:
  lines = ["| rank | patients | mean Dice [95% CI] | median | small tumours | HD95 px | FP slices | missed | "
           "vs volume [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
  reference = np.array([r["dice"] for r in rows["volume"]])
  differences = {}
  for rank, patient_rows in rows.items():
    dice = np.array([r["dice"] for r in patient_rows])
    small = np.array([evaluate.is_small_tumour(r) for r in patient_rows])
    hd = np.array([r["hd95_px"] for r in patient_rows], float)
    empty = sum(r["slices"] - r["tumour_slices"] for r in patient_rows)
    fp = sum(r["false_positive_slices"] for r in patient_rows) / max(empty, 1)
    low, high = run.bootstrap_interval(dice)
    versus = "-"
    if rank != "volume":
      diff = dice - reference
      d_low, d_high = run.bootstrap_interval(diff)
      differences[rank] = {"mean": float(diff.mean()), "low": d_low, "high": d_high,
                           "changed": [(r["patient"], float(v), float(d)) for r, v, d in
                                       zip(patient_rows, reference, dice) if v != d]}
      versus = f"{diff.mean():+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
    lines.append(f"| {rank} | {len(dice)} | {dice.mean():.3f} [{low:.3f}, {high:.3f}] | {np.median(dice):.3f} | "
                 f"{dice[small].mean():.3f} ({small.sum()}) | "
                 f"{np.nanmean(hd):.1f} | {fp:.1%} | {int((dice < evaluate.MISSED_DICE).sum())} | {versus} |")
  return lines, differences


def main(argv):
  del argv
  paths = cv_files.saved_patients(cv_files.PROBABILITIES.value)
  if not paths:
    raise FileNotFoundError(f"{cv_files.PROBABILITIES.value}: no saved patients (run benchmarks.cv_probabilities first)")
  rows = score_rules([cv_files.load_patient(p) for p in cli.progress(paths, desc="load", unit="patient")],
                     command_flags.threshold() or SHIPPED_THRESHOLD)
  lines, differences = table(rows)
  print("\n".join(lines))
  for rank, d in differences.items():
    moved = ", ".join(f"{p} {a:.3f} -> {b:.3f}" for p, a, b in d["changed"]) or "none"
    print(f"\n{rank}: {len(d['changed'])} patients change: {moved}")
  print(f"\nchosen by the stated rule: {decide(differences)}")
  if cv_files.JSON.value:
    with open(cv_files.JSON.value, "w") as f:
      json.dump({"rows": rows, "differences": differences, "chosen": decide(differences)}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
