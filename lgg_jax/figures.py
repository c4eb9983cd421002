"""Pictures shared by exploration, prediction and run reports."""

from __future__ import annotations

import json
import pathlib

import imageio.v2 as imageio
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


LOSS_LABELS = {"dice_bce": "Dice + BCE loss", "dice": "Dice loss", "bce": "BCE loss"}


def training_curves(metrics_path: pathlib.Path, out_dir: pathlib.Path, loss_name: str) -> list[pathlib.Path]:
  """Loss and Dice per epoch, training and validation (the seed's figures 16-18);
  `loss_name`: the run's config.loss.name, which the loss axis names."""
  records = [json.loads(line) for line in pathlib.Path(metrics_path).read_text().splitlines() if line.strip()]
  if not records:
    return []
  p = plt()
  epochs = [r["epoch"] for r in records]
  written = []
  for name, keys, ylabel in (("loss_curves.png", ("train_loss", "val_loss"), LOSS_LABELS.get(loss_name, f"{loss_name} loss")),
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


def progress(records: list[dict], path: pathlib.Path) -> None:
  """nnU-Net's progress.png: losses, Dice and the learning rate per epoch (redrawn by train.MetricsLog)."""
  if not records:
    return
  p = plt()
  epochs = [r["epoch"] for r in records]
  fig, (loss_ax, dice_ax) = p.subplots(2, 1, figsize=(8, 7), sharex=True)
  loss_ax.plot(epochs, [r["train_loss"] for r in records], marker="o", label="training loss")
  loss_ax.plot(epochs, [r["val_loss"] for r in records], marker="o", label="validation loss (256x256)")
  loss_ax.set_ylabel("loss")
  loss_ax.legend(loc="upper left")
  lr_ax = loss_ax.twinx()
  lr_ax.plot(epochs, [r["lr"] for r in records], color="tab:gray", linestyle="--", label="learning rate")
  lr_ax.set_ylabel("learning rate")
  lr_ax.legend(loc="upper right")
  dice_ax.plot(epochs, [r["val_dice"] for r in records], marker="o", label="validation Dice (per patient)")
  dice_ax.plot(epochs, [r["train_dice"] for r in records], marker="o", label="training Dice (per slice)")
  best = max(records, key=lambda r: r["val_dice"])
  dice_ax.axvline(best["epoch"], color="tab:green", alpha=0.4, label=f"best epoch ({best['epoch']})")
  dice_ax.set_xlabel("epoch")
  dice_ax.set_ylabel("Dice")
  dice_ax.set_ylim(0, 1)
  dice_ax.legend(loc="lower right")
  for ax in (loss_ax, dice_ax):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  partial = path.with_name(path.name + ".partial.png")
  fig.savefig(partial, dpi=90)
  p.close(fig)
  partial.replace(path)  # a viewer never sees half a picture


def overlay_grid(images: list[np.ndarray], columns: int = 2) -> np.ndarray:
  """RGB uint8 pictures of one size tiled into a grid (blank cells black)."""
  rows = -(-len(images) // columns)
  h, w = images[0].shape[:2]
  grid = np.zeros((rows * h, columns * w, 3), np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
  return grid


def prediction_panel(image, truth, probability, mask, path: pathlib.Path, title: str = "",
                     mask_title: str = "prediction") -> None:
  """Image / truth / probability / the post-processed mask (the seed's figure 19)."""
  p = plt()
  panels = [("image", image, None), ("ground truth", truth, "gray"), ("probability", probability, "viridis"),
            (mask_title, mask, "gray")]
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
  """An animated GIF through a patient's slices (the seed's figure 20).

  imageio >= 2.28 (pinned) takes the frame duration in milliseconds."""
  imageio.mimsave(path, [np.asarray(f, np.uint8) for f in frames], duration=1000.0 / fps, loop=0)
