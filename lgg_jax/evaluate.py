"""Scoring, and the command that scores a trained run.

python -m lgg_jax.evaluate --workdir=runs/unet_cpu [--split=test] [--checkpoint=best]
    [--manual_dir=/other/kaggle_3m]   # every patient of an external dataset instead
    [--tta=none|flips|dihedral] [--largest_component] [--component_fraction=0.2]
    [--threshold=0.5 | --threshold=val]
    [--workdir=RUN1,RUN2,...]         # an ensemble (mean probability); needs --manual_dir
python -m lgg_jax.evaluate --model=EXPORT[,EXPORT...]|pretrained --manual_dir=/other/kaggle_3m

Masks come from `inference.postprocess` with the models' own settings
(threshold, TTA, component step: a run's summary.json, an export's
inference.json), so the scores are those of the masks `predict` and the
Segmenter give; a flag overrides one setting.

Every score is taken per patient on the volume at the dataset's 256x256, its
slices in order; probabilities of a smaller model are upsampled
(`inference.upsample_probabilities`), the truth is never downsized. Writes
evaluation/<name>/summary.json, per_patient.csv and table.md. Metrics (see
`metrics.py` for the empty-mask rule):
  patient_dice   mean over patients of volumetric Dice (Buda et al. 2019)
  slice_dice, tumour_slice_dice, pooled_dice (the seed's, for comparison)
  hd95_px        3-D 95th-percentile symmetric surface distance (medpy's
                 definition), voxel spacing (config.evaluation.slice_spacing,
                 1, 1) in pixels. Both volumes empty -> 0; exactly one empty ->
                 undefined: counted in `hd95_undefined`, left out of `hd95_px`,
                 and charged config.evaluation.hd95_penalty in `hd95_px_penalised`
  empty_false_positive_rate  tumour-free slices with any predicted pixel
  missed_patients            patients with Dice below 0.1
  sensitivity, precision     pixel-wise over all slices of the split
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Iterable

import numpy as np
from absl import flags

from lgg_jax import cli, command_flags, inference, loading, metrics, parallel, predict, quality, review, segmenter
from lgg_jax.data import pipeline

MISSED_DICE = 0.1


def is_small_tumour(row: dict) -> bool:
  """A per-patient row (score_patient's) of a patient with a tumour under metrics.SMALL_TUMOUR_PIXELS."""
  return 0 < row["true_pixels"] < metrics.SMALL_TUMOUR_PIXELS


THRESHOLD_GRID = np.round(np.linspace(0.1, 0.9, 17), 4)


def score_patient(pred: np.ndarray, truth: np.ndarray, evaluation_config=None) -> tuple[dict, dict]:
  """(row, per-slice counts) of one patient's post-processed masks against its truth."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  counts = {"intersection": (pred & truth).sum(axis=(1, 2)), "predicted": pred.sum(axis=(1, 2)),
            "true": truth.sum(axis=(1, 2))}
  empty = ~truth.any(axis=(1, 2))
  row = {"slices": int(len(truth)), "tumour_slices": int((~empty).sum()),
         "false_positive_slices": int((counts["predicted"][empty] > 0).sum()),
         "dice": float(metrics.dice_from_counts(*(counts[k].sum() for k in ("intersection", "predicted", "true")))),
         "true_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum()),
         "true_components": metrics.component_count(truth)}
  if evaluation_config is not None:
    row["hd95_px"] = metrics.hd95(pred, truth, (evaluation_config.slice_spacing, 1.0, 1.0))
  return row, counts


def summarise(rows: list[dict], counts: list[dict], evaluation_config=None) -> dict:
  ids = np.concatenate([np.full(len(c["true"]), r["patient"]) for r, c in zip(rows, counts)])
  merged = {k: np.concatenate([c[k] for c in counts]) for k in ("intersection", "predicted", "true")}
  summary = metrics.summarise(ids, merged)
  tp = merged["intersection"].sum()
  fp, fn = merged["predicted"].sum() - tp, merged["true"].sum() - tp
  summary.update(missed_patients=missed_patients(rows),
                 sensitivity=float(tp / max(tp + fn, 1)), precision=float(tp / max(tp + fp, 1)))
  if evaluation_config is not None:
    summary.update(hd95_summary(rows, evaluation_config.hd95_penalty),
                   hd95_penalty_px=float(evaluation_config.hd95_penalty),
                   slice_spacing_px=float(evaluation_config.slice_spacing))
  return summary


def missed_patients(rows: list[dict]) -> int:
  return int(sum(r["dice"] < MISSED_DICE for r in rows))


def hd95_summary(rows: list[dict], penalty: float) -> dict:
  """HD95 over patients' rows: the mean and median of the defined ones, how
  many are undefined (exactly one empty mask), and the mean with those
  charged `penalty`."""
  hd = np.array([r.get("hd95_px", np.nan) for r in rows], float)
  defined = np.isfinite(hd)
  return {"hd95_px": float(hd[defined].mean()) if defined.any() else float("nan"),
          "hd95_px_median": float(np.median(hd[defined])) if defined.any() else float("nan"),
          "hd95_undefined": int((~defined).sum()),
          "hd95_px_penalised": float(np.where(defined, hd, penalty).mean())}


def score(volumes: Iterable[tuple[str, np.ndarray, np.ndarray]], settings: inference.Settings,
          evaluation_config=None, held_out: dict | None = None) -> tuple[dict, list[dict]]:
  """(summary, per-patient rows) of (patient, probabilities, truth) volumes,
  made masks by `inference.postprocess` on the whole ordered volume. With
  `held_out` (patient -> bool per slice), only those slices are scored (the
  slice protocol's test slices; a patient's training slices are never
  scored). With `evaluation_config`, HD95 too."""
  rows, counts = [], []
  for patient, probs, truth in volumes:
    pred = inference.postprocess(probs, settings)
    if held_out is not None:
      pred, truth = pred[held_out[patient]], truth[held_out[patient]]
    row, c = score_patient(pred, truth, evaluation_config)
    rows.append({"patient": str(patient), **row})
    counts.append(c)
  summary = summarise(rows, counts, evaluation_config)
  summary.update(threshold=float(settings.threshold), largest_component=bool(settings.largest_component),
                 component_fraction=float(settings.component_fraction), component_rank=settings.component_rank)
  return summary, rows


def choose_threshold(volumes: list[tuple[str, np.ndarray, np.ndarray]], settings: inference.Settings,
                     grid=THRESHOLD_GRID, held_out: dict | None = None) -> float:
  """The grid threshold with the best mean per-patient Dice (ties: the
  lowest), the rest of `settings` as they are."""
  scores = [score(volumes, settings.replace(threshold=t), held_out=held_out)[0]["patient_dice"] for t in grid]
  return float(grid[int(np.argmax(scores))])


def threshold_on_validation(predictor: inference.Predictor, data, settings: inference.Settings) -> inference.Settings:
  """`settings` with the threshold `choose_threshold` picks on the run's validation patients."""
  val = data.split.val
  volumes = list(predictor.predict_patients(data, data.patients(val)))
  return settings.replace(threshold=choose_threshold(volumes, settings, held_out=held_out_slices(data, val)))


def held_out_slices(data, indices: np.ndarray) -> dict[str, np.ndarray]:
  """patient -> which of its ordered slices are among `indices`: all of them
  under the patient protocol, only the split's own under the slice protocol."""
  return {p: np.isin(data.records(p), indices) for p in data.patients(indices)}


TABLE_KEYS = ("patient_dice", "patient_dice_median", "tumour_slice_dice", "slice_dice", "pooled_dice",
              "hd95_px", "hd95_px_median", "hd95_px_penalised", "hd95_undefined", "empty_false_positive_rate",
              "missed_patients", "sensitivity", "precision", "threshold", "patients", "slices")


OUTPUT_FILES = ("summary.json", "per_patient.csv", "table.md")


def write_outputs(out: pathlib.Path, summary: dict, rows: list[dict]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  with open(out / "per_patient.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = ["| metric | value |", "|---|---|"] + [
      f"| {k} | {summary[k]:.4f} |" if isinstance(summary[k], float) else f"| {k} | {summary[k]} |"
      for k in TABLE_KEYS if k in summary]
  table += ["", "| patient | slices | tumour slices | Dice | HD95 (px) |", "|---|---|---|---|---|"]
  table += [f"| {r['patient']} | {r['slices']} | {r['tumour_slices']} | {r['dice']:.4f} | "
            f"{r.get('hd95_px', float('nan')):.1f} |" for r in sorted(rows, key=lambda r: r["dice"])]
  (out / "table.md").write_text("\n".join(table) + "\n")


def evaluate_run(models, *, checkpoint="best", split="test", manual_dir="", tta=None, largest_component=None,
                 component_fraction=None, component_rank=None, threshold="model", name="", out="",
                 save_probabilities=False) -> dict:
  """Scores a model (a run folder, an export, a pretrained name, or a list of
  them: their mean) with the one inference path; writes the outputs and
  returns the summary. Inference settings default to the models' own (see
  `inference.ensemble_settings`); a given value overrides them. `threshold`:
  'model' (the models'), 'val' (chosen on the run's validation patients) or a
  number. Without `manual_dir`, one run's `split` is scored; with it, every
  patient of that dataset (no training data needed). Beside the tables it
  writes each patient's volumes and the review page's index
  (`python -m lgg_jax.review OUT`); `save_probabilities` adds the
  probability and uncertainty volumes."""
  mesh = parallel.make_mesh()
  members = loading.load_members(models, checkpoint, mesh)
  runs = [m for m in members if not (pathlib.Path(m.source) / loading.WEIGHTS_FILE).is_file()]  # not exports
  if not manual_dir and (len(members) > 1 or len(runs) != 1):
    raise ValueError("--manual_dir is needed: only a single run folder is scored on its own split (an "
                     "export carries no data, and fold models have seen every dev patient between them)")
  if threshold == "val" and (len(members) > 1 or len(runs) != 1):
    raise ValueError("--threshold=val needs one run folder (it chooses on that run's validation patients)")
  fixed = None if threshold in ("model", "config", "val") else float(threshold)
  settings = inference.ensemble_settings(members, threshold=fixed, tta=tta or None,
                                         largest_component=largest_component,
                                         component_fraction=component_fraction, component_rank=component_rank)
  predictor = inference.Predictor(members, mesh, settings)
  config = members[0].config
  if not manual_dir or threshold == "val":
    data = pipeline.load(config)
  if threshold == "val":
    settings = threshold_on_validation(predictor, data, settings)
  if manual_dir:
    external = config.copy_and_resolve_references()
    external.data.manual_dir = str(manual_dir)
    data = pipeline.load(external, whole=True)
    indices = data.split.test
  else:
    indices = getattr(data.split, split)
  patients = data.patients(indices)
  seg = segmenter.Segmenter(members, mesh, loading.quality_rule(models, len(members)), settings)
  name = name or "_".join(["external" if manual_dir else split, f"step{members[0].step}"]
                          + ([f"ensemble{len(members)}"] if len(members) > 1 else [])
                          + ([f"tta-{settings.tta}"] if settings.tta != "none" else [])
                          + (["lcc"] if settings.largest_component else [])
                          + ([f"rank-{settings.component_rank}"] if settings.component_rank != "volume" else [])
                          + ([f"frac-{settings.component_fraction:g}"] if settings.component_fraction else [])
                          + ([f"thr-{threshold}"] if threshold not in ("model", "config") else []))
  default_out = (pathlib.Path(runs[0].source) / "evaluation" if runs else pathlib.Path("evaluation")) / name
  out = pathlib.Path(out) if out else default_out
  writes = cli.is_main_process()
  if writes:  # a re-run that stops part-way leaves no table or index describing volumes it overwrote
    for old in (*OUTPUT_FILES, review.INDEX_FILE):
      (out / old).unlink(missing_ok=True)
  estimates, pages = {}, {}

  def assessed():  # the probabilities predict gives, with each mask's quality estimate and the page's volumes
    for patient in patients:
      volume, truth = data.volume(patient)
      result = seg.assess(volume, **settings.as_dict())
      estimates[patient] = result.estimate
      if writes:
        case = predict.Case(patient, [f"{patient}_{k + 1}" for k in range(len(volume))], volume, truth)
        pages[patient] = predict.write_review_volumes(case, result.masks, out,
                                                      result.probabilities if save_probabilities else None,
                                                      result.uncertainty if save_probabilities else None)
      yield patient, result.probabilities, truth

  summary, rows = score(cli.progress(assessed(), total=len(patients), desc="evaluate", unit="patient"),
                        settings, config.evaluation, held_out_slices(data, indices))
  for row in rows:
    row.update(estimates[row["patient"]].as_row())
  summary["quality"] = {**quality.summarise([r["quality"] for r in rows], [r["dice"] for r in rows],
                                            [r["review"] for r in rows]), "rule": dataclasses.asdict(seg.rule)}
  summary.update(checkpoint_steps=[m.step for m in members], split="external" if manual_dir else split,
                 inference=settings.as_dict(), tta=settings.tta, runs=[str(m.source) for m in members],
                 dataset=data.manual_dir)
  if writes:
    write_outputs(out, summary, rows)
    review.write_index(out, "evaluate", [{"case": r["patient"], **r, **pages[r["patient"]]} for r in rows],
                       inference=settings.as_dict(), models=[str(m.source) for m in members])
  return summary


def best_checkpoint_on_test(workdir, config, data, mesh=None) -> dict:
  """The summary block of a run's best checkpoint on its test patients, with
  `config.inference` (which may differ from the run's own: sweeps score one
  training under several inference options), the threshold chosen on the
  validation patients if asked."""
  member = loading.member_from_run(workdir, "best", mesh)
  settings = inference.Settings.from_config(config)
  predictor = inference.Predictor(member, mesh, settings)
  if config.inference.choose_threshold:
    settings = threshold_on_validation(predictor, data, settings)
  test = data.split.test
  summary, rows = score(predictor.predict_patients(data, data.patients(test)), settings, config.evaluation,
                        held_out_slices(data, test))
  return {"best_step": int(member.step), "test_dice": summary["patient_dice"], "test": summary,
          "test_per_patient": rows, "test_per_patient_dice": {r["patient"]: r["dice"] for r in rows},
          "inference": {**settings.as_dict(),
                        "threshold_chosen_on": "validation patients" if config.inference.choose_threshold
                        else "config"}}


_NAME = flags.DEFINE_string("name", "", "Output subfolder name (default from the options).")
command_flags.take("workdir", "model", "checkpoint", "split", "manual_dir", "out", "save_probabilities",
                   *command_flags.INFERENCE)
# --model: export folder(s), run folder(s), or 'pretrained'; several: an ensemble.
# Needs --manual_dir unless it is one run folder. --out default:
# <first workdir>/evaluation/<name>.


def main(argv):
  del argv
  f = command_flags
  model, workdir = f.model_or_workdir()
  models = loading.cli_models(model) if model else workdir
  if not models:
    raise ValueError("give --workdir=RUN[,RUN...] or --model=EXPORT|pretrained[,...]")
  threshold = f.threshold(allow_val=True)  # checked; the spelling given names the output folder
  summary = evaluate_run(models, checkpoint=f.CHECKPOINT.value, split=f.SPLIT.value,
                         manual_dir=f.MANUAL_DIR.value, threshold="model" if threshold is None else f.THRESHOLD.value.strip(),
                         name=_NAME.value, out=f.OUT.value or "", save_probabilities=f.SAVE_PROBABILITIES.value,
                         **f.inference_overrides(with_threshold=False))
  print(f"per-patient Dice {summary['patient_dice']:.4f} (median {summary['patient_dice_median']:.4f}), "
        f"tumour-slice Dice {summary['tumour_slice_dice']:.4f}, HD95 {summary['hd95_px']:.1f} px "
        f"({summary['hd95_undefined']} undefined; {summary['hd95_px_penalised']:.1f} px with them at "
        f"{summary['hd95_penalty_px']:.0f}), false positives on {summary['empty_false_positive_rate']:.1%} of "
        f"tumour-free slices, {summary['missed_patients']} missed ({summary['patients']} patients, "
        f"threshold {summary['threshold']:.2f})")


if __name__ == "__main__":
  cli.run(main)
