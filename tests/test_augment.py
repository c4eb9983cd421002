import pathlib
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import default  # noqa: E402
from lgg_jax.data import augment  # noqa: E402


def _config(name):
  cfg = default.get_config().augment
  cfg.name = name
  return cfg


def _blob_example(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 40, (256, 256, 3)).astype(np.uint8)
  yy, xx = np.mgrid[:256, :256]
  blob = (yy - 90) ** 2 / 30**2 + (xx - 160) ** 2 / 20**2 < 1
  image[blob] = 230
  return {"image": image, "mask": np.where(blob, 255, 0).astype(np.uint8)}


def test_configured_transforms_use_only_valid_arguments():
  # albumentations 2.x only warns ("not valid") about removed arguments and
  # ignores them; here any such warning fails the test.
  for name in ("seed", "distortions"):
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      augment.build_compose(_config(name))


@pytest.mark.parametrize("name", ["flips", "seed", "distortions"])
def test_mask_stays_binary_and_aligned_with_the_image(name):
  fn = augment.make(_config(name))
  changed = 0
  for i in range(12):
    ex = _blob_example(i)
    out = fn(ex, np.random.default_rng(i))
    assert out["image"].shape == ex["image"].shape and out["mask"].shape == ex["mask"].shape
    assert set(np.unique(out["mask"])) <= {0, 255}
    m = out["mask"] > 0
    assert m.sum() > 0.5 * (ex["mask"] > 0).sum()
    # The mask still covers the bright blob: bright inside, dark outside.
    assert out["image"][m].mean() > 200
    assert out["image"][~m].mean() < 60
    changed += not np.array_equal(out["mask"], ex["mask"])
  assert changed >= 4  # the transforms really do something


def test_augmentation_is_reproducible_for_a_seed():
  fn = augment.make(_config("distortions"))
  ex = _blob_example()
  a = fn(ex, np.random.default_rng(5))
  b = fn(ex, np.random.default_rng(5))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["mask"], b["mask"])
  others = [fn(ex, np.random.default_rng(s))["image"] for s in range(6, 10)]
  assert any(not np.array_equal(o, a["image"]) for o in others)


def test_unknown_augmentation_is_named():
  with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
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
