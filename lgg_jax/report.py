"""The per-run report: workdir/report/report.md with its figures.

Config, split, training curves, the evaluation of the best checkpoint on the
held-out patients (from summary.json), and the best and worst test patients
with overlays at 256x256 (truth green, prediction red). `main` writes it
after training, and the sweep runner for each member.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
from ml_collections.config_flags import config_path

from lgg_jax import cli, figures, inference, loading, models, parallel, state
from lgg_jax.data import pipeline

_KNOBS = ("model.name", "data.image_size", "data.normalization", "data.neighbours", "data.tumour_fraction",
          "augment.name", "loss.name", "optimizer.name", "optimizer.learning_rate", "schedule.name",
          "global_batch_size", "num_epochs", "split.protocol", "split.num_folds", "split.fold",
          "compute_dtype", "inference.tta", "inference.largest_component")
_METRICS = ("patient_dice", "patient_dice_median", "tumour_slice_dice", "slice_dice", "pooled_dice",
            "hd95_px", "hd95_undefined", "hd95_px_penalised", "empty_false_positive_rate", "missed_patients",
            "patients", "slices")


def _patient_figure(volume, masks, truth, path: pathlib.Path) -> None:
  k = int(np.argmax(truth.sum(axis=(1, 2))))
  picture = figures.overlay(volume[k], masks[k], truth=truth[k])
  cv2.imwrite(str(path), picture[..., ::-1])


def write(workdir) -> pathlib.Path | None:
  """Every process must call this (predictions gather across processes); process 0 writes."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  summary = state.read_json(workdir / "summary.json")
  if "test_per_patient" not in summary:
    return None  # no best checkpoint: nothing to show
  member = loading.member_from_run(workdir, "best")
  config = member.config
  data = pipeline.load(config)
  # The settings the test figures were scored with (member_from_run reads them from summary.json).
  predictor = inference.Predictor(member, parallel.make_mesh())
  rows = sorted(summary["test_per_patient"], key=lambda r: r["dice"])
  out = workdir / "report"
  pictures = []
  for label, row in (("worst", rows[0]), ("best", rows[-1])):
    volume, truth = data.volume(row["patient"])
    _, masks = predictor.segment(volume)
    if cli.is_main_process():
      out.mkdir(parents=True, exist_ok=True)
      _patient_figure(volume, masks, truth, out / f"{label}_patient.png")
    pictures.append((label, row, out / f"{label}_patient.png"))
  if not cli.is_main_process():
    return None
  curves = figures.training_curves(workdir / "metrics.jsonl", out, config.loss.name)
  lines = [f"# Run report: {workdir.name}", "",
           f"Best checkpoint: step {summary.get('best_step')} (validation per-patient Dice "
           f"{summary.get('best_val_dice', float('nan')):.4f}); final step {summary['step']}.", "",
           "## Config", "", "| setting | value |", "|---|---|"]
  lines += [f"| {k} | {config_path.get_value(k, config)} |" for k in _KNOBS]
  lines.append(f"| model.{config.model.name} | {models.block(config.model)} |")
  lines += ["", f"Full config: `config.json`. Dataset: `{data.manual_dir}` (fingerprint {data.fingerprint}, "
            f"version {data.version}).", "",
            "## Split (by patient)", "", "| split | patients | slices |", "|---|---|---|"]
  lines += [f"| {name} | {v['patients']} | {v['slices']} |" for name, v in summary["split"].items()]
  lines += ["", "## Training curves", ""] + [f"![{p.stem}]({p.name})" for p in curves]
  inf = summary["inference"]
  lines += ["", "## Evaluation of the best checkpoint on the test patients", "",
            f"At 256x256, slices in order; TTA {inf['tta']}, largest component {inf['largest_component']}"
            f"{' (and components >= %g of it)' % inf['component_fraction'] if inf.get('component_fraction') else ''}, "
            f"threshold {inf['threshold']:.2f} ({inf['threshold_chosen_on']}). Per-patient Dice is volumetric "
            "(empty-mask rule in `lgg_jax/metrics.py`); HD95 is 3-D, in pixels.", "",
            "| metric | test |", "|---|---|"]
  test = summary["test"]
  for key in _METRICS:
    value = test.get(key, float("nan"))
    lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
  lines += ["", "## Test patients", "", "| patient | slices | tumour slices | Dice | HD95 (px) |",
            "|---|---|---|---|---|"]
  lines += [f"| {r['patient']} | {r['slices']} | {r['tumour_slices']} | {r['dice']:.4f} | {r['hd95_px']:.1f} |"
            for r in rows]
  lines += ["", "## Best and worst test patients", "", "Truth green, prediction red, the slice with the most tumour."]
  for label, row, path in pictures:
    lines += ["", f"**{label}**: {row['patient']}, Dice {row['dice']:.4f}", "", f"![{label}]({path.name})"]
  report = out / "report.md"
  report.write_text("\n".join(lines) + "\n")
  return report
