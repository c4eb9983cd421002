import json
import shutil
import zipfile

import numpy as np
import pytest
import tifffile

from lgg_jax import baselines
from lgg_jax.data import builder, kaggle, synthetic
from conftest import REAL_DATA, require


def test_synthetic_layout_matches_published_dataset(tiny_dataset, tiny_spec):
  patients = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())
  assert len(patients) == tiny_spec.num_patients
  header = (tiny_dataset / "data.csv").read_text().splitlines()[0].split(",")
  assert tuple(header) == synthetic.CLINICAL_COLUMNS and len(header) == 18
  slices = kaggle.list_slices(kaggle.open_source(tiny_dataset))
  image = tifffile.imread(tiny_dataset / slices[0].image_path)
  mask = tifffile.imread(tiny_dataset / slices[0].mask_path)
  assert image.shape == (256, 256, 3) and image.dtype == np.uint8
  assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
  compressions = {tifffile.TiffFile(tiny_dataset / s.image_path).pages[0].compression.name for s in slices}
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


def test_builder_round_trip_equals_tiffs_in_patient_and_slice_order(tiny_dataset, tmp_path):
  b = builder.build(tiny_dataset.parent, tmp_path / "tfds")
  source = b.as_data_source("slices")
  listed = kaggle.list_slices(kaggle.open_source(tiny_dataset))  # folders sorted, slices 1..N
  assert len(source) == len(listed)
  for i, s in enumerate(listed):
    ex = source[i]
    assert (ex["patient_id"].decode(), int(ex["slice_index"])) == (s.patient_id, s.index)
    mask = tifffile.imread(tiny_dataset / s.mask_path)
    np.testing.assert_array_equal(ex["image"], tifffile.imread(tiny_dataset / s.image_path))
    np.testing.assert_array_equal(ex["mask"][..., 0], mask)
    assert bool(ex["has_tumor"]) == bool(mask.any())


def test_builder_round_trip_on_two_real_patients_in_order(tmp_path):
  require(REAL_DATA, "../shared/data/lgg_dev")
  src = tmp_path / "kaggle_3m"
  src.mkdir()
  for p in sorted(p for p in REAL_DATA.iterdir() if p.is_dir())[:2]:
    shutil.copytree(p, src / p.name)
  shutil.copy(REAL_DATA / "data.csv", src / "data.csv")
  b = builder.build(src, tmp_path / "tfds")
  source = b.as_data_source("slices")
  slices = {(s.patient_id, s.index): s for s in kaggle.list_slices(kaggle.open_source(src))}
  assert len(source) == len(slices) > 20
  assert [(source[i]["patient_id"].decode(), int(source[i]["slice_index"])) for i in range(len(source))] == \
      sorted(slices)
  for i in range(len(source)):
    ex = source[i]
    s = slices[(ex["patient_id"].decode(), int(ex["slice_index"]))]
    np.testing.assert_array_equal(ex["image"], tifffile.imread(src / s.image_path))
    np.testing.assert_array_equal(ex["mask"][..., 0], tifffile.imread(src / s.mask_path))
    assert json.loads(ex["clinical"])["Patient"] == s.patient_id[:12]


def test_symlinked_patient_folders_read_like_copied_ones(tiny_dataset, tmp_path):
  """A sub-cohort assembled from links (e.g. one fold's patients) lists the same slices."""
  linked = tmp_path / "kaggle_3m"
  linked.mkdir()
  for entry in tiny_dataset.iterdir():
    (linked / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
  copied, links = (kaggle.list_slices(kaggle.open_source(d)) for d in (tiny_dataset, linked))
  assert links == copied and len(links) > 0
  assert kaggle.open_source(linked).fingerprint() == kaggle.open_source(tiny_dataset).fingerprint()


def _copy(src, dst):
  shutil.copytree(src, dst / "kaggle_3m")
  return dst / "kaggle_3m"


@pytest.mark.parametrize("breakage,message", [
    ("missing_mask", "no mask"),
    ("truncated", "unreadable TIFF"),
    ("bad_mask_values", "mask values must be 0 or 255"),
    ("wrong_shape", "shape"),
    ("gap", "slice numbers"),
    ("wrong_dtype", "dtype uint16"),
    ("duplicate", "duplicate slice number 2"),
    ("empty_patient", "empty patient folder"),
])
def test_broken_input_names_the_file_and_writes_nothing(tiny_dataset, tmp_path, breakage, message):
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[1]
  image, mask = patient / f"{patient.name}_2.tif", patient / f"{patient.name}_2_mask.tif"
  culprit = {"missing_mask": image, "truncated": image, "bad_mask_values": mask,
             "wrong_shape": image, "gap": patient, "wrong_dtype": image,
             "duplicate": patient / f"{patient.name}_02.tif", "empty_patient": root / "TCGA_XX_0000_20000101"}[breakage]
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
  elif breakage == "wrong_dtype":
    tifffile.imwrite(image, np.zeros((256, 256, 3), np.uint16))
  elif breakage == "duplicate":
    shutil.copy(image, culprit)
  elif breakage == "empty_patient":
    culprit.mkdir()
  with pytest.raises(kaggle.DataError, match=message) as err:
    builder.build(root, tmp_path / "tfds")
  assert str(culprit) in str(err.value)
  written = [p for p in (tmp_path / "tfds").rglob("*.array_record*")]
  assert written == []


def test_a_failure_while_writing_leaves_nothing_and_spares_a_concurrent_build(
    tiny_dataset, tmp_path, monkeypatch):
  """tfds removes its own `incomplete.*` folder; another build's must survive."""
  data_dir = tmp_path / "tfds"
  root = data_dir / kaggle.open_source(tiny_dataset).fingerprint()
  concurrent = root / "lgg" / "incomplete.other_build"
  concurrent.mkdir(parents=True)
  encode, calls = builder._png, []

  def fail_on_the_fifth(array):
    calls.append(1)
    if len(calls) == 5:
      raise OSError("disk full")
    return encode(array)

  monkeypatch.setattr(builder, "_png", fail_on_the_fifth)
  with pytest.raises(OSError, match="disk full"):
    builder.build(tiny_dataset, data_dir)
  assert concurrent.is_dir()
  leftovers = [p for p in root.rglob("*") if p != concurrent and p.name.startswith("incomplete")]
  assert leftovers == [] and list(root.rglob("*.array_record*")) == []
  monkeypatch.setattr(builder, "_png", encode)
  assert _records(builder.build(tiny_dataset, data_dir))


def test_a_mask_edited_in_place_at_the_same_size_is_prepared_again(tiny_dataset, tmp_path):
  """The cache was keyed on file names and sizes: an edited mask of the same
  size (an uncompressed one always is) silently reused the stale copy."""
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[0]  # written uncompressed
  mask_path = patient / f"{patient.name}_1_mask.tif"
  before = builder.build(root, tmp_path / "tfds")
  old_mask = tifffile.imread(mask_path)
  new_mask = np.zeros_like(old_mask)
  new_mask[100:140, 90:150] = 255
  assert not np.array_equal(new_mask, old_mask)
  size = mask_path.stat().st_size
  tifffile.imwrite(mask_path, new_mask)
  assert mask_path.stat().st_size == size
  after = builder.build(root, tmp_path / "tfds")
  assert after.data_dir != before.data_dir
  record = after.as_data_source("slices")[0]
  assert (record["patient_id"].decode(), int(record["slice_index"])) == (patient.name, 1)
  np.testing.assert_array_equal(record["mask"][..., 0], new_mask)
  assert bool(record["has_tumor"])


def _zip_folder(folder, archive, top="lgg-mri-segmentation"):
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
    for f in sorted(folder.rglob("*")):
      z.write(f, f"{top}/kaggle_3m/{f.relative_to(folder)}")
  return archive


def _records(builder_):
  """Every record in record order (which is (patient, slice) order)."""
  source = builder_.as_data_source("slices")
  return [(ex["patient_id"], int(ex["slice_index"]), ex["image"].tobytes(), ex["mask"].tobytes(),
           ex["clinical"]) for ex in (source[i] for i in range(len(source)))]


def test_zip_archive_and_enclosing_folder_give_the_same_dataset(tiny_dataset, tmp_path):
  from_folder = builder.build(tiny_dataset, tmp_path / "a")
  (tmp_path / "download").mkdir()
  _zip_folder(tiny_dataset, tmp_path / "download" / "archive.zip")
  from_zip = builder.build(tmp_path / "download", tmp_path / "b")
  assert _records(from_zip) == _records(from_folder)
  nested = tmp_path / "outer" / "lgg-mri-segmentation"
  shutil.copytree(tiny_dataset, nested / "kaggle_3m")
  assert _records(builder.build(tmp_path / "outer", tmp_path / "c")) == _records(from_folder)


def test_zip_without_kaggle_3m_is_refused(tmp_path):
  archive = tmp_path / "dl" / "wrong.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("something/else.txt", "x")
  with pytest.raises(kaggle.DataError, match="wrong.zip: the zip archive holds no kaggle_3m"):
    builder.build(archive.parent, tmp_path / "tfds")


def test_a_zip_from_macos_finder_reads_like_a_plain_one(tiny_dataset, tmp_path):
  """Finder adds __MACOSX/kaggle_3m/.../._* stubs, and "__MACOSX/" sorted
  first: the build read the stubs and refused them as bad file names."""
  plain = kaggle.list_slices(kaggle.open_source(_zip_folder(tiny_dataset, tmp_path / "plain.zip", top="x")))
  archive = tmp_path / "mac" / "kaggle_3m.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as z:
    for f in sorted(tiny_dataset.rglob("*")):
      relative = f.relative_to(tiny_dataset).as_posix()
      z.write(f, f"kaggle_3m/{relative}")
      if f.is_file():
        z.writestr(f"__MACOSX/kaggle_3m/{f.parent.relative_to(tiny_dataset).as_posix()}/._{f.name}", b"stub")
    z.writestr("kaggle_3m/.DS_Store", b"finder")
  source = kaggle.open_source(archive.parent)
  assert source._prefix == "kaggle_3m/"
  assert [(s.patient_id, s.index) for s in kaggle.list_slices(source)] == [(s.patient_id, s.index) for s in plain]


def test_hidden_files_are_skipped(tiny_dataset, tmp_path):
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
  (patient / ".DS_Store").write_bytes(b"finder")
  (patient / f"._{patient.name}_1.tif").write_bytes(b"stub")
  (root / ".ipynb_checkpoints").mkdir()
  (root / ".ipynb_checkpoints" / "data-checkpoint.csv").write_text("x")
  assert kaggle.list_slices(kaggle.open_source(root)) == kaggle.list_slices(kaggle.open_source(tiny_dataset))


def test_the_top_kaggle_3m_is_read_and_two_at_one_depth_are_refused(tiny_dataset, tmp_path, caplog):
  """rglob's sorted first was data/dev_subset/kaggle_3m over data/kaggle_3m."""
  data = tmp_path / "data"
  shutil.copytree(tiny_dataset, data / "kaggle_3m")
  subset = data / "dev_subset" / "kaggle_3m"
  subset.mkdir(parents=True)
  first = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
  shutil.copytree(first, subset / first.name)
  with caplog.at_level("WARNING"):
    assert kaggle.open_source(data).location == data / "kaggle_3m"
  assert str(subset) in caplog.text
  shutil.move(data / "kaggle_3m", data / "b" / "kaggle_3m")
  with pytest.raises(kaggle.DataError, match=r"2 kaggle_3m/ folders at the same depth.*dev_subset"):
    kaggle.open_source(data)


def test_a_tiff_outside_the_patient_folders_is_refused(tiny_dataset, tmp_path):
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
  shutil.copy(patient / f"{patient.name}_1.tif", root / f"{patient.name}_99.tif")
  with pytest.raises(kaggle.DataError, match=f"{patient.name}_99.tif: a TIFF outside any patient folder"):
    kaggle.list_slices(kaggle.open_source(root))


def test_numbering_from_zero_names_the_unexpected_number(tiny_dataset, tmp_path):
  root = _copy(tiny_dataset, tmp_path / "src")
  patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
  last = max(int(f.stem.split("_")[-1]) for f in patient.glob("*[0-9].tif"))
  for suffix in ("", "_mask"):
    (patient / f"{patient.name}_{last}{suffix}.tif").rename(patient / f"{patient.name}_0{suffix}.tif")
  with pytest.raises(kaggle.DataError, match=r"missing \[\], unexpected \[0\]"):
    kaggle.list_slices(kaggle.open_source(root))


@pytest.mark.parametrize("content, message", [
    ("Name,RNASeqCluster\nTCGA_CS_4941,1\n".encode(), r"data.csv: no Patient column"),
    ("Patient,Note\nTCGA_CS_4941,caf\xe9\n".encode("latin-1"), r"data.csv: not a UTF-8 CSV table"),
])
def test_a_bad_clinical_table_is_an_error_naming_it(tiny_dataset, tmp_path, content, message):
  root = _copy(tiny_dataset, tmp_path / "src")
  (root / "data.csv").write_bytes(content)
  with pytest.raises(kaggle.DataError, match=message) as err:
    builder.build(root, tmp_path / "tfds")
  assert str(root / "data.csv") in str(err.value)


def test_clinical_table_mismatches_are_warned(tiny_dataset, tmp_path, caplog):
  root = _copy(tiny_dataset, tmp_path / "src")
  lines = (root / "data.csv").read_text().splitlines()
  (root / "data.csv").write_text("\n".join(lines[:-1] + ["TCGA_ZZ_9999" + "," * 17]) + "\n")
  with caplog.at_level("WARNING"):
    b = builder.build(root, tmp_path / "tfds")
  text = caplog.text
  assert "has images but no row" in text and "TCGA_ZZ_9999 has a row but no images" in text
  rows = {json.loads(ex["clinical"]).get("Patient") for ex in
          (b.as_data_source("slices")[i] for i in range(len(b.as_data_source("slices"))))}
  assert None in rows  # the patient without a row gets an empty record, not dropped


def _meta(builder_):
  import tensorflow_datasets as tfds
  source = builder_.as_data_source("slices", decoders={"image": tfds.decode.SkipDecoding(),
                                                       "mask": tfds.decode.SkipDecoding()})
  return [source[i] for i in range(len(source))]


@pytest.mark.slow
def test_real_dataset_counts_and_zip_equivalence(real_builder, tmp_path):
  records = _meta(real_builder)
  assert len({r["patient_id"] for r in records}) == 62
  assert len(records) == 2121
  assert sum(bool(r["has_tumor"]) for r in records) == 769
  # The same patients from a download's zip: four of them (with data.csv) hold every real file
  # kind, at a tenth of the cost of zipping all 62.
  subset = tmp_path / "subset"
  patients = sorted(p.name.encode() for p in REAL_DATA.iterdir() if p.is_dir())[::20]
  for name in patients:
    shutil.copytree(REAL_DATA / name.decode(), subset / name.decode())
  for extra in (p for p in REAL_DATA.iterdir() if p.is_file()):
    shutil.copy(extra, subset / extra.name)
  (tmp_path / "dl").mkdir()
  _zip_folder(subset, tmp_path / "dl" / "lgg.zip")
  zipped = _meta(builder.build(tmp_path / "dl", tmp_path / "tfds_zip"))
  fields = ("patient_id", "slice_index", "image", "mask", "clinical")
  assert {r["patient_id"] for r in zipped} == set(patients)
  assert [tuple(r[k] for k in fields) for r in zipped] == \
      [tuple(r[k] for k in fields) for r in records if r["patient_id"] in patients]


def _assert_every_patient_in_slice_order(data, indices):
  ids, slices = data.patient_ids[indices], data.slice_index[indices]
  for patient in np.unique(ids):
    numbers = slices[ids == patient]
    assert (np.diff(numbers) > 0).all(), (patient, numbers[:10])
    np.testing.assert_array_equal(data.records(patient), indices[ids == patient])


def _assert_volumes_in_order(data, patients, source_root):
  for patient in patients:
    volume, truth = data.volume(patient)
    for k in (0, len(volume) // 2, len(volume) - 1):  # slice k of the volume is file k+1
      name = source_root / patient / f"{patient}_{k + 1}"
      np.testing.assert_array_equal(volume[k], tifffile.imread(f"{name}.tif"))
      np.testing.assert_array_equal(truth[k], tifffile.imread(f"{name}_mask.tif") > 0)


def test_synthetic_records_and_volumes_come_in_slice_order(tiny_dataset, tmp_path):
  from conftest import tiny_config
  from lgg_jax.data import pipeline
  data = pipeline.load(tiny_config(tmp_path, manual_dir=tiny_dataset.parent))
  assert data.version == "1.1.0"
  for name in ("train", "val", "test"):
    _assert_every_patient_in_slice_order(data, getattr(data.split, name))
  _assert_volumes_in_order(data, data.patients(data.split.test), tiny_dataset)
  res = pipeline.resident(data, data.split.train, tiny_config(tmp_path).data)
  _assert_every_patient_in_slice_order(data, res.records)


@pytest.mark.slow
def test_real_records_and_volumes_come_in_slice_order(real_data):
  """Before version 1.1.0 every one of the 62 patients read out of order
  (TCGA_DU_7294_19890104: 13, 22, 6, 15, 29, 12, ...)."""
  assert real_data.version == "1.1.0"
  for name in ("train", "val", "test"):
    _assert_every_patient_in_slice_order(real_data, getattr(real_data.split, name))
  _assert_volumes_in_order(real_data, ["TCGA_DU_7294_19890104"] + real_data.patients(real_data.split.val)[:2],
                           REAL_DATA)
