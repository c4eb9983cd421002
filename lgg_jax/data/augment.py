"""Training augmentations, chosen by name in `config.augment.name`.

Each augmenter is `fn(example, rng) -> example` for grain's `random_map`, so
its randomness is a function of the seed and the element's position in the
data order (hence reproducible per seed and epoch, in any worker), and the
image and its mask always get the same geometric transform. Masks are warped
with nearest-neighbour interpolation and stay {0, 255}.

Sets:
  none         no augmentation
  flips        horizontal / vertical flip and 90-degree rotation (numpy only)
  seed         the seed notebook's training set: flips, rotate90, transpose and
               a small shift/scale/rotate (Affine), with albumentations
  distortions  `seed` plus one of ElasticTransform, GridDistortion and
               OpticalDistortion (the seed's strong set)
"""

from __future__ import annotations

import os

import numpy as np

NAMES = ("none", "flips", "seed", "distortions")


def _flips(example: dict, rng: np.random.Generator, p: float) -> dict:
  image, mask = example["image"], example["mask"]
  if rng.random() < p:
    image, mask = image[:, ::-1], mask[:, ::-1]
  if rng.random() < p:
    image, mask = image[::-1], mask[::-1]
  if rng.random() < p:
    k = int(rng.integers(1, 4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
  return {**example, "image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}


def build_compose(cfg, seed: int | None = None):
  """The albumentations pipeline for a set; every parameter comes from cfg."""
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else it asks the network on import
  import albumentations as A
  transforms = [
      A.HorizontalFlip(p=cfg.flip_probability),
      A.VerticalFlip(p=cfg.flip_probability),
      A.RandomRotate90(p=cfg.rotate90_probability),
      A.Transpose(p=cfg.transpose_probability),
      # ShiftScaleRotate is deprecated in albumentations 2.x; Affine replaces it.
      A.Affine(translate_percent=(-cfg.shift_limit, cfg.shift_limit),
               scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
               rotate=(-cfg.rotate_limit, cfg.rotate_limit), fill=0, fill_mask=0,
               p=cfg.affine_probability),
  ]
  if cfg.name == "distortions":
    transforms.append(A.OneOf([
        A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, fill=0, fill_mask=0, p=1.0),
        A.GridDistortion(num_steps=cfg.grid_num_steps, distort_limit=cfg.grid_distort_limit,
                         fill=0, fill_mask=0, p=1.0),
        A.OpticalDistortion(distort_limit=cfg.optical_distort_limit, fill=0, fill_mask=0, p=1.0),
    ], p=cfg.distortion_probability))
  return A.Compose(transforms, seed=seed)


class Albumentations:
  """Picklable for grain workers.

  A fresh pipeline per element, seeded from the element's rng: reseeding one
  long-lived Compose left some nested transforms' state depending on what
  that process had augmented before, so workers and the main process
  disagreed. Building one costs well under a millisecond.
  """

  def __init__(self, cfg):
    self.cfg = cfg

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    compose = build_compose(self.cfg, seed=int(rng.integers(2**31 - 1)))
    out = compose(image=example["image"], mask=example["mask"])
    return {**example, "image": np.ascontiguousarray(out["image"]),
            "mask": np.ascontiguousarray(out["mask"])}


def make(augment_config):
  name = augment_config.name
  if name == "none":
    return lambda example, rng: example
  if name == "flips":
    return lambda example, rng: _flips(example, rng, augment_config.flip_probability)
  if name in ("seed", "distortions"):
    return Albumentations(augment_config)
  raise ValueError(f"config.augment.name: unknown augmentation {name!r} (known: {', '.join(NAMES)})")
