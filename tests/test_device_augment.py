"""The on-device augmentation against its albumentations form (CPU, small sizes)."""

import albumentations as A
import cv2
import jax
import jax.scipy.ndimage
import jax.numpy as jnp
import numpy as np
import pytest
from albumentations.augmentations.geometric import functional as fgeometric
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import default
from lgg_jax import registry
from lgg_jax.data import albumentations_sets, augment, device_augment

SIZE = 64
# Per-draw parameters make the statistics noisy: over 200 draws a set's mean
# displacement varies by 3-4% (one standard deviation, measured), leaving
# the 10% tolerance under 3 of them; over 500, 2% or less.
DRAWS = 500
_PROBABILITIES = ("flip_probability", "rotate90_probability", "transpose_probability",
                  "affine_probability", "distortion_probability", "brightness_probability",
                  "contrast_probability", "gamma_probability", "noise_probability", "blur_probability")


def _config(name, **overrides):
  cfg = default.get_config().augment
  cfg.name = name
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _only(name, **probabilities):
  """A set with every probability 0 except those given."""
  return _config(name, **{**{p: 0.0 for p in _PROBABILITIES}, **probabilities})


def _blob_batch(count, channels=9):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 40, (count, SIZE, SIZE, channels)).astype(np.float32)
  yy, xx = np.mgrid[:SIZE, :SIZE]
  blob = (yy - 22) ** 2 / 8**2 + (xx - 40) ** 2 / 6**2 < 1
  images[:, blob] = 230
  masks = np.broadcast_to(blob, (count, SIZE, SIZE)).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(masks)


def test_every_host_set_has_an_on_device_form():
  assert set(default.get_config().augment.keys()) == set(device_augment.KNOBS)
  for name in registry.names("augmentation"):
    device_augment.check_supported(_config(name))
    augment.make(_config(name))
    device_augment.make(_config(name))


def test_unsupported_settings_are_named():
  with pytest.raises(ValueError, match="config.augment.name: unknown value 'xyz'"):
    device_augment.make(_config("xyz"))
  cfg = _config("seed")
  cfg.mixup_alpha = 0.2
  with pytest.raises(ValueError, match="config.augment.mixup_alpha: has no on-device form"):
    device_augment.check_supported(cfg)
  with pytest.raises(ValueError, match="config.augment.grid_num_steps"):
    device_augment.check_supported(_config("distortions", grid_num_steps=0))


@pytest.mark.parametrize("name", ["flips", "seed", "distortions", "nnunet"])
def test_mask_stays_binary_and_aligned_with_the_image(name):
  images, masks = _blob_batch(12)
  fn = jax.jit(device_augment.make(_config(name)))
  out_images, out_masks = fn(jax.random.key(1), images, masks, jnp.arange(12))
  assert out_images.shape == images.shape and out_masks.shape == masks.shape
  assert set(np.unique(out_masks)) <= {0.0, 1.0}
  out_images, out_masks = np.asarray(out_images), np.asarray(out_masks) > 0
  assert 0 <= out_images.min() and out_images.max() <= 255
  changed = 0
  for image, mask, before in zip(out_images, out_masks, np.asarray(masks)):
    assert mask.sum() > 0.5 * before.sum()
    # The mask still covers the bright blob: bright inside, dark outside.
    if name == "nnunet":  # its intensity transforms move both levels
      assert np.percentile(image[mask], 10) > np.percentile(image[~mask], 90) + 50
    else:
      assert image[mask].mean() > 200 and image[~mask].mean() < 60
    changed += not np.array_equal(mask, before)
  assert changed >= 4


@pytest.mark.parametrize("name", ["none", "flips", "seed", "distortions", "nnunet"])
def test_identity_settings_return_the_input_exactly(name):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 255, (3, 16, 16, 5)).astype(np.float32))
  masks = jnp.asarray((rng.random((3, 16, 16)) < 0.3).astype(np.float32))
  fn = jax.jit(device_augment.make(_only(name)))
  out_images, out_masks = fn(jax.random.key(0), images, masks, jnp.arange(3))
  np.testing.assert_array_equal(out_images, images)
  np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("name", ["flips", "seed", "distortions", "nnunet"])
def test_all_channels_get_the_same_transform(name):
  # Decided: geometry and every intensity parameter are shared by all
  # channels (2.5-D channels are neighbouring slices); only Gaussian noise is
  # independent per channel, as in nnU-Net, so it is off here.
  everything = {p: 1.0 for p in _PROBABILITIES if p != "noise_probability"}
  fn = jax.jit(device_augment.make(_config(name, noise_probability=0.0, **everything)))
  images, masks = _blob_batch(4, channels=1)
  images = images + jnp.asarray(np.random.default_rng(1).uniform(0, 20, images.shape), jnp.float32)
  out, _ = fn(jax.random.key(2), jnp.repeat(images, 9, axis=-1), masks, jnp.arange(4))
  # Equal up to float32 rounding, not bit for bit: XLA:CPU may compute the ninth
  # channel outside the vector lanes of the other eight (seen on an AMD EPYC:
  # 3e-5 apart on values up to 300), while another transform differs by whole units.
  np.testing.assert_allclose(out, jnp.repeat(out[..., :1], 9, axis=-1), rtol=1e-6, atol=1e-4)
  assert not np.array_equal(out[..., :1], images)


def test_lossless_transforms_are_numpy_permutations():
  rng = np.random.default_rng(0)
  masks = (rng.random((16, 8, 8)) < 0.5).astype(np.float32)
  # Channel 0 is 0 exactly where the mask is 1, so the mask is seen to get
  # the image's permutation.
  images = rng.uniform(1, 255, (16, 8, 8, 2)).astype(np.float32)
  images[..., 0] *= 1 - masks

  def augmented(name, **probabilities):
    fn = device_augment.make(_only(name, **probabilities))
    out_images, out_masks = fn(jax.random.key(3), jnp.asarray(images), jnp.asarray(masks), jnp.arange(16))
    out_images = np.asarray(out_images)
    np.testing.assert_array_equal(out_masks, out_images[..., 0] == 0)
    return out_images

  np.testing.assert_array_equal(augmented("seed", transpose_probability=1.0), images.transpose(0, 2, 1, 3))
  np.testing.assert_array_equal(augmented("seed", flip_probability=1.0), images[:, ::-1, ::-1])
  # RandomRotate90 draws k in 0..3; the numpy "flips" set k in 1..3, after
  # both flips (its flip_probability also gates the rotation).
  for out, sources, factors in (
      (augmented("seed", rotate90_probability=1.0), images, {0, 1, 2, 3}),
      (augmented("flips", flip_probability=1.0), images[:, ::-1, ::-1], {1, 2, 3})):
    seen = []
    for sample, source in zip(out, sources):
      seen += [k for k in range(4) if np.array_equal(sample, np.rot90(source, k))]
    assert len(seen) == len(out) and set(seen) == factors


def _coordinate_images(count):
  """x, y and 1 per pixel: warped, they give each output pixel's source."""
  yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  return np.broadcast_to(np.dstack([xx, yy, np.ones_like(xx)]), (count, SIZE, SIZE, 3))


def _displacements(warped):
  """Displacement of every pixel whose source lies wholly inside the image."""
  yy, xx = np.mgrid[:SIZE, :SIZE]
  inside = warped[..., 2] > 1 - 1e-4
  return np.hypot(warped[..., 0] - xx, warped[..., 1] - yy)[inside]


def _host_displacements(compose_for_seed):
  image = _coordinate_images(1)[0]
  return _displacements(np.stack([compose_for_seed(seed)(image=image)["image"] for seed in range(DRAWS)]))


def _device_set_displacements(cfg):
  images = jnp.asarray(_coordinate_images(DRAWS))
  fn = jax.jit(device_augment.make(cfg))
  warped, _ = fn(jax.random.key(7), images, jnp.zeros(images.shape[:3]), jnp.arange(DRAWS))
  return _displacements(np.asarray(warped))


def _device_map_displacements(source_map):
  image = jnp.asarray(_coordinate_images(1)[0])
  warped = jax.jit(jax.vmap(lambda key: device_augment.warp(image, *source_map(key))))(
      jax.random.split(jax.random.key(7), DRAWS))
  return _displacements(np.asarray(warped))


# At 64 pixels instead of 256: the elastic field's sigma and alpha scale with
# the image, and the seed's 1% shift (int() of under a pixel: none at 64)
# becomes 4%, the same pixels as at 256. Grid and optical are relative.
_SEED_AFFINE = _only("seed", affine_probability=1.0, shift_limit=0.04)
_NNUNET_AFFINE = _only("nnunet", affine_probability=1.0, shift_limit=0.1, scale_limit=0.3, rotate_limit=45.0)
_ELASTIC = dict(alpha=30.0, sigma=1.5)
_GRID = dict(num_steps=_SEED_AFFINE.grid_num_steps, distort_limit=_SEED_AFFINE.grid_distort_limit)
_OPTICAL = dict(distort_limit=_SEED_AFFINE.optical_distort_limit)
_GEOMETRIC_CASES = {
    "affine": (lambda seed: albumentations_sets.build_compose(_SEED_AFFINE, seed),
               lambda: _device_set_displacements(_SEED_AFFINE)),
    "nnunet_rotation_scale": (lambda seed: albumentations_sets.build_compose(_NNUNET_AFFINE, seed),
                              lambda: _device_set_displacements(_NNUNET_AFFINE)),
    "elastic": (lambda seed: A.Compose([A.ElasticTransform(**_ELASTIC, fill=0, p=1.0)], seed=seed),
                lambda: _device_map_displacements(
                    lambda key: device_augment.elastic_map(key, SIZE, SIZE, **_ELASTIC))),
    "grid": (lambda seed: A.Compose([A.GridDistortion(**_GRID, fill=0, p=1.0)], seed=seed),
             lambda: _device_map_displacements(
                 lambda key: device_augment.grid_distortion_map(key, SIZE, SIZE, **_GRID))),
    "optical": (lambda seed: A.Compose([A.OpticalDistortion(**_OPTICAL, fill=0, p=1.0)], seed=seed),
                lambda: _device_map_displacements(
                    lambda key: device_augment.optical_distortion_map(key, SIZE, SIZE, **_OPTICAL))),
}


@pytest.mark.parametrize("case", list(_GEOMETRIC_CASES))
def test_displacement_statistics_match_albumentations(case):
  compose_for_seed, device_displacements = _GEOMETRIC_CASES[case]
  ours, theirs = device_displacements(), _host_displacements(compose_for_seed)
  stats = {"mean": (ours.mean(), theirs.mean()),
           "p95": (np.percentile(ours, 95), np.percentile(theirs, 95))}
  print(f"{case}: " + ", ".join(f"{k} ours {a:.3f} albumentations {b:.3f}" for k, (a, b) in stats.items()))
  for ours_value, theirs_value in stats.values():
    assert abs(ours_value - theirs_value) <= 0.1 * theirs_value


def test_maps_equal_albumentations_for_the_same_parameters():
  height, width, num_steps = 60, 48, 5
  steps_x, steps_y = 1 + np.random.default_rng(0).uniform(-0.3, 0.3, (2, num_steps + 1))
  normalized = fgeometric.normalize_grid_distortion_steps((height, width), num_steps, list(steps_x),
                                                          list(steps_y))
  map_x, map_y = fgeometric.generate_grid((height, width), normalized["steps_x"], normalized["steps_y"],
                                          num_steps)
  ours_x = device_augment.grid_distortion_coordinates(jnp.asarray(steps_x, jnp.float32), width, num_steps)
  ours_y = device_augment.grid_distortion_coordinates(jnp.asarray(steps_y, jnp.float32), height, num_steps)
  np.testing.assert_allclose(np.broadcast_to(ours_x[None], map_x.shape), map_x, atol=1e-4)
  np.testing.assert_allclose(np.broadcast_to(ours_y[:, None], map_y.shape), map_y, atol=1e-4)
  map_x, map_y = fgeometric.get_camera_matrix_distortion_maps((height, width), -0.4)
  ours_y, ours_x = device_augment.camera_distortion_map(-0.4, height, width)
  np.testing.assert_allclose(ours_x, map_x, atol=1e-4)
  np.testing.assert_allclose(ours_y, map_y, atol=1e-4)
  matrix = fgeometric.create_affine_transformation_matrix(
      {"x": -2, "y": 3}, {"x": 0.0, "y": 0.0}, {"x": 0.9, "y": 1.1}, 30.0, fgeometric.center((height, width)))
  ours_y, ours_x = device_augment.affine_source(*np.mgrid[:height, :width].astype(np.float32),
                                                translate=(3, -2), scale=(1.1, 0.9), angle_degrees=30.0)
  forward = matrix @ np.stack([ours_x.ravel(), ours_y.ravel(), np.ones(height * width)])
  np.testing.assert_allclose(forward[:2], np.stack(np.mgrid[:height, :width][::-1]).reshape(2, -1), atol=1e-3)


def test_warp_is_cv2_remap_and_map_coordinates():
  rng = np.random.default_rng(0)
  values = rng.uniform(0, 255, (10, 12, 3)).astype(np.float32)
  source_y = rng.uniform(-2, 12, (10, 12)).astype(np.float32)  # some wholly or partly outside
  source_x = rng.uniform(-2, 14, (10, 12)).astype(np.float32)
  ours = device_augment.warp(jnp.asarray(values), jnp.asarray(source_y), jnp.asarray(source_x))
  np.testing.assert_allclose(ours, cv2.remap(values, source_x, source_y, cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_CONSTANT, borderValue=0), atol=1e-3)
  for channel in range(3):
    reference = jax.scipy.ndimage.map_coordinates(values[..., channel], [source_y, source_x], order=1,
                                                  mode="constant", cval=0.0)
    np.testing.assert_allclose(ours[..., channel], reference, atol=1e-3)


def test_same_key_and_index_give_the_same_sample():
  cfg = _config("distortions", distortion_probability=1.0, affine_probability=1.0)
  fn = jax.jit(device_augment.make(cfg))
  images, masks = _blob_batch(8, channels=3)
  index = jnp.arange(100, 108)
  a = fn(jax.random.key(4), images, masks, index)
  b = fn(jax.random.key(4), images, masks, index)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # Neither the batch size nor the row matters: rows 5 and 2 alone, swapped.
  rows = jnp.array([5, 2])
  part = fn(jax.random.key(4), images[rows], masks[rows], index[rows])
  for x, y in zip(part, a):
    np.testing.assert_array_equal(x, y[rows])
  other = fn(jax.random.key(5), images, masks, index)
  assert not np.array_equal(other[0], a[0])


def test_eight_devices_give_what_one_gives():
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  data = NamedSharding(mesh, PartitionSpec("data"))
  images, masks = _blob_batch(16, channels=3)
  index = jnp.arange(16)
  fn = device_augment.make(_config("nnunet", **{p: 0.5 for p in _PROBABILITIES}))
  key = jax.random.key(6)
  single = jax.jit(fn)(key, images, masks, index)
  sharded_fn = jax.jit(fn, in_shardings=(NamedSharding(mesh, PartitionSpec()), data, data, data),
                       out_shardings=(data, data))
  sharded = sharded_fn(key, *jax.device_put((images, masks, index), data))
  assert sharded[0].sharding.spec == PartitionSpec("data")
  # Equal up to float rounding: XLA fuses the 2-row shards differently.
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(sharded[1], single[1])
