"""Training augmentations, chosen by name in `config.augment.name`.

Each augmenter is `fn(example, rng) -> example` for grain's `random_map`, so
its randomness is a function of the seed and the element's position in the
data order, and the image and its mask always get the same transform.
"""

from __future__ import annotations

import numpy as np


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


def make(augment_config):
  name = augment_config.name
  if name == "none":
    return lambda example, rng: example
  if name == "flips":
    return lambda example, rng: _flips(example, rng, augment_config.flip_probability)
  raise ValueError(f"config.augment.name: unknown augmentation {name!r} (known: none, flips)")
