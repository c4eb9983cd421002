import warnings

import numpy as np
import pytest

from configs import default
from lgg_jax.data import albumentations_sets, augment


def _config(name):
  cfg = default.get_config().augment
  cfg.name = name
  return cfg


def _blob_example(seed=0, channels=3):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 40, (256, 256, channels)).astype(np.uint8)
  yy, xx = np.mgrid[:256, :256]
  blob = (yy - 90) ** 2 / 30**2 + (xx - 160) ** 2 / 20**2 < 1
  image[blob] = 230
  return {"image": image, "mask": np.where(blob, 255, 0).astype(np.uint8)}


_PROBABILITIES = ("flip_probability", "rotate90_probability", "transpose_probability",
                  "affine_probability", "distortion_probability", "brightness_probability",
                  "contrast_probability", "gamma_probability", "noise_probability", "blur_probability")


def test_configured_transforms_use_only_valid_arguments():
  # albumentations 2.x only warns ("not valid") about removed arguments and
  # ignores them; here any such warning (also one raised when applied) fails.
  for name in ("seed", "distortions", "nnunet"):
    cfg = _config(name)
    for probability in _PROBABILITIES:
      cfg[probability] = 1.0
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      albumentations_sets.build_compose(cfg, seed=0)(**_blob_example(channels=9))


@pytest.mark.parametrize("channels", [3, 9])
@pytest.mark.parametrize("name", ["flips", "seed", "distortions", "nnunet"])
def test_mask_stays_binary_and_aligned_with_the_image(name, channels):
  fn = augment.make(_config(name))
  changed = 0
  for i in range(12):
    ex = _blob_example(i, channels)
    out = fn(ex, np.random.default_rng(i))
    assert out["image"].shape == ex["image"].shape and out["mask"].shape == ex["mask"].shape
    assert out["image"].dtype == np.uint8
    assert set(np.unique(out["mask"])) <= {0, 255}
    m = out["mask"] > 0
    assert m.sum() > 0.5 * (ex["mask"] > 0).sum()
    # The mask still covers the bright blob: bright inside, dark outside.
    if name == "nnunet":  # its intensity transforms move both levels
      assert np.percentile(out["image"][m], 10) > np.percentile(out["image"][~m], 90) + 50
    else:
      assert out["image"][m].mean() > 200
      assert out["image"][~m].mean() < 60
    changed += not np.array_equal(out["mask"], ex["mask"])
  assert changed >= 4  # the transforms really do something


@pytest.mark.parametrize("name", ["flips", "seed", "distortions", "nnunet"])
def test_all_channels_get_the_same_transform(name):
  # Geometry and every intensity parameter are shared by all channels (2.5-D
  # channels are neighbouring slices; albumentations runs cv2 on chunks of
  # four channels with the same parameters). Only Gaussian noise is drawn
  # per channel, as in nnU-Net, so it is off here.
  cfg = _config(name)
  for probability in _PROBABILITIES:
    cfg[probability] = 1.0
  cfg.noise_probability = 0.0
  fn = augment.make(cfg)
  for i in range(12):  # the distortions set picks one of three per draw
    ex = _blob_example(i, channels=1)
    ex["image"] = np.repeat(ex["image"], 9, axis=-1)
    out = fn(ex, np.random.default_rng(i))["image"]
    np.testing.assert_array_equal(out, np.repeat(out[..., :1], 9, axis=-1))


def test_nnunet_noise_is_independent_per_channel():
  cfg = _config("nnunet")
  for probability in _PROBABILITIES:
    cfg[probability] = 0.0
  cfg.noise_probability = 1.0
  ex = _blob_example(channels=1)
  ex["image"] = np.repeat(ex["image"], 9, axis=-1)
  out = augment.make(cfg)(ex, np.random.default_rng(0))["image"].astype(np.int16)
  noise = out - ex["image"]
  assert noise.std() > 0 and not np.array_equal(noise[..., 0], noise[..., 1])


def test_contrast_scales_each_channel_around_its_mean():
  image = np.dstack([np.full((4, 4), 100, np.uint8), np.tile([[40, 60]], (4, 2)).astype(np.uint8)])
  out = albumentations_sets.ContrastAroundMean(limit=0.5, p=1.0).apply(image, factor=1.5)
  np.testing.assert_array_equal(out[..., 0], 100)
  np.testing.assert_array_equal(out[..., 1], np.tile([[35, 65]], (4, 2)))


def test_augmentation_is_reproducible_for_a_seed():
  fn = augment.make(_config("distortions"))
  ex = _blob_example()
  a = fn(ex, np.random.default_rng(5))
  b = fn(ex, np.random.default_rng(5))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["mask"], b["mask"])
  others = [fn(ex, np.random.default_rng(s))["image"] for s in range(6, 10)]
  assert any(not np.array_equal(o, a["image"]) for o in others)


def test_transforms_of_a_set_draw_independently():
  # Compose(seed=s) in albumentations 2.0.8 gave every transform the same
  # random stream: hflip and vflip (same probability) always came together.
  cfg = _config("seed")
  for probability in _PROBABILITIES:
    cfg[probability] = 0.0
  cfg.flip_probability = 0.5
  image = np.arange(16, dtype=np.uint8).reshape(4, 4)
  outcomes = {"none": image, "h": image[:, ::-1], "v": image[::-1], "hv": image[::-1, ::-1]}
  seen = {name: 0 for name in outcomes}
  for seed in range(200):
    out = albumentations_sets.build_compose(cfg, seed=seed)(image=image)["image"]
    seen[next(name for name, expected in outcomes.items() if np.array_equal(out, expected))] += 1
  assert min(seen.values()) >= 30, seen


def test_unknown_augmentation_is_named():
  with pytest.raises(ValueError, match="config.augment.name: unknown value 'mixup'"):
    augment.make(_config("mixup"))


def test_exploration_writes_every_figure(tmp_path, tiny_dataset):
  from lgg_jax import explore
  config = default.get_config()
  config.data.manual_dir = str(tiny_dataset)
  config.data.data_dir = str(tmp_path / "cache")
  written = {p.name for p in explore.explore(config, tmp_path / "out")}
  expected = {"diagnosis_counts.png", "patient_counts.png", "samples.png", "overlay_single.png",
              "overlay_grid.png", "augmentations.png", "clinical_summary.md", "clinical_summary.csv"}
  assert expected <= written
  for name in expected:
    assert (tmp_path / "out" / name).stat().st_size > 500
  assert "age_at_initial_pathologic" in (tmp_path / "out" / "clinical_summary.md").read_text()
