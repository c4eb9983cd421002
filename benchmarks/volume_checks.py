"""What the ordered volumes and 3-D scoring change, measured on one trained run.

python -m benchmarks.volume_checks --workdir=RUN [--split=test]

For the run's held-out patients, scored at 256x256 with slices in order:
per-patient Dice with and without the largest 3-D component, and for each
patient whose Dice drops by more than 0.05, the number of connected
components of its truth; the 3-D HD95 beside the per-slice HD95 that
lgg_jax used before dataset version 1.1.0 (a slice's surface points counted
only where the other mask has a surface on that slice), with the patients
where the per-slice figure is under half the 3-D one. Prints markdown.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
from absl import flags

from lgg_jax import cli, command_flags, evaluate, inference, loading
from lgg_jax.data import pipeline

command_flags.take("workdir", "split")  # a run folder; which of its patients


def per_slice_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
  """The rule before version 1.1.0: 2-D distances per slice, pooled; a surface
  point on a slice where the other mask has no surface was dropped."""
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("nan")

  def surface(v):
    return v & ~ndi.binary_erosion(v, structure=np.ones((1, 3, 3), bool), border_value=0)

  def distance_to(v):
    out = np.full(v.shape, np.inf)
    for i, s in enumerate(surface(v)):
      if s.any():
        out[i] = ndi.distance_transform_edt(~s)
    return out

  d = np.concatenate([distance_to(truth)[surface(pred)], distance_to(pred)[surface(truth)]])
  d = d[np.isfinite(d)]
  return float(np.percentile(d, 95)) if d.size else float("nan")


def main(argv):
  del argv
  member = loading.member_from_run(command_flags.one(command_flags.WORKDIR, 'run folder'))
  config = member.config
  data = pipeline.load(config)
  plain_settings = member.settings.replace(largest_component=False)
  predictor = inference.Predictor(member, settings=plain_settings)
  threshold = member.threshold
  rows = []
  for patient, probs, truth in predictor.predict_patients(data, data.patients(getattr(data.split, command_flags.SPLIT.value))):
    plain, _ = evaluate.score_patient(inference.postprocess(probs, plain_settings), truth, config.evaluation)
    lcc, _ = evaluate.score_patient(inference.postprocess(probs, plain_settings.replace(largest_component=True)),
                                    truth)
    rows.append({"patient": patient, "dice": plain["dice"], "dice_lcc": lcc["dice"],
                 "components": plain["true_components"], "hd95_3d": plain["hd95_px"],
                 "hd95_per_slice": per_slice_hd95(probs >= threshold, truth)})
  dice, dice_lcc = np.array([r["dice"] for r in rows]), np.array([r["dice_lcc"] for r in rows])
  print(f"# {member.source} ({command_flags.SPLIT.value}, {len(rows)} patients, checkpoint step {member.step}, "
        f"threshold {threshold:.2f}, dataset {data.version})\n")
  print(f"per-patient Dice {dice.mean():.4f} (median {np.median(dice):.4f}); with the largest 3-D component "
        f"{dice_lcc.mean():.4f} (median {np.median(dice_lcc):.4f})\n")
  print("| patient | Dice | Dice, largest component | truth components |\n|---|---|---|---|")
  for r in rows:
    if r["dice"] - r["dice_lcc"] > 0.05:
      print(f"| {r['patient']} | {r['dice']:.4f} | {r['dice_lcc']:.4f} | {r['components']} |")
  both = [r for r in rows if np.isfinite(r["hd95_3d"]) and np.isfinite(r["hd95_per_slice"])]
  print(f"\nHD95 over the {len(both)} patients with both masks non-empty: 3-D "
        f"{np.mean([r['hd95_3d'] for r in both]):.2f} px, per-slice rule "
        f"{np.mean([r['hd95_per_slice'] for r in both]):.2f} px\n")
  print("| patient | HD95 3-D (px) | HD95 per-slice rule (px) |\n|---|---|---|")
  for r in both:
    if r["hd95_per_slice"] < 0.5 * r["hd95_3d"]:
      print(f"| {r['patient']} | {r['hd95_3d']:.1f} | {r['hd95_per_slice']:.1f} |")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
