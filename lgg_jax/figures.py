"""Pictures shared by exploration, prediction and run reports."""

from __future__ import annotations

import json
import pathlib

import numpy as np

TRUTH_COLOUR = (0, 255, 0)       # green
PREDICTION_COLOUR = (255, 0, 0)  # red


def plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as pyplot
  return pyplot


def overlay(image: np.ndarray, mask: np.ndarray | None, colour=PREDICTION_COLOUR, alpha: float = 0.45,
            truth: np.ndarray | None = None) -> np.ndarray:
  """RGB uint8 image with the prediction (red) and, if given, the truth
  (green) tinted in; where both agree the tint is yellow-ish."""
  out = image.astype(np.float32).copy()
  for m, c in ((truth, TRUTH_COLOUR), (mask, colour)):
    if m is None:
      continue
    m = np.asarray(m).astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def training_curves(metrics_path: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Loss and Dice per epoch, training and validation (the seed's figures 16-18)."""
  records = [json.loads(line) for line in pathlib.Path(metrics_path).read_text().splitlines() if line.strip()]
  if not records:
    return []
  p = plt()
  epochs = [r["epoch"] for r in records]
  written = []
  for name, keys, ylabel in (("loss_curves.png", ("train_loss", "val_loss"), "Dice + BCE loss"),
                             ("dice_curves.png", ("train_dice", "val_dice", "val_slice_dice"), "Dice")):
    fig, ax = p.subplots(figsize=(7, 4))
    for key in keys:
      label = {"train_loss": "training loss", "val_loss": "validation loss",
               "train_dice": "training Dice (per slice)", "val_dice": "validation Dice (per patient)",
               "val_slice_dice": "validation Dice (per slice)"}[key]
      ax.plot(epochs, [r[key] for r in records], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(ylabel + " per epoch")
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    p.close(fig)
    written.append(out_dir / name)
  return written


def prediction_panel(image, truth, probability, threshold: float, path: pathlib.Path, title: str = "") -> None:
  """Image / truth / probability / thresholded mask (the seed's figure 19)."""
  p = plt()
  panels = [("image", image, None), ("ground truth", truth, "gray"), ("probability", probability, "viridis"),
            (f"prediction (p >= {threshold:.2f})", probability >= threshold, "gray")]
  if truth is None:
    panels.pop(1)
  fig, axes = p.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
  for ax, (name, array, cmap) in zip(axes, panels):
    im = ax.imshow(array, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
    ax.set_title(name)
    ax.axis("off")
    if name == "probability":
      fig.colorbar(im, ax=ax, fraction=0.046)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  p.close(fig)


def gif(frames: list[np.ndarray], path: pathlib.Path, fps: float = 5.0) -> None:
  """An animated GIF through a patient's slices (the seed's figure 20)."""
  import imageio.v2 as imageio
  imageio.mimsave(path, [np.asarray(f, np.uint8) for f in frames], duration=1.0 / fps, loop=0)
