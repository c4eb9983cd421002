"""Scoring, and the command that scores a trained run.

python -m lgg_jax.evaluate --workdir=runs/unet_cpu [--split=test] [--checkpoint=best]
    [--manual_dir=/other/kaggle_3m]   # every patient of an external dataset instead
    [--tta=none|flips|dihedral] [--largest_component] [--threshold=0.5 | --threshold=val]
    [--workdir=RUN1,RUN2,...]         # an ensemble (mean probability); needs --manual_dir

Every score is taken per patient on the volume at the dataset's 256x256, its
slices in order; probabilities of a smaller model are upsampled
(`steps.upsample_probabilities`), the truth is never downsized. Writes
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
import json
import pathlib
from collections.abc import Iterable

import numpy as np
import scipy.ndimage as ndi

from lgg_jax import cli, inference, metrics, parallel
from lgg_jax.data import pipeline

MISSED_DICE = 0.1
THRESHOLD_GRID = np.round(np.linspace(0.1, 0.9, 17), 4)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
  """medpy.metric.binary.hd95: surfaces by erosion with connectivity 1, the
  distances of each surface to the other pooled, their 95th percentile."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("nan")
  # Every surface voxel lies in the union's bounding box, so distances taken
  # inside it are exact.
  box = ndi.find_objects((pred | truth).astype(np.uint8))[0]
  pred, truth = pred[box], truth[box]
  structure = ndi.generate_binary_structure(pred.ndim, 1)

  def surface(v):
    return v ^ ndi.binary_erosion(v, structure=structure, iterations=1)

  sp, st = surface(pred), surface(truth)
  distances = np.hstack([ndi.distance_transform_edt(~st, sampling=spacing)[sp],
                         ndi.distance_transform_edt(~sp, sampling=spacing)[st]])
  return float(np.percentile(distances, 95))


def largest_component(volume: np.ndarray) -> np.ndarray:
  """The largest 3-D connected component (faces touching) of an ordered volume."""
  labels, n = ndi.label(volume)
  if n <= 1:
    return volume
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (1 + int(np.argmax(sizes)))


def score_patient(probs: np.ndarray, truth: np.ndarray, threshold: float, keep_largest: bool,
                  evaluation_config=None) -> tuple[dict, dict]:
  """(row, per-slice counts) of one patient's ordered volume at 256x256."""
  pred = probs >= threshold
  if keep_largest:
    pred = largest_component(pred)
  counts = {"intersection": (pred & truth).sum(axis=(1, 2)), "predicted": pred.sum(axis=(1, 2)),
            "true": truth.sum(axis=(1, 2))}
  empty = ~truth.any(axis=(1, 2))
  row = {"slices": int(len(truth)), "tumour_slices": int((~empty).sum()),
         "false_positive_slices": int((counts["predicted"][empty] > 0).sum()),
         "dice": float(metrics.dice_from_counts(*(counts[k].sum() for k in ("intersection", "predicted", "true")))),
         "true_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum()),
         "true_components": int(ndi.label(truth)[1])}
  if evaluation_config is not None:
    row["hd95_px"] = hd95(pred, truth, (evaluation_config.slice_spacing, 1.0, 1.0))
  return row, counts


def summarise(rows: list[dict], counts: list[dict], evaluation_config=None) -> dict:
  ids = np.concatenate([np.full(len(c["true"]), r["patient"]) for r, c in zip(rows, counts)])
  merged = {k: np.concatenate([c[k] for c in counts]) for k in ("intersection", "predicted", "true")}
  summary = metrics.summarise(ids, merged)
  tp = merged["intersection"].sum()
  fp, fn = merged["predicted"].sum() - tp, merged["true"].sum() - tp
  summary.update(missed_patients=int(sum(r["dice"] < MISSED_DICE for r in rows)),
                 sensitivity=float(tp / max(tp + fn, 1)), precision=float(tp / max(tp + fp, 1)))
  if evaluation_config is not None:
    hd = np.array([r["hd95_px"] for r in rows])
    defined = np.isfinite(hd)
    summary.update(hd95_px=float(hd[defined].mean()) if defined.any() else float("nan"),
                   hd95_px_median=float(np.median(hd[defined])) if defined.any() else float("nan"),
                   hd95_undefined=int((~defined).sum()),
                   hd95_px_penalised=float(np.where(defined, hd, evaluation_config.hd95_penalty).mean()),
                   hd95_penalty_px=float(evaluation_config.hd95_penalty),
                   slice_spacing_px=float(evaluation_config.slice_spacing))
  return summary


def score(volumes: Iterable[tuple[str, np.ndarray, np.ndarray]], threshold: float, keep_largest: bool,
          evaluation_config=None) -> tuple[dict, list[dict]]:
  """(summary, per-patient rows) of (patient, probabilities, truth) volumes;
  with `evaluation_config`, HD95 too."""
  rows, counts = [], []
  for patient, probs, truth in volumes:
    row, c = score_patient(probs, truth, threshold, keep_largest, evaluation_config)
    rows.append({"patient": str(patient), **row})
    counts.append(c)
  summary = summarise(rows, counts, evaluation_config)
  summary.update(threshold=float(threshold), largest_component=bool(keep_largest))
  return summary, rows


def choose_threshold(volumes: list[tuple[str, np.ndarray, np.ndarray]], keep_largest: bool,
                     grid=THRESHOLD_GRID) -> float:
  """The grid threshold with the best mean per-patient Dice (ties: the lowest)."""
  scores = [np.mean([score_patient(p, t, threshold, keep_largest)[0]["dice"] for _, p, t in volumes])
            for threshold in grid]
  return float(grid[int(np.argmax(scores))])


TABLE_KEYS = ("patient_dice", "patient_dice_median", "tumour_slice_dice", "slice_dice", "pooled_dice",
              "hd95_px", "hd95_px_median", "hd95_px_penalised", "hd95_undefined", "empty_false_positive_rate",
              "missed_patients", "sensitivity", "precision", "threshold", "patients", "slices")


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


def evaluate_run(workdirs, *, checkpoint="best", split="test", manual_dir="", tta="", keep_largest=None,
                 threshold="config", name="", out="") -> dict:
  """Scores one run (or an ensemble of runs on an external dataset); writes
  the outputs and returns the summary. Empty `tta` / None `keep_largest`:
  the run's config.inference."""
  workdirs = [workdirs] if isinstance(workdirs, (str, pathlib.Path)) else list(workdirs)
  if len(workdirs) > 1 and not manual_dir:
    raise ValueError("an ensemble of runs is scored on other patients only: give --manual_dir "
                     "(the fold models have seen every dev patient between them)")
  mesh = parallel.make_mesh()
  members = [inference.member_from_run(w, checkpoint, mesh) for w in workdirs]
  config = members[0].config
  tta = tta or config.inference.tta
  keep_largest = config.inference.largest_component if keep_largest is None else bool(keep_largest)
  predictor = inference.Predictor(members, mesh, tta)
  data = pipeline.load(config)
  if threshold == "val":
    if len(members) > 1:
      raise ValueError("--threshold=val needs one run (an ensemble has no validation patients of its own)")
    val = list(predictor.predict_patients(data, data.patients(data.split.val)))
    chosen = choose_threshold(val, keep_largest)
  elif threshold == "config":
    chosen = float(np.mean([m.threshold for m in members]))
  else:
    chosen = float(threshold)
  if manual_dir:
    external = config.copy_and_resolve_references()
    external.data.manual_dir = str(manual_dir)
    data = pipeline.load(external)
    patients = data.patients(np.arange(len(data.patient_ids)))
  else:
    patients = data.patients(getattr(data.split, split))
  summary, rows = score(cli.progress(predictor.predict_patients(data, patients), total=len(patients),
                                     desc="evaluate", unit="patient"),
                        chosen, keep_largest, config.evaluation)
  summary.update(checkpoint_steps=[int(m.step) for m in members], split="external" if manual_dir else split,
                 tta=tta, runs=[str(m.source) for m in members], dataset=data.manual_dir)
  name = name or "_".join(["external" if manual_dir else split, f"step{members[0].step}"]
                          + ([f"ensemble{len(members)}"] if len(members) > 1 else [])
                          + ([f"tta-{tta}"] if tta != "none" else []) + (["lcc"] if keep_largest else [])
                          + ([f"thr-{threshold}"] if threshold != "config" else []))
  if cli.is_main_process():
    write_outputs(pathlib.Path(out) if out else pathlib.Path(members[0].source) / "evaluation" / name,
                  summary, rows)
  return summary


def best_checkpoint_on_test(workdir, config, data, mesh=None) -> dict:
  """The summary block of a run's best checkpoint on its test patients, with
  `config.inference` (which may differ from the run's own: sweeps score one
  training under several inference options), the threshold chosen on the
  validation patients if asked."""
  member = inference.member_from_run(workdir, "best", mesh)
  inf = config.inference
  predictor = inference.Predictor(member, mesh, inf.tta)
  threshold = config.threshold
  if inf.choose_threshold:
    val = list(predictor.predict_patients(data, data.patients(data.split.val)))
    threshold = choose_threshold(val, inf.largest_component)
  test_patients = data.patients(data.split.test)
  test, rows = score(predictor.predict_patients(data, test_patients), threshold, inf.largest_component,
                     config.evaluation)
  return {"best_step": int(member.step), "test_dice": test["patient_dice"], "test": test,
          "test_per_patient": rows, "test_per_patient_dice": {r["patient"]: r["dice"] for r in rows},
          "inference": {"threshold": float(threshold), "tta": inf.tta,
                        "largest_component": bool(inf.largest_component),
                        "threshold_chosen_on": "validation patients" if inf.choose_threshold else "config"}}


def main(argv):
  del argv
  summary = evaluate_run(_WORKDIR.value, checkpoint=_CHECKPOINT.value, split=_SPLIT.value,
                         manual_dir=_MANUAL_DIR.value, tta=_TTA.value, keep_largest=_LCC.value,
                         threshold=_THRESHOLD.value, name=_NAME.value, out=_OUT.value)
  print(f"per-patient Dice {summary['patient_dice']:.4f} (median {summary['patient_dice_median']:.4f}), "
        f"tumour-slice Dice {summary['tumour_slice_dice']:.4f}, HD95 {summary['hd95_px']:.1f} px "
        f"({summary['hd95_undefined']} undefined; {summary['hd95_px_penalised']:.1f} px with them at "
        f"{summary['hd95_penalty_px']:.0f}), false positives on {summary['empty_false_positive_rate']:.1%} of "
        f"tumour-free slices, {summary['missed_patients']} missed ({summary['patients']} patients, "
        f"threshold {summary['threshold']:.2f})")


if __name__ == "__main__":
  from absl import flags
  _WORKDIR = flags.DEFINE_list("workdir", None, "Run folder(s) written by lgg_jax.main; several: an ensemble.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split of the run's own data.")
  _MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "External dataset: evaluate every patient in it.")
  _TTA = flags.DEFINE_enum("tta", "", ["", "none", "flips", "dihedral"], "Test-time augmentation; "
                           "empty: the run's config.inference.tta.")
  _LCC = flags.DEFINE_bool("largest_component", None, "Keep each patient's largest 3-D component "
                           "(--nolargest_component: do not); unset: the run's config.inference.")
  _THRESHOLD = flags.DEFINE_string("threshold", "config", "'config' (the run's), 'val' (chosen on "
                                   "its validation patients) or a number.")
  _NAME = flags.DEFINE_string("name", "", "Output subfolder name (default from the options).")
  _OUT = flags.DEFINE_string("out", "", "Output folder (default: <first workdir>/evaluation/<name>).")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
