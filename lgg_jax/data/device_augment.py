"""The augmentation sets of `augment`, in JAX, inside the jitted train step.

With `config.data.on_device` the dataset stays on the accelerator and each
batch is augmented there, so the host's albumentations never starves it.
Every registered augmentation set (lgg_jax/registry.py) is here with the same knobs and the same
parameter meanings as its albumentations 2.0.8 form (the same distributions,
ranges and maps, including albumentations' own quirks: Affine's whole-pixel
translation, ElasticTransform's field normalised by its largest value and
blurred with dx and dy stacked, GridDistortion's normalised steps,
OpticalDistortion's half-pixel offset of the camera model). It differs in:
  - every geometric transform of a sample is composed into one sampling grid
    and the image interpolated once, bilinearly, 0 outside (albumentations
    interpolates after each warp);
  - the mask is warped bilinearly with the image, in the same gather, and
    thresholded at 0.5: its edge is then the image's interpolated edge
    (nearest neighbour, albumentations' choice, puts it up to half a pixel
    off on a sub-pixel grid), and it stays in {0, 1};
  - intensities stay float32 (no uint8 rounding between transforms) and are
    clipped to [0, 255] after each, as uint8 saturation would.

A sample's randomness is `fold_in(key, its index in the data order)`, so its
augmentation does not depend on the batch size, its row in the batch or the
number of devices the batch is split over.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from lgg_jax import registry

# Every knob of config.augment this module reads: check_supported names any
# other, so a knob added for the host sets cannot be silently ignored here.
KNOBS = ("name", "flip_probability", "rotate90_probability", "transpose_probability",
         "affine_probability", "shift_limit", "scale_limit", "rotate_limit",
         "distortion_probability", "elastic_alpha", "elastic_sigma", "grid_num_steps",
         "grid_distort_limit", "optical_distort_limit", "brightness_limit",
         "brightness_probability", "contrast_limit", "contrast_probability", "gamma_range",
         "gamma_probability", "noise_std_max", "noise_probability", "blur_sigma_range",
         "blur_probability",
         # Applied after normalisation by device_pipeline.missing_sequences.
         "missing_sequence_probability")

_DRAWS = ("hflip", "vflip", "rot90", "rot90_k", "transpose", "affine", "translate", "scale",
          "rotate", "distortion", "distortion_choice", "elastic", "grid", "optical", "noise",
          "noise_std", "noise_field", "blur", "blur_sigma", "brightness", "multiplier",
          "contrast", "contrast_factor", "gamma", "gamma_value")


def check_supported(cfg) -> None:
  """Raises ValueError naming the first setting with no on-device form."""
  registry.check("augmentation", cfg.name)  # every registered set has its on-device form here
  for key in cfg.keys():
    if key not in KNOBS:
      raise ValueError(f"config.augment.{key}: has no on-device form")
  if int(cfg.grid_num_steps) != cfg.grid_num_steps or cfg.grid_num_steps < 1:
    raise ValueError(f"config.augment.grid_num_steps: {cfg.grid_num_steps!r} must be a positive integer")
  for key in ("gamma_range", "blur_sigma_range"):
    low, high = cfg[key]
    if not 0 < low <= high:
      raise ValueError(f"config.augment.{key}: {cfg[key]!r} must be (low, high) with 0 < low <= high")


def make(cfg):
  """`fn(key, images, masks, sample_index) -> (images, masks)`, pure and jit-able.

  images: float32 (B, H, W, C) on the uint8 scale, any C; masks: float32
  (B, H, W) in {0, 1}; sample_index: int (B,), each sample's position in
  the data order. Same (key, index) -> same sample.
  """
  check_supported(cfg)
  settings = types.SimpleNamespace(**{key: cfg[key] for key in cfg.keys()})

  def augment_batch(key, images, masks, sample_index):
    if settings.name == "none":
      return images, masks
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, sample_index)
    return jax.vmap(lambda k, image, mask: _augment_sample(settings, k, image, mask))(keys, images, masks)

  return augment_batch


def _augment_sample(s, key, image, mask):
  height, width, channels = image.shape
  draws = dict(zip(_DRAWS, jax.random.split(key, len(_DRAWS))))
  y, x = _identity_grid(height, width)
  # Source coordinates of each output pixel: the transforms' inverses, in
  # the reverse of their order of application (d4, affine, distortion).
  if s.name == "distortions":
    y, x = _distortion_source(s, draws, y, x)
  if s.name in ("seed", "distortions", "nnunet"):
    y, x = _affine_source(s, draws, y, x, isotropic_scale=s.name == "nnunet")
    y, x = _d4_source(draws, y, x, s.flip_probability, s.rotate90_probability,
                      s.transpose_probability, rot90_factors=(0, 1, 2, 3))
  if s.name == "flips":  # the numpy set: rot90 by 1..3, on flip_probability, no transpose
    y, x = _d4_source(draws, y, x, s.flip_probability, s.flip_probability, 0.0,
                      rot90_factors=(1, 2, 3))
  warped = warp(jnp.concatenate([image, mask[..., None]], axis=-1), y, x)
  image, mask = jnp.clip(warped[..., :channels], 0, 255), (warped[..., channels] >= 0.5).astype(mask.dtype)
  if s.name == "nnunet":
    image = _nnunet_intensity(s, draws, image)
  return image, mask


def _identity_grid(height, width):
  y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                      indexing="ij")
  return y, x


def _happens(key, probability):
  return jax.random.uniform(key) < probability


def _d4_source(draws, y, x, flip_probability, rotate90_probability, transpose_probability,
               rot90_factors):
  """Inverse of hflip, vflip, np.rot90(k) and transpose, applied in that order."""
  height, width = y.shape
  if (rotate90_probability > 0 or transpose_probability > 0) and height != width:
    raise ValueError(f"rotate90 and transpose keep the shape only of square images, not {height}x{width}")
  last = height - 1
  if transpose_probability > 0:
    swap = _happens(draws["transpose"], transpose_probability)
    y, x = jnp.where(swap, x, y), jnp.where(swap, y, x)
  if rotate90_probability > 0:
    # np.rot90(m, k)[i, j] is m[j, n-1-i], m[n-1-i, n-1-j], m[n-1-j, i] for k = 1, 2, 3.
    factors = jnp.asarray(rot90_factors)
    k = factors[jax.random.randint(draws["rot90_k"], (), 0, len(rot90_factors))]
    k = jnp.where(_happens(draws["rot90"], rotate90_probability), k, 0)
    y, x = (jnp.select([k == 1, k == 2, k == 3], [x, last - y, last - x], y),
            jnp.select([k == 1, k == 2, k == 3], [last - y, last - x, y], x))
  if flip_probability > 0:
    y = jnp.where(_happens(draws["vflip"], flip_probability), height - 1 - y, y)
    x = jnp.where(_happens(draws["hflip"], flip_probability), width - 1 - x, x)
  return y, x


def _affine_source(s, draws, y, x, isotropic_scale: bool):
  """albumentations' Affine draws: whole-pixel translation (int() truncates), scales, angle."""
  if s.affine_probability <= 0:
    return y, x
  height, width = y.shape
  shift = jax.random.uniform(draws["translate"], (2,), minval=-s.shift_limit, maxval=s.shift_limit)
  translate = jnp.trunc(shift[0] * height), jnp.trunc(shift[1] * width)
  scale = jax.random.uniform(draws["scale"], (2,), minval=1 - s.scale_limit, maxval=1 + s.scale_limit)
  scale = (scale[0], scale[0]) if isotropic_scale else (scale[0], scale[1])
  angle = jax.random.uniform(draws["rotate"], minval=-s.rotate_limit, maxval=s.rotate_limit)
  source_y, source_x = affine_source(y, x, translate, scale, angle)
  apply = _happens(draws["affine"], s.affine_probability)
  return jnp.where(apply, source_y, y), jnp.where(apply, source_x, x)


def affine_source(y, x, translate, scale, angle_degrees):
  """Inverse of albumentations' Affine matrix, about the pixel-centre image centre c.

  It maps source p to c + t + R S (p - c), R = [[cos, sin], [-sin, cos]] on
  (x, y); translate and scale are (y, x) pairs.
  """
  height, width = y.shape
  angle = jnp.deg2rad(angle_degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cy, cx = height / 2 - 0.5, width / 2 - 0.5
  uy, ux = y - cy - translate[0], x - cx - translate[1]
  return cy + (sin * ux + cos * uy) / scale[0], cx + (cos * ux - sin * uy) / scale[1]


def _distortion_source(s, draws, y, x):
  """OneOf(elastic, grid, optical), each as likely, on distortion_probability.

  The maps are of output pixels (y, x are still the identity grid here).
  """
  if s.distortion_probability <= 0:
    return y, x
  height, width = y.shape
  maps = [elastic_map(draws["elastic"], height, width, s.elastic_alpha, s.elastic_sigma),
          grid_distortion_map(draws["grid"], height, width, s.grid_num_steps, s.grid_distort_limit),
          optical_distortion_map(draws["optical"], height, width, s.optical_distort_limit)]
  choice = jax.random.randint(draws["distortion_choice"], (), 0, len(maps))
  choice = jnp.where(_happens(draws["distortion"], s.distortion_probability), choice, -1)
  source_y = jnp.select([choice == i for i in range(len(maps))], [m[0] for m in maps], y)
  source_x = jnp.select([choice == i for i in range(len(maps))], [m[1] for m in maps], x)
  return source_y, source_x


def _opencv_gaussian_kernel(sigma: float) -> np.ndarray:
  """cv2.GaussianBlur's kernel for float images with ksize (0, 0)."""
  size = int(np.round(sigma * 4 * 2 + 1)) | 1
  taps = np.arange(size) - (size - 1) / 2
  kernel = np.exp(-0.5 * (taps / sigma) ** 2)
  return (kernel / kernel.sum()).astype(np.float32)


def _gaussian_blur_replicated(values, kernel: np.ndarray):
  """Separable (H, W) blur, edges replicated, as a convolution: dozens of taps."""
  radius = (kernel.shape[0] - 1) // 2
  padded = jnp.pad(values, radius, mode="edge")[None, None]
  for taps in (kernel.reshape(1, 1, -1, 1), kernel.reshape(1, 1, 1, -1)):
    padded = jax.lax.conv_general_dilated(padded, jnp.asarray(taps), (1, 1), "VALID",
                                          precision=jax.lax.Precision.HIGHEST)
  return padded[0, 0]


def _filter_axis(values, kernel, axis: int, pad_mode: str):
  """Correlates `values` with a centred odd-length kernel along one axis."""
  radius = (kernel.shape[0] - 1) // 2
  pad = [(0, 0)] * values.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(values, pad, mode=pad_mode)
  length = values.shape[axis]
  return sum(kernel[i] * jax.lax.slice_in_dim(padded, i, i + length, axis=axis)
             for i in range(kernel.shape[0]))


def elastic_map(key, height: int, width: int, alpha: float, sigma: float):
  """Source coordinates of albumentations' ElasticTransform (gaussian noise).

  Normal noise for dx and dy, divided by its largest magnitude, stacked as
  one (2H, W) array and blurred by cv2.GaussianBlur(sigma, replicated edge),
  times alpha.
  """
  fields = _normal(key, (2 * height, width))
  largest = jnp.abs(fields).max()
  fields = jnp.where(largest > 1e-6, fields / largest, fields)
  fields = _gaussian_blur_replicated(fields, _opencv_gaussian_kernel(sigma)) * alpha
  y, x = _identity_grid(height, width)
  return y + fields[height:], x + fields[:height]


def _grid_segments(size: int, num_steps: int):
  """Static layout of albumentations' generate_grid along one axis.

  Pixel j lies in segment j // step (num_steps + 1 of them, the last maybe
  short) at `fraction` of the way along np.linspace(start, end, count), so
  the segments' end points repeat; pixels past the last segment keep 0.
  """
  step = size // num_steps
  segment = np.zeros(size, np.int32)
  fraction = np.zeros(size, np.float32)
  covered = np.zeros(size, bool)
  for index in range(num_steps + 1):
    start, end = index * step, min(index * step + step, size)
    count = end - start
    if count <= 0:
      continue
    segment[start:end] = index
    fraction[start:end] = np.arange(count) / max(count - 1, 1)
    covered[start:end] = True
  return step, segment, fraction, covered


def grid_distortion_coordinates(steps, size: int, num_steps: int):
  """GridDistortion's source coordinate along one axis for (num_steps + 1) raw steps.

  The steps (1 + uniform(-limit, limit)) are normalised as albumentations'
  normalized=True does, so the distortion never leaves the image.
  """
  step, segment, fraction, covered = _grid_segments(size, num_steps)
  last_step = min(size, (num_steps + 1) * step) - num_steps * step
  steps = steps.at[-1].multiply(last_step / step)
  steps = steps * ((size / step) / steps.sum())
  ends = step * jnp.cumsum(steps)
  starts = ends - step * steps
  coordinate = starts[segment] + (ends[segment] - starts[segment]) * fraction
  return jnp.where(covered, coordinate, 0.0)


def grid_distortion_map(key, height: int, width: int, num_steps: int, distort_limit: float):
  """Source coordinates of albumentations' GridDistortion (normalized=True)."""
  key_x, key_y = jax.random.split(key)
  num_steps = int(num_steps)
  steps_x = 1 + jax.random.uniform(key_x, (num_steps + 1,), minval=-distort_limit, maxval=distort_limit)
  steps_y = 1 + jax.random.uniform(key_y, (num_steps + 1,), minval=-distort_limit, maxval=distort_limit)
  xs = grid_distortion_coordinates(steps_x, width, num_steps)
  ys = grid_distortion_coordinates(steps_y, height, num_steps)
  return jnp.broadcast_to(ys[:, None], (height, width)), jnp.broadcast_to(xs[None, :], (height, width))


def camera_distortion_map(k, height: int, width: int):
  """cv2.initUndistortRectifyMap as albumentations' OpticalDistortion calls it.

  Camera matrix [[W, 0, W/2], [0, H, H/2]], k1 = k2 = k; the default new
  camera matrix centres at ((W-1)/2, (H-1)/2), hence a half-pixel offset.
  """
  y, x = _identity_grid(height, width)
  ny, nx = (y - (height - 1) / 2) / height, (x - (width - 1) / 2) / width
  r2 = nx * nx + ny * ny
  radial = 1 + k * r2 + k * r2 * r2
  return height * ny * radial + height / 2, width * nx * radial + width / 2


def optical_distortion_map(key, height: int, width: int, distort_limit: float):
  """Source coordinates of albumentations' OpticalDistortion (camera mode)."""
  k = jax.random.uniform(key, minval=-distort_limit, maxval=distort_limit)
  return camera_distortion_map(k, height, width)


def _nnunet_intensity(s, draws, image):
  """augment's nnunet intensity transforms, in nnU-Net's order; one draw per sample.

  Noise is independent per pixel and channel; brightness, contrast, gamma
  and blur use one parameter for all channels (see augment._nnunet_intensity).
  """
  if s.noise_probability > 0:  # GaussianNoiseTransform
    std = 255 * jax.random.uniform(draws["noise_std"], minval=0.0, maxval=s.noise_std_max)
    noisy = jnp.clip(image + std * _normal(draws["noise_field"], image.shape), 0, 255)
    image = jnp.where(_happens(draws["noise"], s.noise_probability), noisy, image)
  if s.blur_probability > 0:  # GaussianBlurTransform
    sigma = jax.random.uniform(draws["blur_sigma"], minval=s.blur_sigma_range[0],
                               maxval=s.blur_sigma_range[1])
    kernel = _pil_gaussian_kernel(sigma, s.blur_sigma_range[1])
    blurred = _filter_axis(_filter_axis(image, kernel, 0, "reflect"), kernel, 1, "reflect")
    image = jnp.where(_happens(draws["blur"], s.blur_probability), jnp.clip(blurred, 0, 255), image)
  if s.brightness_probability > 0:  # MultiplicativeBrightnessTransform
    multiplier = jax.random.uniform(draws["multiplier"], minval=1 - s.brightness_limit,
                                    maxval=1 + s.brightness_limit)
    image = jnp.where(_happens(draws["brightness"], s.brightness_probability),
                      jnp.clip(image * multiplier, 0, 255), image)
  if s.contrast_probability > 0:  # ContrastTransform, around each channel's mean
    factor = jax.random.uniform(draws["contrast_factor"], minval=1 - s.contrast_limit,
                                maxval=1 + s.contrast_limit)
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = jnp.where(_happens(draws["contrast"], s.contrast_probability),
                      jnp.clip((image - mean) * factor + mean, 0, 255), image)
  if s.gamma_probability > 0:  # GammaTransform on x / 255
    gamma = jax.random.uniform(draws["gamma_value"], minval=s.gamma_range[0], maxval=s.gamma_range[1])
    image = jnp.where(_happens(draws["gamma"], s.gamma_probability),
                      255 * jnp.power(image / 255, gamma), image)
  return image


def _pil_gaussian_kernel(sigma, largest_sigma: float):
  """albumentations' GaussianBlur kernel (int(3.5 sigma) taps each side), traced sigma.

  Padded with zero taps to the largest sigma's length, so its shape is static.
  """
  radius = int(largest_sigma * 3.5)
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.where(jnp.abs(taps) <= jnp.floor(sigma * 3.5), jnp.exp(-0.5 * (taps / sigma) ** 2), 0.0)
  return kernel / kernel.sum()


def _normal(key, shape):
  """Standard normal noise, drawn flat: XLA:CPU compiles a vmapped draw of a
  (H, W, C) shape ten times slower (seconds) than of the same count flat."""
  return jax.random.normal(key, (int(np.prod(shape)),), jnp.float32).reshape(shape)


def warp(values, source_y, source_x):
  """Bilinear sample of (H, W, D) values at source coordinates, 0 outside.

  As cv2.remap with BORDER_CONSTANT 0: each of the four neighbours outside
  the image counts as 0. At integer coordinates it returns the values exactly.
  """
  # Kept instead of jax.scipy.ndimage.map_coordinates(order=1, mode="constant"):
  # that sums the four terms in another order (up to 3e-5 apart on the uint8
  # scale), which would move every number of an on-device augmented run.
  height, width, depth = values.shape
  flat = values.reshape(height * width, depth)
  y0, x0 = jnp.floor(source_y), jnp.floor(source_x)
  wy, wx = source_y - y0, source_x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = jnp.zeros(source_y.shape + (depth,), values.dtype)
  for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                         (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
    yi, xi = y0 + dy, x0 + dx
    inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
    index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
    out = out + jnp.where(inside[..., None], flat[index] * weight[..., None], 0.0)
  return out
