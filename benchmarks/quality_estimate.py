"""How well the quality estimate finds the masks to doubt, cross-validated on the dev patients.

python -m benchmarks.quality_estimate --probabilities=cv_probabilities/recipe_cpu [--write_rule=DIR]

Reads `benchmarks.cv_probabilities`'s files (each dev patient predicted by
the fold model that held it out, and its mirrored view), makes each mask
with the shipped settings (threshold 0.5, no TTA, largest 3-D component),
computes every single-model signal of `lgg_jax.quality` and the true Dice.

The rule, written down before any signal was scored:
  - Leave one fold out: for each of the 5 folds, the other 4 folds' patients
    choose the signal (among quality.SINGLE_MODEL_SIGNALS) with the highest
    Spearman rho against Dice (ties: the first listed), and the review
    threshold t on it that maximises Youden's J (sensitivity + specificity - 1)
    for finding Dice < 0.7, flagging a mask when its score < t (candidates:
    the training patients' scores; ties: the smallest t). The held-out fold is
    scored with that signal and threshold.
  - Pooled over the 62 held-out scores: Spearman rho against Dice, ROC AUC for
    Dice < 0.7, the share of patients below 0.7 that are flagged, and the
    share of all patients flagged, each with a 95% percentile bootstrap
    interval over patients (2,000 resamples, seed 0).
  - The rule for single models is the same choice made on all 62 patients;
    `--write_rule=DIR` writes it as DIR/quality.json.
A mask under quality.MIN_VOXELS is "no tumour found": score 0, always flagged.

A second threshold rule, `--threshold_rule=capped` (written down on 2026-12-06
before it was computed, after the rule above was measured: it flagged 31% of
the patients against the issue's goal of at most 20%): the same choice of
signal; the threshold is the Youden-optimal one among those that flag at most
`--max_flagged_share` (0.2) of the four training folds' patients. The shipped
single-model rule changes to it only if its cross-validated point estimates
meet both goals (at least 80% of the patients below 0.7 flagged, at most 20%
of all patients flagged); otherwise the Youden rule stays and the capped one
is reported beside it.

Three more signals (`--candidates=` all of quality.SINGLE_MODEL_SIGNALS), stated
on 2026-12-06 before any of them was computed, after both rules above were
measured (neither met both goals): predicted volume and the entropy inside
and around the mask, which the issue names and which were not measured, and
expected Dice, which weighs boundary doubt by the mask's size. They join the
candidates of the same leave-one-fold-out choice (best Spearman rho on the
four training folds), under either threshold rule. The shipped single-model
rule changes only if one threshold rule's cross-validated point estimates
meet both goals (the Youden rule first, if both do); otherwise it stays and
these figures are reported beside it. The default `--candidates` are the
five signals measured first, so the tables above reproduce.

The ensemble's rule (`--ensemble=pretrained:recipe_cpu --manual_dir=...`),
stated before it was computed: the estimate is the members' agreement
(quality.member_agreement) and its review threshold flags the same share of
the dev patients as the cross-validated single-model estimate flags (the
share's quantile of the ensemble's agreement over the dev patients). It
cannot be cross-validated here: every dev patient trained four of the five
members, so their agreement on dev patients is optimistic and this threshold
flags more patients outside the project; the independent evaluation
measures it.

Member agreement on patients no member saw (`--held_out=DIR[,DIR...]`), a
measurement stated on 2026-12-06 before it was computed. Each DIR is another
`benchmarks.cv_probabilities` folder, from fold models of another recipe or
run trained on the same patient folds (the full-resolution sweep's f1), so
every patient in all folders has a small ensemble none of whose members
trained on it: its members are the --probabilities folder's model and each
DIR's. Its mask is the members' mean probability with the shipped settings;
its estimate is member_agreement (quality.signals, each member's mask with
the same settings), 0 for "no tumour found"; the truth is that mask's Dice.
The threshold comes from the same leave-one-fold-out rule (--threshold_rule)
with the signal fixed; the shipped ensemble's fixed threshold (its
quality.json) is applied beside it as is. Patients missing from a folder are
named and left out of this part only. It decides nothing that ships: the
shipped ensemble has five members of one recipe, not these. It reports
whether member agreement, cross-validated, meets the goals that the
single-model estimate misses (at least 80% of the patients below 0.7
flagged, at most 20% of all patients flagged).

A second held-out measurement (`--held_out_candidates=` more than
member_agreement), stated on 2026-12-06 before it was computed, after the
one above was measured (92% of failures flagged at 24% of patients): the
same ensembles and leave-one-fold-out choice, with the signal chosen among
member_agreement, member_and_threshold (the smaller of member_agreement and
threshold_stability, as view_and_threshold joins two signals for one
model), threshold_stability and expected_dice. It too decides nothing that
ships; it reports whether joining member agreement with a single-model
signal meets both goals under either threshold rule.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import scipy.stats
from absl import flags

from benchmarks import cv_files
from lgg_jax import cli, command_flags, evaluate, inference, pretrained, quality

FAILURE_DICE = quality.FAILURE_DICE
SHIPPED = inference.Settings(0.5, "none", True, 0.0, "volume")

_WRITE_RULE = flags.DEFINE_string("write_rule", "", "Write the rule chosen on all patients to DIR/quality.json.")
_THRESHOLD_RULE = flags.DEFINE_enum("threshold_rule", "youden", ["youden", "capped"],
                                    "youden: the Youden-optimal threshold; capped: the same, among thresholds "
                                    "flagging at most --max_flagged_share of the training patients.")
_MAX_FLAGGED_SHARE = flags.DEFINE_float("max_flagged_share", 0.2, "The cap of --threshold_rule=capped, in (0, 1].")
command_flags.take("probabilities", "json")  # --probabilities (cv_probabilities' folder), --json (per-patient rows)
_ENSEMBLE = flags.DEFINE_string("ensemble", "", "Also fix an ensemble's rule (e.g. pretrained:recipe_cpu).")
command_flags.take("manual_dir")  # with --ensemble: the dev patients' folder
_WRITE_ENSEMBLE_RULE = flags.DEFINE_string("write_ensemble_rule", "", "Write the ensemble's rule to DIR/quality.json.")
FIRST_CANDIDATES = ("view_agreement", "threshold_stability", "view_and_threshold", "confidence", "kept_fraction")
_CANDIDATES = flags.DEFINE_list("candidates", list(FIRST_CANDIDATES),
                                "The single-model signals the leave-one-fold-out rule chooses among "
                                f"(any of {', '.join(quality.SINGLE_MODEL_SIGNALS)}).")
_HELD_OUT = flags.DEFINE_list("held_out", [], "Other cv_probabilities folders on the same folds: measure the "
                              "agreement of an ensemble none of whose members saw the patient.")
HELD_OUT_SIGNALS = ("member_agreement", "member_and_threshold", "threshold_stability", "expected_dice")
_HELD_OUT_CANDIDATES = flags.DEFINE_list("held_out_candidates", ["member_agreement"],
                                         f"With --held_out: the signals chosen among (some of {HELD_OUT_SIGNALS}).")


def ensemble_agreement(models: str, manual_dir: str, patients: list[str]) -> dict[str, float]:
  """The ensemble's members' agreement on each patient (its shipped settings), 0 where it finds no tumour."""
  from lgg_jax import Segmenter, pretrained  # noqa: F401 (the shared inference layer)
  from lgg_jax.data import pipeline
  seg = Segmenter.load(models)
  config = seg.members[0].config.copy_and_resolve_references()
  config.data.manual_dir, config.split.file = str(manual_dir), ""
  data = pipeline.load(config)
  agreement = {}
  for patient in cli.progress(patients, desc="ensemble", unit="patient"):
    estimate = seg.assess(data.volume(patient)[0]).estimate
    # "No tumour found" is flagged whatever the agreement: it counts as a score of 0 here too.
    agreement[patient] = 0.0 if estimate.predicted_voxels < quality.MIN_VOXELS else \
        estimate.signals["member_agreement"]
  return agreement


def share_threshold(values: np.ndarray, share: float) -> float:
  """The threshold t that flags (values < t) the given share of `values`, to the nearest patient."""
  count = int(round(share * len(values)))
  ordered = np.sort(values)
  return float(ordered[count]) if count < len(ordered) else float(ordered[-1]) + 1e-9


def patient_rows(saved: list[dict], settings: inference.Settings = SHIPPED) -> list[dict]:
  rows = []
  for s in saved:
    if s["mirrored"] is None:
      raise ValueError(f"{s['patient']}: no mirrored view saved (run benchmarks.cv_probabilities again)")
    mask = inference.postprocess(s["probabilities"], settings)
    view = inference.postprocess(s["mirrored"], settings)
    row, _ = evaluate.score_patient(mask, s["truth"])
    rows.append({"patient": s["patient"], "fold": s["fold"], "dice": row["dice"],
                 "predicted_voxels": int(mask.sum()),
                 **quality.signals(s["probabilities"], mask, settings, view_masks=[view])})
  return rows


def scores(rows: list[dict], signal: str) -> np.ndarray:
  """The estimate: the signal, 0 for "no tumour found"."""
  return np.array([0.0 if r["predicted_voxels"] < quality.MIN_VOXELS else r[signal] for r in rows])


def choose(rows: list[dict], max_flagged: float = 1.0,
           candidates: tuple[str, ...] = FIRST_CANDIDATES) -> quality.Rule:
  """The stated rule: best Spearman signal among `candidates`, then the
  Youden-optimal threshold among those flagging at most `max_flagged` of
  `rows` (1: any)."""
  dice = np.array([r["dice"] for r in rows])
  rhos = [scipy.stats.spearmanr(scores(rows, s), dice).statistic for s in candidates]
  signal = candidates[int(np.nanargmax(rhos))]
  values, failed = scores(rows, signal), dice < FAILURE_DICE
  best, threshold = -np.inf, 0.0
  for t in sorted(set(values.tolist()) | {0.0, 1.0}):
    flagged = values < t
    if flagged.mean() > max_flagged + 1e-12:
      continue
    j = (flagged[failed].mean() if failed.any() else 0.0) + ((~flagged)[~failed].mean() if (~failed).any() else 0.0) - 1
    if j > best + 1e-12:
      best, threshold = j, float(t)
  return quality.Rule(signal, threshold, source=f"benchmarks/quality_estimate.py on {len(rows)} patients")


def measures(score: np.ndarray, dice: np.ndarray, flagged: np.ndarray) -> dict:
  failed = dice < FAILURE_DICE
  auc = float("nan")
  if failed.any() and (~failed).any():
    auc = float(scipy.stats.mannwhitneyu(-score[failed], -score[~failed]).statistic / (failed.sum() * (~failed).sum()))
  return {"rho": float(scipy.stats.spearmanr(score, dice).statistic), "auroc": auc,
          "failures_flagged": float(flagged[failed].mean()) if failed.any() else float("nan"),
          "flagged": float(flagged.mean())}


def bootstrap(score, dice, flagged, rounds: int = 2000, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  draws = [measures(score[i], dice[i], flagged[i]) for i in
           (rng.integers(0, len(dice), len(dice)) for _ in range(rounds))]
  return {k: tuple(np.nanpercentile([d[k] for d in draws], [2.5, 97.5]).tolist()) for k in draws[0]}


def cross_validate(rows: list[dict], max_flagged: float = 1.0, candidates: tuple[str, ...] = FIRST_CANDIDATES
                   ) -> tuple[np.ndarray, np.ndarray, dict[int, quality.Rule]]:
  score, flagged, rules = np.zeros(len(rows)), np.zeros(len(rows), bool), {}
  folds = np.array([r["fold"] for r in rows])
  for fold in sorted(set(folds.tolist())):
    rule = choose([r for r, f in zip(rows, folds) if f != fold], max_flagged, candidates)
    held = folds == fold
    held_rows = [r for r, h in zip(rows, held) if h]
    score[held] = scores(held_rows, rule.signal)
    nothing = np.array([r["predicted_voxels"] < quality.MIN_VOXELS for r in held_rows])
    flagged[held] = (score[held] < rule.review_threshold) | nothing
    rules[fold] = rule
  return score, flagged, rules


def held_out_rows(saved: list[dict], folders: list[str], settings: inference.Settings = SHIPPED
                  ) -> tuple[list[dict], list[str]]:
  """Rows of the ensemble of each patient's held-out models (`saved`'s and
  each folder's), and the patients left out because a folder lacks them."""
  rows, missing = [], []
  for s in saved:
    members = [s["probabilities"]]
    for folder in folders:
      path = pathlib.Path(folder) / f"{s['patient']}.npz"
      if not path.is_file():
        missing.append(s["patient"])
        break
      other = cv_files.load_patient(path)
      if other["fold"] != s["fold"] or other["probabilities"].shape != s["probabilities"].shape:
        raise ValueError(f"{path}: fold {other['fold']}, shape {other['probabilities'].shape}; want the fold "
                         f"{s['fold']} and shape {s['probabilities'].shape} of the --probabilities folder's file")
      members.append(other["probabilities"])
    else:
      mean = np.mean(members, axis=0)
      mask = inference.postprocess(mean, settings)
      row, _ = evaluate.score_patient(mask, s["truth"])
      rows.append({"patient": s["patient"], "fold": s["fold"], "dice": row["dice"],
                   "predicted_voxels": int(mask.sum()),
                   **quality.signals(mean, mask, settings,
                                     member_masks=[inference.postprocess(m, settings) for m in members])})
  return rows, missing


def report_held_out(saved: list[dict], folders: list[str], max_flagged: float,
                    candidates: tuple[str, ...] = ("member_agreement",)) -> dict:
  """The stated measurement of member agreement on patients no member saw."""
  for folder in folders:
    if not cv_files.saved_patients(folder):
      raise FileNotFoundError(f"--held_out: {folder} holds no saved patients (run benchmarks.cv_probabilities)")
  rows, missing = held_out_rows(saved, folders)
  if len(rows) < 10:
    raise ValueError(f"--held_out: {len(rows)} patients are in every folder; want at least 10")
  dice = np.array([r["dice"] for r in rows])
  folds = sorted({r["fold"] for r in rows})
  print(f"\nheld-out ensembles of {1 + len(folders)} members: {len(rows)} patients (folds {folds}), "
        f"{int((dice < FAILURE_DICE).sum())} below Dice {FAILURE_DICE}, mean Dice {dice.mean():.3f}"
        + (f"; left out, missing from a --held_out folder: {', '.join(missing)}" if missing else ""))
  score, flagged, rules = cross_validate(rows, max_flagged, candidates)
  m, ci = measures(score, dice, flagged), bootstrap(score, dice, flagged)
  shipped = quality.Rule.load(pretrained.model_dir(pretrained.DEFAULT))
  # The shipped rule as it is: its own signal (member agreement) and threshold.
  agreement = scores(rows, shipped.signal)
  fixed = (agreement < shipped.review_threshold) | np.array([r["predicted_voxels"] < quality.MIN_VOXELS for r in rows])
  f = measures(agreement, dice, fixed)
  print("leave-one-fold-out choices: " + "; ".join(f"fold {k}: {r.signal} < {r.review_threshold:.3f}"
                                                   for k, r in rules.items()))
  print("\n| the estimate, held out | cross-validated choice [95% CI] | shipped rule "
        f"({shipped.signal} < {shipped.review_threshold:.4f}) |\n|---|---|---|")
  for key, label in (("rho", "Spearman rho vs Dice"), ("auroc", "ROC AUC, Dice < 0.7"),
                     ("failures_flagged", "patients below 0.7 flagged"), ("flagged", "all patients flagged")):
    print(f"| {label} | {m[key]:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}] | {f[key]:.3f} |")
  missed = [r["patient"] for r, g in zip(rows, flagged) if r["dice"] < FAILURE_DICE and not g]
  print(f"failures not flagged (cross-validated threshold): {', '.join(missed) or 'none'}")
  return {"rows": rows, "cross_validated": m, "intervals": ci, "shipped_threshold": f, "left_out": missing}


def _signal_list(flag, allowed: tuple[str, ...]) -> tuple[str, ...]:
  """A list flag's signals, or an error naming the flag and the names it does not know."""
  unknown = sorted(set(flag.value) - set(allowed))
  if unknown or not flag.value:
    raise ValueError(f"--{flag.name}: want some of {', '.join(allowed)}, got {', '.join(unknown) or 'none'}")
  return tuple(flag.value)


def main(argv):
  del argv
  candidates = _signal_list(_CANDIDATES, quality.SINGLE_MODEL_SIGNALS)
  held_out_candidates = _signal_list(_HELD_OUT_CANDIDATES, HELD_OUT_SIGNALS)
  paths = cv_files.saved_patients(cv_files.PROBABILITIES.value)
  if not paths:
    raise FileNotFoundError(f"{cv_files.PROBABILITIES.value}: no saved patients (run benchmarks.cv_probabilities first)")
  if not 0 < _MAX_FLAGGED_SHARE.value <= 1:
    raise ValueError(f"--max_flagged_share: want a share in (0, 1], got {_MAX_FLAGGED_SHARE.value}")
  max_flagged = _MAX_FLAGGED_SHARE.value if _THRESHOLD_RULE.value == "capped" else 1.0
  saved = [cv_files.load_patient(p) for p in cli.progress(paths, desc="load", unit="patient")]
  rows = patient_rows(saved)
  dice = np.array([r["dice"] for r in rows])
  print(f"{len(rows)} patients, {int((dice < FAILURE_DICE).sum())} below Dice {FAILURE_DICE}")
  print("\n| signal (all patients, no choice) | Spearman rho | ROC AUC (Dice < 0.7) |\n|---|---|---|")
  for signal in candidates:
    m = measures(scores(rows, signal), dice, np.zeros(len(dice), bool))
    print(f"| {signal} | {m['rho']:.3f} | {m['auroc']:.3f} |")
  score, flagged, rules = cross_validate(rows, max_flagged, candidates)
  m, ci = measures(score, dice, flagged), bootstrap(score, dice, flagged)
  print(f"\nthreshold rule: {_THRESHOLD_RULE.value}" + (f" (at most {max_flagged:.0%} flagged)" if max_flagged < 1 else ""))
  print("leave-one-fold-out choices: " + "; ".join(f"fold {k}: {r.signal} < {r.review_threshold:.3f}"
                                                     for k, r in rules.items()))
  print("\n| cross-validated estimate | value [95% CI] |\n|---|---|")
  for key, label in (("rho", "Spearman rho vs Dice"), ("auroc", "ROC AUC, Dice < 0.7"),
                     ("failures_flagged", "patients below 0.7 flagged"), ("flagged", "all patients flagged")):
    print(f"| {label} | {m[key]:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}] |")
  missed = [r["patient"] for r, f in zip(rows, flagged) if r["dice"] < FAILURE_DICE and not f]
  print(f"\nfailures not flagged: {', '.join(missed) or 'none'}")
  final = choose(rows, max_flagged, candidates)
  print(f"rule on all {len(rows)} patients: {final.signal} < {final.review_threshold:.4f}")
  if _WRITE_RULE.value:
    print(f"wrote {final.save(_WRITE_RULE.value)}")
  if _ENSEMBLE.value:
    if not command_flags.MANUAL_DIR.value:
      raise ValueError("--ensemble needs --manual_dir (the dev patients)")
    agreement = ensemble_agreement(_ENSEMBLE.value, command_flags.MANUAL_DIR.value, [r["patient"] for r in rows])
    values = np.array([agreement[r["patient"]] for r in rows])
    threshold = share_threshold(values, float(flagged.mean()))
    ensemble_rule = quality.Rule("member_agreement", threshold,
                                 f"benchmarks/quality_estimate.py: flags the cross-validated single-model share "
                                 f"({flagged.mean():.3f}) of the {len(rows)} dev patients")
    rho = scipy.stats.spearmanr(values, dice).statistic
    print(f"\nensemble {_ENSEMBLE.value}: member agreement median {np.median(values):.3f} (range "
          f"{values.min():.3f}-{values.max():.3f}; Spearman rho vs the held-out Dice {rho:.3f}, optimistic: the "
          f"members trained on these patients); rule: member_agreement < {threshold:.4f} "
          f"(flags {(values < threshold).mean():.3f} of the dev patients)")
    if _WRITE_ENSEMBLE_RULE.value:
      print(f"wrote {ensemble_rule.save(_WRITE_ENSEMBLE_RULE.value)}")
  held_out = report_held_out(saved, _HELD_OUT.value, max_flagged, held_out_candidates) if _HELD_OUT.value else None
  if cv_files.JSON.value:
    with open(cv_files.JSON.value, "w") as f:
      json.dump({"rows": rows, "cross_validated": m, "intervals": ci, "flagged": flagged.tolist(),
                 "rule": final.__dict__, "held_out": held_out}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
