import shutil

import numpy as np
import pytest
import tifffile

from lgg_jax import baselines
from lgg_jax.data import builder, kaggle, synthetic
from conftest import REAL_DATA


def test_synthetic_layout_matches_published_dataset(tiny_dataset, tiny_spec):
  patients = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())
  assert len(patients) == tiny_spec.num_patients
  header = (tiny_dataset / "data.csv").read_text().splitlines()[0].split(",")
  assert tuple(header) == synthetic.CLINICAL_COLUMNS and len(header) == 18
  slices = kaggle.list_slices(tiny_dataset)
  image = tifffile.imread(slices[0].image_path)
  mask = tifffile.imread(slices[0].mask_path)
  assert image.shape == (256, 256, 3) and image.dtype == np.uint8
  assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
  compressions = {tifffile.TiffFile(s.image_path).pages[0].compression.name for s in slices}
  assert compressions == {"NONE", "ADOBE_DEFLATE"}  # both forms occur in the wild


def test_synthetic_is_deterministic_and_seeded():
  spec = synthetic.SyntheticSpec(num_patients=2, min_slices=4, max_slices=5, seed=7)
  a_img, a_mask = synthetic.generate_patient(spec, 1)
  b_img, b_mask = synthetic.generate_patient(spec, 1)
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_mask, b_mask)
  other, _ = synthetic.generate_patient(synthetic.SyntheticSpec(2, 4, 5, seed=8), 1)
  assert other.shape != a_img.shape or not np.array_equal(other, a_img)


def test_synthetic_has_realistic_tumour_statistics():
  spec = synthetic.SyntheticSpec(num_patients=12, seed=0)
  volumes, masks = zip(*[synthetic.generate_patient(spec, i) for i in range(12)])
  positive = np.concatenate([m.reshape(len(m), -1).max(1) > 0 for m in masks])
  assert 0.2 < positive.mean() < 0.45           # about a third of slices
  assert all(m.any() for m in masks)            # every patient has tumour
  sizes = [int((m > 0).sum(axis=(1, 2)).max()) for m in masks]
  assert min(sizes) < 400 < max(sizes)          # some tumours are small
  # Positive slices of a patient are consecutive (one body per tumour).
  runs = [np.flatnonzero(m.reshape(len(m), -1).max(1) > 0) for m in masks]
  assert all(r[-1] - r[0] + 1 >= len(r) >= 2 for r in runs)


def test_flair_threshold_alone_does_not_find_synthetic_tumours():
  spec = synthetic.SyntheticSpec(num_patients=10, seed=1)
  volumes, masks = zip(*[synthetic.generate_patient(spec, i) for i in range(10)])
  # Even the threshold fitted on these very patients stays far from a model.
  _, best_dice = baselines.fit_threshold(volumes, masks)
  assert best_dice <= 0.5


def test_builder_round_trip_equals_tiffs(tiny_dataset, tmp_path):
  b = builder.build(tiny_dataset.parent, tmp_path / "tfds")
  source = b.as_data_source("slices")
  slices = {(s.patient_id, s.index): s for s in kaggle.list_slices(tiny_dataset)}
  assert len(source) == len(slices)
  for i in range(len(source)):
    ex = source[i]
    s = slices[(ex["patient_id"].decode(), int(ex["slice_index"]))]
    mask = tifffile.imread(s.mask_path)
    np.testing.assert_array_equal(ex["image"], tifffile.imread(s.image_path))
    np.testing.assert_array_equal(ex["mask"][..., 0], mask)
    assert bool(ex["has_tumor"]) == bool(mask.any())


@pytest.mark.skipif(not REAL_DATA.exists(), reason="../shared/data/lgg_dev is absent")
def test_builder_round_trip_on_two_real_patients(tmp_path):
  src = tmp_path / "kaggle_3m"
  src.mkdir()
  for p in sorted(p for p in REAL_DATA.iterdir() if p.is_dir())[:2]:
    shutil.copytree(p, src / p.name)
  shutil.copy(REAL_DATA / "data.csv", src / "data.csv")
  b = builder.build(src, tmp_path / "tfds")
  source = b.as_data_source("slices")
  slices = {(s.patient_id, s.index): s for s in kaggle.list_slices(src)}
  assert len(source) == len(slices) > 20
  for i in range(len(source)):
    ex = source[i]
    s = slices[(ex["patient_id"].decode(), int(ex["slice_index"]))]
    np.testing.assert_array_equal(ex["image"], tifffile.imread(s.image_path))
    np.testing.assert_array_equal(ex["mask"][..., 0], tifffile.imread(s.mask_path))


def _copy(src, dst):
  shutil.copytree(src, dst / "kaggle_3m")
  return dst / "kaggle_3m"


@pytest.mark.parametrize("breakage,message", [
    ("missing_mask", "no mask"),
    ("truncated", "unreadable TIFF"),
    ("bad_mask_values", "mask values must be 0 or 255"),
    ("wrong_shape", "shape"),
    ("gap", "slice numbers"),
])
def test_broken_input_names_the_file_and_writes_nothing(tiny_dataset, tmp_path, breakage, message):
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[1]
  image, mask = patient / f"{patient.name}_2.tif", patient / f"{patient.name}_2_mask.tif"
  culprit = {"missing_mask": image, "truncated": image, "bad_mask_values": mask,
             "wrong_shape": image, "gap": patient}[breakage]
  if breakage == "missing_mask":
    mask.unlink()
  elif breakage == "truncated":
    image.write_bytes(image.read_bytes()[:300])
  elif breakage == "bad_mask_values":
    tifffile.imwrite(mask, np.full((256, 256), 7, np.uint8))
  elif breakage == "wrong_shape":
    tifffile.imwrite(image, np.zeros((128, 128, 3), np.uint8))
  elif breakage == "gap":
    image.unlink()
    mask.unlink()
  with pytest.raises(kaggle.DataError, match=message) as err:
    builder.build(root, tmp_path / "tfds")
  assert str(culprit) in str(err.value)
  written = [p for p in (tmp_path / "tfds").rglob("*.array_record*")]
  assert written == []
