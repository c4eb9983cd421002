"""Training augmentations, chosen by name in `config.augment.name` (lgg_jax/registry.py).

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
  nnunet       nnU-Net's 2-D set where albumentations has it: `seed`'s
               geometry with isotropic scale, then Gaussian noise, Gaussian
               blur, brightness, contrast and gamma on the uint8 image

Images may have any number of channels (3 today; 9 or 15 when neighbouring
slices are stacked as channels). Every transform used here takes them:
albumentations splits cv2's warps and filters into chunks of at most four
channels with the same parameters, and the intensity transforms draw one
parameter for all channels, so channels that were equal stay equal, except
for Gaussian noise, which (as nnU-Net's) is independent per pixel and channel.
`lgg_jax.data.device_augment` is the same sets in JAX, on the accelerator.
`seed`, `distortions` and `nnunet` live in `lgg_jax.data.albumentations_sets`,
imported only when one of them is chosen: albumentations imports torch
whenever torch is installed, seconds at the start of every run.
"""

from __future__ import annotations

import numpy as np

from lgg_jax import registry


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


def no_augmentation(augment_config):
  del augment_config
  return lambda example, rng: example


def flips(augment_config):
  return lambda example, rng: _flips(example, rng, augment_config.flip_probability)


def make(augment_config):
  """`fn(example, rng) -> example` for the set `augment_config.name`."""
  return registry.get("augmentation", augment_config.name)(augment_config)
