"""Where the published volumes put their intensities, for predict's NIfTI scaling.

python -m benchmarks.nifti_intensity --manual_dir=../shared/data/lgg_dev

A user's NIfTI holds scanner units; `predict` maps them to the 0..255 of the
published slices by one linear factor per volume (and per channel of a 4-D
stack). This prints, per sequence, the published volumes' maximum and high
percentiles over the patients (the value `predict.PUBLISHED_P9999` takes),
and then each patient's volume multiplied by an arbitrary factor (as scanner
units would be) and scaled back by a rule: the mean absolute difference from
the published voxels, and how many voxels end at 255, under today's rule,
the old one (99.5th percentile to 255) and the maximum to 255. Prints markdown.
"""

from __future__ import annotations

import itertools

import numpy as np
from lgg_jax import cli, command_flags, predict
from lgg_jax.data import kaggle

SEQUENCES = ("pre-contrast", "FLAIR", "post-contrast")
PERCENTILES = (99.5, 99.9, 99.99)
command_flags.take("manual_dir")


def old_rule(volume: np.ndarray) -> np.ndarray:
  top = float(np.percentile(volume, 99.5)) or 1.0
  return np.clip(volume / top * 255.0, 0, 255).astype(np.uint8)


def maximum_rule(volume: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(volume / (float(volume.max()) or 1.0) * 255.0), 0, 255).astype(np.uint8)


def main(argv):
  del argv
  if not command_flags.MANUAL_DIR.value:
    raise ValueError("--manual_dir: give the dataset folder (kaggle_3m/ or the folder holding it)")
  source = kaggle.open_source(command_flags.MANUAL_DIR.value)
  stats = {s: [] for s in SEQUENCES}
  errors = {rule: {s: [] for s in SEQUENCES} for rule in ("today", "old", "maximum")}
  saturated = {rule: {s: [] for s in SEQUENCES} for rule in ("published", "today", "old", "maximum")}
  for _, slices in itertools.groupby(kaggle.list_slices(source), key=lambda s: s.patient_id):
    volume = np.stack([kaggle.read_image(source, s.image_path) for s in slices])
    for c, sequence in enumerate(SEQUENCES):
      published = volume[..., c].astype(np.float32)
      stats[sequence].append([published.max(), *np.percentile(published, PERCENTILES)])
      scanner = published * 7.3  # any linear factor: the rules are scale-free
      saturated["published"][sequence].append(np.mean(published == 255))
      for rule, scale in (("today", predict._scale), ("old", old_rule), ("maximum", maximum_rule)):
        scaled = scale(scanner).astype(np.float32)
        errors[rule][sequence].append(np.abs(scaled - published).mean())
        saturated[rule][sequence].append(np.mean(scaled == 255))
  n = len(stats[SEQUENCES[0]])
  print(f"{n} patients; median over them [5th, 95th percentile]\n")
  print("| sequence | maximum | " + " | ".join(f"p{p:g}" for p in PERCENTILES) + " |")
  print("|---|---|" + "---|" * len(PERCENTILES))
  for sequence in SEQUENCES:
    table = np.array(stats[sequence])
    cells = [f"{np.median(col):.1f} [{np.percentile(col, 5):.0f}, {np.percentile(col, 95):.0f}]" for col in table.T]
    print(f"| {sequence} | " + " | ".join(cells) + " |")
  print(f"\nscaled back from scanner units (p99.99 to {predict.PUBLISHED_P9999:g} today; p99.5 to 255 before; "
        "the maximum to 255, which one hot voxel would move):\n")
  print("| sequence | mean abs. difference: today | before | maximum | voxels at 255: published | today | before |")
  print("|---|---|---|---|---|---|---|")
  for sequence in SEQUENCES:
    e = {rule: np.median(errors[rule][sequence]) for rule in errors}
    s = {rule: 100 * np.median(saturated[rule][sequence]) for rule in saturated}
    print(f"| {sequence} | {e['today']:.1f} | {e['old']:.1f} | {e['maximum']:.1f} | {s['published']:.3f}% | "
          f"{s['today']:.3f}% | {s['old']:.3f}% |")


if __name__ == "__main__":
  cli.run(main)
