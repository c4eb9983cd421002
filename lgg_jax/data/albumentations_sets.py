"""The augmentation sets built with albumentations: `seed`, `distortions` and
`nnunet` (what each holds: lgg_jax/data/augment.py).

A module of its own so that a run with `none` or `flips`, or augmenting on
the device, never imports albumentations, which imports torch whenever torch
is installed (seconds at the start of every run).
"""

from __future__ import annotations

import os
import random

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else it asks the network on import
import albumentations as A  # noqa: E402


class ContrastAroundMean(A.ImageOnlyTransform):
  """nnU-Net's ContrastTransform, which albumentations lacks.

  RandomBrightnessContrast scales around 0 and ColorJitter around the RGB
  grey level (and takes only 1 or 3 channels). Here each channel is scaled by
  one factor around its own mean, as nnU-Net does, then clipped to the dtype's
  range (nnU-Net clips to the channel's former range instead).
  """

  def __init__(self, limit: float = 0.25, p: float = 0.5):
    super().__init__(p=p)
    self.limit = limit

  def get_params(self) -> dict:
    return {"factor": self.py_random.uniform(1 - self.limit, 1 + self.limit)}

  def apply(self, img: np.ndarray, factor: float, **params) -> np.ndarray:
    mean = img.mean(axis=(0, 1), keepdims=True, dtype=np.float32)
    out = (img.astype(np.float32) - mean) * factor + mean
    if img.dtype == np.uint8:
      return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype)

  def get_transform_init_args_names(self) -> tuple[str, ...]:
    return ("limit",)


def _geometry(cfg, isotropic_scale: bool) -> list:
  return [
      A.HorizontalFlip(p=cfg.flip_probability),
      A.VerticalFlip(p=cfg.flip_probability),
      A.RandomRotate90(p=cfg.rotate90_probability),  # k in 0..3
      A.Transpose(p=cfg.transpose_probability),
      # ShiftScaleRotate is deprecated in albumentations 2.x; Affine replaces it.
      # Without keep_ratio the x and y scales are drawn independently.
      A.Affine(translate_percent=(-cfg.shift_limit, cfg.shift_limit),
               scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
               rotate=(-cfg.rotate_limit, cfg.rotate_limit), keep_ratio=isotropic_scale,
               fill=0, fill_mask=0, p=cfg.affine_probability),
  ]


def _nnunet_intensity(cfg) -> list:
  """nnU-Net's intensity transforms, in its order, one draw for all channels.

  nnU-Net draws brightness, contrast, gamma and blur sigma per channel; here
  channels may be neighbouring slices of one modality, which should stay
  consistent. Its Gaussian noise is independent per channel, and so is this.
  """
  return [
      # GaussianNoiseTransform(noise_variance=(0, 0.1)), p=0.1; the std is a
      # fraction of 255 (std_range is relative to the dtype's max value).
      A.GaussNoise(std_range=(0.0, cfg.noise_std_max), mean_range=(0.0, 0.0), per_channel=True,
                   p=cfg.noise_probability),
      # GaussianBlurTransform(blur_sigma=(0.5, 1.0)), p=0.2; blur_limit=0: the
      # kernel size follows sigma (int(3.5 sigma) * 2 + 1 taps).
      A.GaussianBlur(blur_limit=0, sigma_limit=tuple(cfg.blur_sigma_range), p=cfg.blur_probability),
      # MultiplicativeBrightnessTransform(multiplier_range=(0.75, 1.25)), p=0.15:
      # a pure multiplier (RandomBrightnessContrast's brightness is additive).
      A.MultiplicativeNoise(multiplier=(1 - cfg.brightness_limit, 1 + cfg.brightness_limit),
                            per_channel=False, elementwise=False, p=cfg.brightness_probability),
      # ContrastTransform(contrast_range=(0.75, 1.25)), p=0.15.
      ContrastAroundMean(limit=cfg.contrast_limit, p=cfg.contrast_probability),
      # GammaTransform(gamma=(0.7, 1.5), p_invert_image=0), p=0.3, on x / 255
      # (nnU-Net rescales by the image's range and restores its mean and std).
      A.RandomGamma(gamma_limit=(100 * cfg.gamma_range[0], 100 * cfg.gamma_range[1]),
                    p=cfg.gamma_probability),
  ]


def build_compose(cfg, seed: int | None = None):
  """The albumentations pipeline for a set; every parameter comes from cfg.

  Not Compose(seed=seed): albumentations 2.0.8 then seeds every transform's
  own generators with that same seed, so all draw the same numbers (with
  equal probabilities hflip never came without vflip, rotate90 and
  transpose, and one number set every parameter). One pair of generators
  shared by all transforms keeps the draws independent and reproducible.
  """
  if cfg.name == "nnunet":
    # nnU-Net's SpatialTransform scales isotropically and has no translation
    # (its random crop shifts instead); rotate90/transpose and the flips
    # (MirrorTransform) give the lossless part of its +-180 degree rotation.
    transforms = _geometry(cfg, isotropic_scale=True) + _nnunet_intensity(cfg)
  else:
    transforms = _geometry(cfg, isotropic_scale=False)
  if cfg.name == "distortions":
    transforms.append(A.OneOf([
        A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, fill=0, fill_mask=0, p=1.0),
        A.GridDistortion(num_steps=cfg.grid_num_steps, distort_limit=cfg.grid_distort_limit,
                         fill=0, fill_mask=0, p=1.0),
        A.OpticalDistortion(distort_limit=cfg.optical_distort_limit, fill=0, fill_mask=0, p=1.0),
    ], p=cfg.distortion_probability))
  compose = A.Compose(transforms)
  if seed is not None:
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
  return compose


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
