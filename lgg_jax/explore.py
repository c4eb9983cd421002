"""Data exploration figures (the seed notebook's), written as PNGs.

python -m lgg_jax.explore --manual_dir=/path/to/lgg-mri-segmentation --out=explore/
(no --manual_dir: the embedded synthetic dataset)

Writes: diagnosis_counts.png, patient_counts.png, samples.png (original
colour and FLAIR in the hot colormap), overlay_single.png, overlay_grid.png,
augmentations.png (the distortion set on one slice, image and mask), and
clinical_summary.md / clinical_summary.csv (a summary of data.csv).
"""

from __future__ import annotations

import collections
import csv
import pathlib

import numpy as np
from absl import flags

from lgg_jax import cli, config_defaults, figures
from lgg_jax.data import augment, pipeline


TUMOUR, NO_TUMOUR = "tumour", "no tumour"


def diagnosis_counts(has_tumor: np.ndarray, path: pathlib.Path) -> None:
  plt = figures.plt()
  counts = [int(has_tumor.sum()), int((~has_tumor).sum())]
  fig, ax = plt.subplots(figsize=(6, 4))
  bars = ax.bar([TUMOUR, NO_TUMOUR], counts, color=["tab:red", "tab:blue"])
  ax.bar_label(bars, labels=[f"{c} ({c / sum(counts):.0%})" for c in counts])
  ax.set_title("Slices by diagnosis")
  ax.set_ylabel("slices")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def patient_counts(patient_ids: np.ndarray, has_tumor: np.ndarray, path: pathlib.Path) -> None:
  plt = figures.plt()
  patients = sorted(set(patient_ids))
  pos = np.array([has_tumor[patient_ids == p].sum() for p in patients])
  neg = np.array([(~has_tumor[patient_ids == p]).sum() for p in patients])
  fig, ax = plt.subplots(figsize=(max(8, len(patients) * 0.22), 5))
  x = np.arange(len(patients))
  ax.bar(x, pos, color="tab:red", label=TUMOUR)
  ax.bar(x, neg, bottom=pos, color="tab:blue", label=NO_TUMOUR)
  ax.set_xticks(x, [p[5:12] for p in patients], rotation=90, fontsize=7)
  ax.set_ylabel("slices")
  ax.set_title("Slices per patient, by diagnosis")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def samples(images, path: pathlib.Path) -> None:
  plt = figures.plt()
  n = len(images)
  fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8))
  for i, image in enumerate(images):
    axes[0, i].imshow(image)
    axes[1, i].imshow(image[..., 1], cmap="hot")
    for ax in axes[:, i]:
      ax.axis("off")
  axes[0, 0].set_title("original colour (pre, FLAIR, post)", loc="left", fontsize=9)
  axes[1, 0].set_title("FLAIR, hot colormap", loc="left", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def overlays(images, masks, path: pathlib.Path, columns: int, title: str) -> None:
  plt = figures.plt()
  rows = -(-len(images) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.5), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image, mask in zip(axes.ravel(), images, masks):
    ax.imshow(figures.overlay(image, mask))
  fig.suptitle(f"{title} (red: tumour mask)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def augmentations(image, mask, augment_config, path: pathlib.Path, count: int = 6) -> None:
  plt = figures.plt()
  fn = augment.make(augment_config)
  fig, axes = plt.subplots(2, count + 1, figsize=(2.2 * (count + 1), 4.8))
  shown = [(image, mask)] + [
      (lambda e: (e["image"], e["mask"]))(fn({"image": image, "mask": mask}, np.random.default_rng(i)))
      for i in range(count)]
  for i, (img, msk) in enumerate(shown):
    axes[0, i].imshow(img)
    axes[1, i].imshow(msk, cmap="gray", vmin=0, vmax=255)
    axes[0, i].set_title("original" if i == 0 else f"draw {i}", fontsize=9)
    for ax in axes[:, i]:
      ax.axis("off")
  fig.suptitle(f"augmentation set '{augment_config.name}': images (top) and masks (bottom)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def clinical_summary(clinical: dict, out: pathlib.Path) -> None:
  rows = list(clinical.values())
  columns = [c for c in (rows[0].keys() if rows else []) if c != "Patient"]
  summary = []
  for c in columns:
    values = [r.get(c, "") for r in rows]
    present = [v for v in values if v not in ("", None)]
    numeric = []
    for v in present:
      try:
        numeric.append(float(v))
      except ValueError:
        pass
    counts = collections.Counter(present)
    summary.append({"column": c, "patients": len(values), "missing": len(values) - len(present),
                    "distinct": len(counts),
                    "mean": f"{np.mean(numeric):.2f}" if numeric else "",
                    "most common": ", ".join(f"{k}: {n}" for k, n in counts.most_common(4))})
  with open(out / "clinical_summary.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["column", "patients", "missing", "distinct", "mean", "most common"])
    writer.writeheader()
    writer.writerows(summary)
  lines = ["| column | patients | missing | distinct | mean | most common (value: patients) |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {r['column']} | {r['patients']} | {r['missing']} | {r['distinct']} | {r['mean']} | "
            f"{r['most common']} |" for r in summary]
  (out / "clinical_summary.md").write_text("# data.csv summary\n\n" + "\n".join(lines) + "\n")


def explore(config, out: pathlib.Path, seed: int = 0) -> list[pathlib.Path]:
  out.mkdir(parents=True, exist_ok=True)
  data = pipeline.load(config)
  rng = np.random.default_rng(seed)
  positive = np.flatnonzero(data.has_tumor)
  picks = rng.choice(len(data.patient_ids), size=6, replace=False)
  tumour = [data.source[int(i)] for i in rng.choice(positive, size=min(12, len(positive)), replace=False)]
  aug = config.augment.copy_and_resolve_references()
  aug.name = "distortions"
  figures_to_draw = [
      lambda: diagnosis_counts(data.has_tumor, out / "diagnosis_counts.png"),
      lambda: patient_counts(data.patient_ids, data.has_tumor, out / "patient_counts.png"),
      lambda: samples([data.source[int(i)]["image"] for i in picks], out / "samples.png"),
      lambda: overlays([t["image"] for t in tumour[:1]], [t["mask"][..., 0] for t in tumour[:1]],
                       out / "overlay_single.png", 1, "One slice"),
      lambda: overlays([t["image"] for t in tumour], [t["mask"][..., 0] for t in tumour],
                       out / "overlay_grid.png", 4, "Tumour slices"),
      lambda: augmentations(tumour[0]["image"], tumour[0]["mask"][..., 0], aug, out / "augmentations.png"),
      lambda: clinical_summary(data.clinical, out)]
  for draw in cli.progress(figures_to_draw, desc="explore", unit="figure"):
    draw()
  return sorted(out.iterdir())


def main(argv):
  del argv
  config = config_defaults.get_config()
  config.data.manual_dir = _MANUAL_DIR.value
  config.data.data_dir = _DATA_DIR.value
  for path in explore(config, pathlib.Path(_OUT.value), _SEED.value):
    print(path)


if __name__ == "__main__":
  # Flags exist only when run as a program, so modules import side by side.
  _MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Folder (or zip) holding kaggle_3m/; empty: synthetic.")
  _DATA_DIR = flags.DEFINE_string("data_dir", "~/.cache/lgg_jax", "Where prepared datasets are cached.")
  _OUT = flags.DEFINE_string("out", "explore", "Output folder for the figures.")
  _SEED = flags.DEFINE_integer("seed", 0, "Which slices are sampled.")
  cli.run(main)
