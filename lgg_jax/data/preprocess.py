"""From uint8 MRI slices to model inputs: one set of functions for training,
evaluation, prediction and the Segmenter, so they cannot drift apart.

Order, everywhere: resize each 256x256 slice to the model's size (area
interpolation), stack each slice with its neighbours as channels (2.5-D),
[augment, training only], normalise, [simulate missing sequences, training
only]. "patient" normalisation takes its statistics from the patient's
resized volume.

Stacking, normalisation and the missing-sequence copy are written once for
both input paths: `xp` is numpy on the host (the grain pipeline, evaluation,
prediction) and jax.numpy inside the jitted step (`device_pipeline`).
"""

from __future__ import annotations

import cv2
import numpy as np

from lgg_jax import choices

NORMALIZATIONS = ("slice", "unit", "patient")
SOURCE_SIZE = 256  # the dataset's slices; every score is taken at this size


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[0] == size:
    return image
  return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """uint8 {0, 255}: area interpolation, then a pixel is tumour when >= 50% covered."""
  if mask.shape[0] == size:
    return mask
  return np.where(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA) >= 128, 255, 0).astype(np.uint8)


def resize_volume(volume: np.ndarray, size: int) -> np.ndarray:
  return np.stack([resize_image(s, size) for s in volume]) if volume.shape[1] != size else volume


def neighbour_rows(num_slices: int, k: int) -> np.ndarray:
  """(S, 2k+1) slice positions of each slice's stack; edge slices repeat."""
  return np.clip(np.arange(num_slices)[:, None] + np.arange(-k, k + 1)[None], 0, num_slices - 1)


def stack_rows(slices, rows, xp=np):
  """Slices (N, H, W, C) gathered by `rows` (..., 2k+1) of positions into
  (..., H, W, C * (2k+1)): the first row's channels first, the last's last."""
  stack = xp.moveaxis(slices[rows], -4, -2)  # (..., H, W, 2k+1, C)
  return stack.reshape(stack.shape[:-2] + (stack.shape[-2] * stack.shape[-1],))


def stack_neighbours(volume: np.ndarray, k: int) -> np.ndarray:
  """(S, H, W, C) -> (S, H, W, C * (2k+1)): slice s-k's channels first, s+k's last."""
  if k == 0:
    return volume
  return stack_rows(volume, neighbour_rows(len(volume), k))


def patient_statistics(volume: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
  """(C, 4) float32 per channel: clip low, clip high, mean and std after clipping,
  over the brain (voxels non-zero in any channel) of a (S, H, W, C) volume."""
  channels = volume.shape[-1]
  brain = volume.reshape(-1, channels)
  brain = brain[brain.any(axis=1)].astype(np.float32)
  if len(brain) == 0:  # an all-black volume: leave it as it is
    return np.tile(np.array([[0.0, 255.0, 0.0, 1.0]], np.float32), (channels, 1))
  low, high = np.percentile(brain, percentiles, axis=0)
  clipped = np.clip(brain, low, high)
  mean, std = clipped.mean(axis=0), clipped.std(axis=0)
  return np.stack([low, high, mean, np.maximum(std, 1e-3)], axis=1).astype(np.float32)


def normalise(images, mode: str, stats=None, xp=np):
  """float32 (..., H, W, C) of the same shape. `stats` from `patient_statistics`,
  tiled over the neighbour slices of a 2.5-D stack: (3, 4) for all the
  images, or (B, 3, 4), one per image of a (B, H, W, C) batch."""
  choices.check("config.data.normalization", mode, NORMALIZATIONS)
  images = images.astype(xp.float32)
  if mode == "unit":
    return images / 255.0
  if mode == "slice":  # per-channel z-score of each slice: removes per-slice gain
    mean = images.mean(axis=(-3, -2), keepdims=True)
    std = images.std(axis=(-3, -2), keepdims=True)
    return (images - mean) / (std + 1.0)
  if stats is None:
    raise ValueError("config.data.normalization='patient' needs the patient's statistics")
  stats = xp.tile(stats, (images.shape[-1] // stats.shape[-2], 1))[..., None, None, :, :]  # (..., 1, 1, C, 4)
  return (xp.clip(images, stats[..., 0], stats[..., 1]) - stats[..., 2]) / stats[..., 3]


def volume_statistics(small_volume: np.ndarray, data_config) -> np.ndarray | None:
  if data_config.normalization != "patient":
    return None
  return patient_statistics(small_volume, tuple(data_config.normalization_percentiles))


def model_inputs(volume: np.ndarray, data_config) -> np.ndarray:
  """uint8 (S, 256, 256, 3) slices of one patient, in slice order ->
  float32 (S, size, size, 3 * (2k+1)) model inputs."""
  small = resize_volume(volume, data_config.image_size)
  stats = volume_statistics(small, data_config)
  return normalise(stack_neighbours(small, data_config.neighbours), data_config.normalization, stats)


MISSING_PATTERNS = ((0,), (2,), (0, 2))  # pre-contrast, post-contrast, both
FLAIR = 1


def missing_channels(pattern, xp=np):
  """bool (..., 3): which of a slice's 3 channels pattern number(s) `pattern`
  (an index into MISSING_PATTERNS, any shape) makes missing."""
  table = xp.asarray([[c in missing for c in range(3)] for missing in MISSING_PATTERNS])
  return table[pattern]


def copy_flair(images, missing, xp=np):
  """What the dataset does for a missing sequence: FLAIR copied into its
  channel, in every slice of a 2.5-D stack. On normalised images, so the copy
  equals what a patient with that sequence missing gives at inference.

  images (..., H, W, C); missing: bool (3,) for all of them, or (B, 3), one
  per image of a (B, H, W, C) batch (`missing_channels`).
  """
  role = np.arange(images.shape[-1]) % 3  # 0 pre-contrast, 1 FLAIR, 2 post-contrast
  flair = xp.repeat(images[..., FLAIR::3], 3, axis=-1)  # each slice's FLAIR in its 3 channels
  return xp.where(missing[..., None, None, role], flair, images)
