"""Training on random crops of the full-resolution slices (`config.data.crop_size`).

A crop of 128x128 at 256x256 costs what a whole slice at 128x128 costs, but
keeps every pixel of small tumours. Where a crop sits is a pure function of
(seed, position in the data order) and of its slice's mask (`CropPlan`), and
both input paths take it from here: the host path cuts the window on the
host, the on-device path receives the origins with the batch rows and cuts
it with a dynamic slice. Positions that the data order fills from the tumour
stream (`TrainOrder.is_tumour_position`, `config.data.tumour_fraction` of
each batch) get a crop that contains a tumour pixel chosen at random; the
others a crop anywhere in the slice.

Augmentation sees a window `crop_context` pixels larger on each side
(zeros beyond the slice, as the scanner's background), and the crop is cut
from its centre afterwards, so rotations and zooms about the crop's centre
leave no empty corners in the crop.

Validation, evaluation, prediction and exports run on whole 256x256 slices:
every model here is fully convolutional and takes any side divisible by its
input divisor (`models.input_divisor`: 2^(depth-1) for the U-Net, 32 for FPN,
16 for ResNeXt-UNet), so 256 serves all three.
"""

from __future__ import annotations

import numpy as np

from lgg_jax.data import preprocess

_STREAM = 3  # the rng stream of crop positions (0, 1: the data order's permutations)


def check(data_config, divisor: int) -> None:
  """The crop settings that would fail or mislead later, checked at config time."""
  crop, size, context = data_config.crop_size, data_config.image_size, data_config.crop_context
  if crop == 0:
    return
  if crop < 0:
    raise ValueError(f"config.data.crop_size={crop} must be 0 (whole slices) or positive")
  if size != preprocess.SOURCE_SIZE:
    raise ValueError(f"config.data.crop_size={crop} needs config.data.image_size={preprocess.SOURCE_SIZE} "
                     f"(crops are cut at the dataset's full resolution), got {size}")
  if crop > size:
    raise ValueError(f"config.data.crop_size={crop} is larger than the {size}x{size} slices")
  if crop % divisor:
    raise ValueError(f"config.data.crop_size={crop} must be divisible by {divisor}, the model's input divisor")
  if context < 0:
    raise ValueError(f"config.data.crop_context={context} must be >= 0")
  if data_config.normalization == "slice":
    raise ValueError("config.data.crop_size needs config.data.normalization 'patient' or 'unit': 'slice' "
                     "z-scores each image, and a crop's statistics are not those of the whole slice the "
                     "model sees at inference")


class CropPlan:
  """Crop origins: (row, position) -> (y, x) of the crop's top-left pixel in the slice.

  masks: the resident masks (N, H, W), non-zero where tumour; order: the
  data order (`pipeline.TrainOrder`), which says which positions are filled
  from the tumour stream.
  """

  def __init__(self, masks: np.ndarray, order, crop_size: int, context: int, seed: int):
    self.masks, self.order = masks, order
    self.crop, self.context, self.seed = int(crop_size), int(context), int(seed)
    self.size = masks.shape[1]

  @property
  def window(self) -> int:
    return self.crop + 2 * self.context

  def origin(self, row: int, position: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, _STREAM, int(position)])
    limit = self.size - self.crop
    if self.order.is_tumour_position(position):
      tumour = np.flatnonzero(self.masks[row])
      if len(tumour):
        y, x = divmod(int(tumour[rng.integers(len(tumour))]), self.masks.shape[2])
        # Any crop that holds (y, x), equally likely.
        return np.array([rng.integers(max(0, y - self.crop + 1), min(y, limit) + 1),
                         rng.integers(max(0, x - self.crop + 1), min(x, limit) + 1)], np.int32)
    return rng.integers(0, limit + 1, size=2).astype(np.int32)

  def origins(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.stack([self.origin(r, p) for r, p in zip(rows, positions)]).astype(np.int32)


def cut_window(image: np.ndarray, origin, crop: int, context: int) -> np.ndarray:
  """The (crop + 2 context)-square window around the crop at `origin` of an
  (H, W, ...) image; zeros where it leaves the image."""
  pad = [(context, context), (context, context)] + [(0, 0)] * (image.ndim - 2)
  y, x = int(origin[0]), int(origin[1])
  window = crop + 2 * context
  return np.pad(image, pad)[y:y + window, x:x + window]


def centre(array, crop: int, context: int, axis: int = 0):
  """The crop in the middle of an augmented window whose rows are axis `axis`
  and columns `axis + 1` (numpy or jax arrays)."""
  return array[(slice(None),) * axis + (slice(context, context + crop),) * 2]
