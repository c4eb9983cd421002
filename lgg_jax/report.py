"""The per-run report: workdir/report/report.md with its figures.

Config, split, training curves, the evaluation of the best checkpoint on the
held-out patients, and the best and worst test patients with overlays
(truth green, prediction red). Written at the end of every training run.
"""

from __future__ import annotations

import json
import pathlib

import cv2
import jax
import numpy as np

from lgg_jax import evaluate, figures
from lgg_jax.data import pipeline

_KNOBS = ("model.name", "data.image_size", "data.normalization", "augment.name", "loss.name",
          "optimizer.name", "optimizer.learning_rate", "optimizer.schedule", "global_batch_size", "num_epochs",
          "split.protocol", "split.num_folds", "split.fold", "compute_dtype", "threshold")


def _get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


def _patient_figure(data, indices, probs, truth, patient, threshold, size, path: pathlib.Path) -> None:
  sel = np.flatnonzero(data.patient_ids[indices] == patient)
  k = sel[int(np.argmax(truth[sel].sum(axis=(1, 2))))]
  example = data.source[int(indices[k])]
  image = pipeline.resize({"image": example["image"], "mask": example["mask"], "index": 0}, size)["image"]
  picture = figures.overlay(image, probs[k] >= threshold, truth=truth[k])
  cv2.imwrite(str(path), cv2.resize(picture, (256, 256), interpolation=cv2.INTER_NEAREST)[..., ::-1])


def write(workdir: pathlib.Path, config, data, eval_graphdef, state, mesh, summary: dict) -> pathlib.Path | None:
  """Every process must call this (predictions gather across processes); process 0 writes."""
  out = workdir / "report"
  indices = data.split.test
  probs = evaluate.predict_probabilities(eval_graphdef, state, data, indices, config, mesh, tta=False)
  truth = evaluate.truth_masks(data, indices, config.data.image_size)
  _, rows = evaluate.score(data.patient_ids[indices], probs, truth, config.threshold, False)
  if jax.process_index() != 0:
    return None
  out.mkdir(parents=True, exist_ok=True)
  curves = figures.training_curves(workdir / "metrics.jsonl", out)
  rows = sorted(rows, key=lambda r: r["dice"])
  pictures = []
  for label, row in (("worst", rows[0]), ("best", rows[-1])):
    path = out / f"{label}_patient.png"
    _patient_figure(data, indices, probs, truth, row["patient"], config.threshold, config.data.image_size, path)
    pictures.append((label, row, path))

  lines = [f"# Run report: {workdir.name}", "",
           f"Best checkpoint: step {summary.get('best_step')} (validation per-patient Dice "
           f"{summary.get('best_val_dice', float('nan')):.4f}); final step {summary['step']}.", "",
           "## Config", "", "| setting | value |", "|---|---|"]
  lines += [f"| {k} | {_get(config, k)} |" for k in _KNOBS]
  lines += ["", f"Full config: `config.json`. Dataset: `{data.manual_dir}` (fingerprint {data.fingerprint}).", "",
            "## Split (by patient)", "", "| split | patients | slices |", "|---|---|---|"]
  lines += [f"| {name} | {v['patients']} | {v['slices']} |" for name, v in data.split.summary().items()]
  lines += ["", "## Training curves", ""] + [f"![{p.stem}]({p.name})" for p in curves]
  lines += ["", "## Evaluation of the best checkpoint", "",
            "| metric | validation | test |", "|---|---|---|"]
  val, test = summary.get("val", {}), summary.get("test", {})
  for key in ("patient_dice", "patient_dice_median", "tumour_slice_dice", "slice_dice", "pooled_dice",
              "empty_false_positive_rate", "patients", "slices"):
    fmt = (lambda v: f"{v:.4f}") if key not in ("patients", "slices") else str
    lines.append(f"| {key} | {fmt(val.get(key, float('nan')))} | {fmt(test.get(key, float('nan')))} |")
  lines += ["", "(validation: the final model; test: the best checkpoint. Per-patient Dice is volumetric; "
            "empty-mask rule in `lgg_jax/metrics.py`.)", "",
            "## Test patients", "", "| patient | slices | tumour slices | Dice | HD95 (px) |", "|---|---|---|---|---|"]
  lines += [f"| {r['patient']} | {r['slices']} | {r['tumour_slices']} | {r['dice']:.4f} | {r['hd95_px']:.1f} |"
            for r in rows]
  lines += ["", "## Best and worst test patients", "", "Truth green, prediction red, the slice with the most tumour."]
  for label, row, path in pictures:
    lines += ["", f"**{label}**: {row['patient']}, Dice {row['dice']:.4f}", "", f"![{label}]({path.name})"]
  report = out / "report.md"
  report.write_text("\n".join(lines) + "\n")
  (out / "test_patients.json").write_text(json.dumps(rows, indent=2))
  return report
