"""How far two trainings of one recipe differ: the committed recipe folds
(experiments/results/recipe/, 2026-11-28) against the same recipe trained
again for the shipped ensemble (experiments/results/ensemble/), scored with
the same inference settings, per patient.

python -m benchmarks.rerun_noise [--old=r9-recipe --new=e1-recipe-settings]
python -m benchmarks.rerun_noise --old=ensemble/e0-recipe --new=full_resolution/f0-crops   # any two rows

Prints, per fold finished in both and over all of them, each side's mean
per-patient Dice and the paired difference (new - old) with its bootstrap
95% interval; then, over all of them, each side's median, patients below 0.7,
missed patients, HD95, false positives on tumour-free slices, and the mean
over small tumours (evaluate.is_small_tumour). The two were trained with the
same code, command, seed, package versions and data on different machines
(benchmarks/QUALITY.md): the difference is what a retraining alone moves,
the floor under any recipe comparison made from single runs.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import flags

from experiments import run
from lgg_jax import cli, evaluate, inference, quality

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "results"


def _files(sweep: str, row: str) -> dict[int, dict]:
  found = {}
  for path in sorted((RESULTS / sweep).glob(f"{row}-fold*-seed0.json")):
    result = json.loads(path.read_text())
    found[int(result["overrides"]["split.fold"])] = result
  return found


def _settings(result: dict) -> dict:
  """Inference settings, with the ones older files predate at their default."""
  return inference.Settings.from_dict(result["inference"], inference.Settings()).as_dict()


def compare(old: tuple[str, str], new: tuple[str, str]) -> list[str]:
  before, after = _files(*old), _files(*new)
  folds = sorted(set(before) & set(after))
  if not folds:
    raise ValueError(f"no fold has both {old[0]}/{old[1]} and {new[0]}/{new[1]} result files in {RESULTS}")
  for fold in folds:
    if _settings(before[fold]) != _settings(after[fold]):
      raise ValueError(f"fold {fold}: {old[1]} and {new[1]} were scored with different settings: "
                       f"{before[fold]['inference']} vs {after[fold]['inference']}")
  lines = [f"{new[0]}/{new[1]} (new) against {old[0]}/{old[1]} (old), settings {after[folds[0]]['inference']}", "",
           "| folds | patients | old mean | new mean | new - old [95% CI] |", "|---|---|---|---|---|"]
  for label, chosen in [*((str(f), [f]) for f in folds), ("all", folds)]:
    a = [after[f] for f in chosen]
    b = [before[f] for f in chosen]
    d = run.paired_difference(a, b)
    old_mean = np.mean([p["dice"] for r in b for p in r["test_per_patient"]])
    new_mean = np.mean([p["dice"] for r in a for p in r["test_per_patient"]])
    lines.append(f"| {label} | {d['patients']} | {old_mean:.4f} | {new_mean:.4f} | "
                 f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |")
  lines += ["", "| all folds | median | below 0.7 | missed | HD95 px | FP slices | small tumours |",
            "|---|---|---|---|---|---|---|"]
  for name, results in ((f"{old[1]} (old)", [before[f] for f in folds]), (f"{new[1]} (new)", [after[f] for f in folds])):
    lines.append(_summary(name, results))
  return lines


def _summary(name: str, results: list[dict]) -> str:
  t = run.summarise_group(results)
  rows = [p for r in results for p in r["test_per_patient"]]
  dice = np.array([p["dice"] for p in rows])
  small = np.array([evaluate.is_small_tumour(p) for p in rows])
  return (f"| {name} | {t['median']:.3f} | {int((dice < quality.FAILURE_DICE).sum())} | {t['missed']} | {t['hd95']:.1f} | "
          f"{t['fp_rate']:.1%} | {dice[small].mean():.3f} ({int(small.sum())}) |")


def _row(value: str, sweep: str) -> tuple[str, str]:
  """'row' (of the default sweep) or 'sweep/row'."""
  return tuple(value.split("/", 1)) if "/" in value else (sweep, value)


def main(argv):
  del argv
  for line in compare(_row(_OLD.value, "recipe"), _row(_NEW.value, "ensemble")):
    print(line)


if __name__ == "__main__":
  _OLD = flags.DEFINE_string("old", "r9-recipe", "Row of experiments/results/recipe/, or SWEEP/ROW.")
  _NEW = flags.DEFINE_string("new", "e1-recipe-settings", "Row of experiments/results/ensemble/ (same settings), "
                             "or SWEEP/ROW (e.g. full_resolution/f0-crops against ensemble/e0-recipe).")
  cli.run(main)
