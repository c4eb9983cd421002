"""Users' own NIfTI scans in predict's readers, as a new user brings them: one
FLAIR file, a folder missing a sequence, BraTS names, a 4-D channel stack, and
shapes that cannot be read. No model is needed: only `find_cases`."""

import logging

import nibabel as nib
import numpy as np
import pytest
import tifffile

from lgg_jax import predict
from lgg_jax.data.kaggle import DataError

SHAPE = (16, 16, 4)  # (x, y, z): 4 axial slices, each resized to 256x256


def _save(path, data, affine=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
  return path


def _constant(value):
  """uint8 volumes are taken as they are: a constant one gives a constant channel."""
  return np.full(SHAPE, value, np.uint8)


def _channel_values(case):
  assert case.images.shape == (SHAPE[2], 256, 256, 3) and case.images.dtype == np.uint8
  values = []
  for c in range(3):
    channel = case.images[..., c]
    assert channel.min() == channel.max(), f"channel {c} is not constant"
    values.append(int(channel[0, 0, 0]))
  return values


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_one_flair_file_fills_every_channel_and_says_so(tmp_path, caplog):
  path = _save(tmp_path / "flair.nii.gz", _constant(90))
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(path)
  assert case.name == "flair" and case.truth is None
  assert _channel_values(case) == [90, 90, 90]
  assert case.nifti is not None and case.nifti.shape == SHAPE
  [message] = _warnings(caplog)
  assert str(path) in message and "pre-contrast" in message and "post-contrast" in message and "FLAIR" in message


def test_one_float_volume_is_scaled_and_taken_as_flair(tmp_path, caplog):
  volume = np.random.default_rng(0).uniform(0, 1000, SHAPE).astype(np.float32)
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(_save(tmp_path / "brain.nii", volume))
  assert case.name == "brain"
  np.testing.assert_array_equal(case.images[..., 0], case.images[..., 1])
  np.testing.assert_array_equal(case.images[..., 2], case.images[..., 1])
  assert len(_warnings(caplog)) == 1
  # Linear, with the 99.99th percentile where the published slices hold theirs, and
  # a few hot voxels (here 100 times the rest) neither darken the volume nor stay unclipped.
  top = np.percentile(volume, 99.99)
  np.testing.assert_allclose(predict._scale(volume).astype(float), volume / top * predict.PUBLISHED_P9999, atol=0.5)
  assert abs(np.percentile(case.images, 99.99) - predict.PUBLISHED_P9999) <= 2
  larger = np.random.default_rng(1).uniform(0, 1000, (64, 64, 32)).astype(np.float32)  # 131,072 voxels
  hot = larger.copy()
  hot[0, 0, :4] = 1e5
  np.testing.assert_allclose(predict._scale(hot)[4:], predict._scale(larger)[4:], atol=1)  # the percentile moves a hair
  assert predict._scale(hot)[0, 0, :4].tolist() == [255] * 4


def test_a_folder_with_only_flair_fills_every_channel_and_says_so(tmp_path, caplog):
  _save(tmp_path / "patient" / "patient_flair.nii.gz", _constant(70))
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(tmp_path / "patient")
  assert case.name == "patient" and _channel_values(case) == [70, 70, 70]
  [message] = _warnings(caplog)
  assert "patient_flair.nii.gz" in message and "pre-contrast" in message and "post-contrast" in message


@pytest.mark.parametrize("missing,expected", [("pre", [60, 60, 30]), ("post", [10, 60, 60])])
def test_a_folder_missing_one_sequence_gets_flair_there_and_says_which(tmp_path, caplog, missing, expected):
  values = {"pre": 10, "flair": 60, "post": 30}
  for role in ("pre", "flair", "post"):
    if role != missing:
      _save(tmp_path / "case" / f"case_{role}.nii.gz", _constant(values[role]))
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(tmp_path / "case")
  assert _channel_values(case) == expected
  [message] = _warnings(caplog)
  assert f"{missing}-contrast" in message and "case_flair.nii.gz" in message
  assert {"pre": "post-contrast", "post": "pre-contrast"}[missing] not in message


def test_named_volumes_and_a_mask_are_read_without_warnings(tmp_path, caplog):
  for role, value in (("pre", 10), ("flair", 60), ("post", 30)):
    _save(tmp_path / "p" / f"p_{role}.nii.gz", _constant(value))
  mask = np.zeros(SHAPE, np.uint8)
  mask[4:8, 4:8, 1] = 1
  _save(tmp_path / "p" / "p_mask.nii.gz", mask)
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(tmp_path / "p")
  assert _channel_values(case) == [10, 60, 30]
  assert case.truth is not None and case.truth.any(axis=(1, 2)).sum() == 1
  assert _warnings(caplog) == []


@pytest.mark.parametrize("post_name", ["t1ce", "t1gd", "T1CE"])
def test_brats_names_take_their_roles_and_t2_is_ignored_aloud(tmp_path, caplog, post_name):
  folder = tmp_path / "BraTS20_Training_001"
  _save(folder / "BraTS20_Training_001_t1.nii.gz", _constant(10))
  _save(folder / f"BraTS20_Training_001_{post_name}.nii.gz", _constant(30))
  _save(folder / "BraTS20_Training_001_flair.nii.gz", _constant(60))
  t2 = _save(folder / "BraTS20_Training_001_t2.nii.gz", _constant(200))
  brain = _save(folder / "BraTS20_Training_001_brain_mask.nii.gz", np.ones(SHAPE, np.float32))  # not the truth
  seg = np.zeros(SHAPE, np.float32)
  seg[2:6, 2:6, 1], seg[8:10, 8:10, 2], seg[12:14, 2:4, 3] = 1, 2, 4  # BraTS labels: any > 0 is tumour
  _save(folder / "BraTS20_Training_001_seg.nii.gz", seg)
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(folder)
  assert _channel_values(case) == [10, 60, 30]  # t1 -> pre-contrast, t1ce -> post-contrast, not the other way
  assert case.truth is not None
  assert [bool(s.any()) for s in case.truth] == [False, True, True, True]
  t2_message, brain_message = sorted(_warnings(caplog), key=lambda m: "brain mask" in m)
  assert str(t2) in t2_message and "ignored" in t2_message
  assert str(brain) in brain_message and "brain mask ignored" in brain_message


def test_brats_2023_names_take_their_roles(tmp_path, caplog):
  folder = tmp_path / "BraTS-GLI-00000-000"
  for suffix, value in (("t1n", 10), ("t2f", 60), ("t1c", 30), ("t2w", 200)):
    _save(folder / f"BraTS-GLI-00000-000-{suffix}.nii.gz", _constant(value))
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(folder)
  assert _channel_values(case) == [10, 60, 30]
  [message] = _warnings(caplog)
  assert "t2w.nii.gz" in message and "ignored" in message


def test_a_4d_volume_holds_pre_flair_post_in_that_order(tmp_path, caplog):
  stack = np.stack([_constant(10), _constant(60), _constant(30)], axis=-1)
  with caplog.at_level(logging.WARNING):
    [single] = predict.find_cases(_save(tmp_path / "stack.nii.gz", stack))
    _save(tmp_path / "case" / "image.nii.gz", stack)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:3, 1:3, 0] = 1
    _save(tmp_path / "case" / "case_mask.nii.gz", mask)
    [in_folder] = predict.find_cases(tmp_path / "case")
  assert _channel_values(single) == _channel_values(in_folder) == [10, 60, 30]
  assert single.truth is None and [bool(s.any()) for s in in_folder.truth] == [True, False, False, False]
  assert _warnings(caplog) == []


def test_a_4d_float_volume_scales_each_channel_on_its_own(tmp_path):
  rng = np.random.default_rng(1)
  stack = np.stack([rng.uniform(0, top, SHAPE) for top in (10, 1000, 100000)], axis=-1).astype(np.float32)
  [case] = predict.find_cases(_save(tmp_path / "stack.nii.gz", stack))
  assert [round(np.percentile(case.images[..., c], 99.99)) for c in range(3)] == [196] * 3


def test_a_mask_written_for_a_4d_input_has_its_grid_and_affine(tmp_path):
  affine = np.diag([0.5, 0.5, 3.0, 1.0])
  stack = np.stack([_constant(10), _constant(60), _constant(30)], axis=-1)
  [case] = predict.find_cases(_save(tmp_path / "stack.nii.gz", stack, affine))
  pred = np.zeros((SHAPE[2], 256, 256), bool)
  pred[2, :128] = True
  predict.write_nifti_mask(case, pred, tmp_path / "mask.nii.gz")
  mask = nib.load(str(tmp_path / "mask.nii.gz"))
  assert mask.shape == SHAPE
  np.testing.assert_allclose(mask.affine, affine)
  assert np.asarray(mask.dataobj)[..., 2].any() and not np.asarray(mask.dataobj)[..., 1].any()


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 4, 2), (16, 16, 4, 4), (16, 16, 4, 3, 1)])
@pytest.mark.parametrize("where", ["file", "folder"])
def test_other_shapes_are_one_line_errors_naming_shape_and_file(tmp_path, shape, where):
  if where == "file":
    path = _save(tmp_path / "scan.nii.gz", np.zeros(shape, np.uint8))
    target = path
  else:
    _save(tmp_path / "case" / "case_flair.nii.gz", _constant(60))
    path = _save(tmp_path / "case" / "case_post.nii.gz", np.zeros(shape, np.uint8))
    target = tmp_path / "case"
  with pytest.raises(DataError) as error:
    predict.find_cases(target)
  message = str(error.value)
  assert "\n" not in message and str(path) in message and str(shape) in message
  assert "(x, y, z)" in message and "(x, y, z, 3)" in message


def test_one_file_named_for_another_sequence_is_not_taken_as_flair(tmp_path):
  path = _save(tmp_path / "BraTS20_Training_001_t1ce.nii.gz", _constant(30))
  with pytest.raises(DataError, match="FLAIR") as error:
    predict.find_cases(path)
  assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_folder_without_flair_is_an_error_naming_what_it_found(tmp_path):
  _save(tmp_path / "case" / "case_pre.nii.gz", _constant(10))
  _save(tmp_path / "case" / "case_post.nii.gz", _constant(30))
  with pytest.raises(DataError, match="FLAIR") as error:
    predict.find_cases(tmp_path / "case")
  assert "case_pre.nii.gz" in str(error.value) and "case_post.nii.gz" in str(error.value)


def test_two_volumes_for_one_role_are_an_error_naming_both(tmp_path):
  _save(tmp_path / "case" / "a_flair.nii.gz", _constant(60))
  _save(tmp_path / "case" / "b_flair.nii.gz", _constant(61))
  with pytest.raises(DataError) as error:
    predict.find_cases(tmp_path / "case")
  assert "a_flair.nii.gz" in str(error.value) and "b_flair.nii.gz" in str(error.value)
  assert "a folder of its own" in str(error.value)  # two patients' files side by side, most likely


def test_a_4d_stack_beside_separate_sequences_is_an_error(tmp_path):
  _save(tmp_path / "case" / "stack.nii.gz", np.stack([_constant(10)] * 3, axis=-1))
  _save(tmp_path / "case" / "case_flair.nii.gz", _constant(60))
  with pytest.raises(DataError) as error:
    predict.find_cases(tmp_path / "case")
  assert "stack.nii.gz" in str(error.value) and "case_flair.nii.gz" in str(error.value)


def test_a_folder_of_nifti_case_folders_gives_one_case_each(tmp_path):
  _save(tmp_path / "scans" / "a" / "a_flair.nii.gz", _constant(60))
  _save(tmp_path / "scans" / "b" / "b_t1.nii.gz", _constant(10))
  _save(tmp_path / "scans" / "b" / "b_t1ce.nii.gz", _constant(30))
  _save(tmp_path / "scans" / "b" / "b_flair.nii.gz", _constant(50))
  cases = predict.find_cases(tmp_path / "scans")
  assert [c.name for c in cases] == ["a", "b"]
  assert _channel_values(cases[0]) == [60, 60, 60] and _channel_values(cases[1]) == [10, 50, 30]


def test_a_nan_voxel_after_registration_is_zeroed_with_a_warning_not_an_empty_volume(tmp_path, caplog):
  volume = np.random.default_rng(0).uniform(0, 1000, SHAPE).astype(np.float32)
  clean = predict.find_cases(_save(tmp_path / "clean" / "flair.nii.gz", volume))[0]
  volume[3, 4, 1] = np.nan
  volume[5, 5, 2] = np.inf
  path = _save(tmp_path / "nan" / "flair.nii.gz", volume)
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(path)
  assert any(str(path) in m and "2 non-finite voxel(s)" in m for m in _warnings(caplog))
  assert case.images.max() >= predict.PUBLISHED_P9999 and case.images[..., 1].mean() > 0.9 * clean.images[..., 1].mean()


def test_a_float_tiff_slice_is_an_error_naming_the_file(tmp_path):
  folder = tmp_path / "patient"
  folder.mkdir()
  image = np.zeros((256, 256, 3), np.float32)
  image[0, 0, 0] = np.nan
  tifffile.imwrite(folder / "patient_1.tif", image)
  with pytest.raises(DataError, match="patient_1.tif: dtype float32, expected uint8"):
    predict.find_cases(folder)


def test_dot_and_dot_dot_name_the_case_after_their_folder(tmp_path, monkeypatch):
  """`--input=.` once gave a case named "", whose volumes were written to /."""
  folder = tmp_path / "TCGA_XX_0001"
  folder.mkdir()
  tifffile.imwrite(folder / "TCGA_XX_0001_1.tif", np.zeros((256, 256, 3), np.uint8))
  (folder / "sub").mkdir()
  monkeypatch.chdir(folder)
  assert [c.name for c in predict.find_cases(".")] == ["TCGA_XX_0001"]
  monkeypatch.chdir(folder / "sub")
  assert [c.name for c in predict.find_cases("..")] == ["TCGA_XX_0001"]
  with pytest.raises(DataError, match="case name '' .* cannot name an output folder"):
    predict.Case("", ["a"], np.zeros((1, 256, 256, 3), np.uint8), None)


def test_a_patient_folder_without_readable_slices_is_named_not_dropped(tmp_path, caplog):
  for name, suffix in (("TCGA_A", ".tif"), ("TCGA_B", ".jpg"), ("TCGA_C", ".dcm")):
    (tmp_path / name).mkdir()
    if suffix == ".tif":
      tifffile.imwrite(tmp_path / name / f"{name}_1.tif", np.zeros((256, 256, 3), np.uint8))
    else:
      (tmp_path / name / f"{name}_1{suffix}").write_bytes(b"\0")
  (tmp_path / "empty").mkdir()
  with caplog.at_level(logging.WARNING):
    cases = predict.find_cases(tmp_path)
  assert [c.name for c in cases] == ["TCGA_A"]
  skipped = [m for m in _warnings(caplog) if "skipped" in m]
  assert len(skipped) == 2 and "TCGA_B" in skipped[0] and ".jpg" in skipped[0] and ".dcm" in skipped[1]


@pytest.mark.parametrize("name,role", [
    ("t1ce_preop", "post"), ("T1Gd_preop", "post"), ("t1_postop", "pre"), ("sub-01_ses-preop_ce-gd_T1w", "post"),
    ("sub-01_ses-preop_T1w", "pre"), ("FLAIR_masked", "flair"), ("T2_FLAIR", "flair"), ("t1_pre_contrast", "pre"),
    ("T1_post_contrast", "post"), ("case1flair", "flair"), ("brainmask", "brain"), ("tumour_seg", "mask"),
    ("BraTS20_Training_001_t1", "pre"), ("BraTS-GLI-00000-000-t2f", "flair"), ("scan", None)])
def test_roles_come_from_whole_words_of_the_name(name, role):
  assert predict.volume_role(predict.pathlib.Path(f"{name}.nii.gz")) == role


def test_a_name_saying_two_sequences_is_an_error_naming_it():
  with pytest.raises(DataError, match=r"t1_to_flair.nii.gz: its name reads as FLAIR and pre-contrast"):
    predict.volume_role(predict.pathlib.Path("t1_to_flair.nii.gz"))


def test_pre_and_post_operative_scans_keep_their_contrast(tmp_path, caplog):
  """`preop` once made every name pre-contrast: t1ce_preop filled the pre channel."""
  for name, value in (("t1_preop", 10), ("flair_preop", 60), ("t1ce_preop", 30)):
    _save(tmp_path / "case" / f"{name}.nii.gz", _constant(value))
  with caplog.at_level(logging.WARNING):
    [case] = predict.find_cases(tmp_path / "case")
  assert _channel_values(case) == [10, 60, 30] and _warnings(caplog) == []


def test_volumes_on_other_grids_are_an_error_naming_the_file(tmp_path):
  """Same shape, another affine: the mask once overlay nothing (Dice 0, no word)."""
  flipped = np.diag([-1.0, -1.0, 1.0, 1.0])
  _save(tmp_path / "case" / "flair.nii.gz", _constant(60), flipped)
  mask = np.zeros(SHAPE, np.uint8)
  mask[2:6, 2:6, 1] = 1
  _save(tmp_path / "case" / "mask.nii.gz", mask)  # identity affine
  with pytest.raises(DataError, match=r"mask.nii.gz: its voxels lie up to 21.21 mm from flair.nii.gz's"):
    predict.find_cases(tmp_path / "case")
  # On the FLAIR's grid the mask is read; written in another orientation, it is the same grid and the same truth.
  _save(tmp_path / "case" / "mask.nii.gz", mask, flipped)
  [same_affine] = predict.find_cases(tmp_path / "case")
  unflip = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
  _save(tmp_path / "case" / "mask.nii.gz", mask[::-1, ::-1], flipped @ unflip)
  [reoriented] = predict.find_cases(tmp_path / "case")
  assert same_affine.truth.any(axis=(1, 2)).tolist() == [False, True, False, False]
  np.testing.assert_array_equal(reoriented.truth, same_affine.truth)


def test_a_3d_volume_written_with_a_fourth_axis_of_one_is_read(tmp_path):
  [case] = predict.find_cases(_save(tmp_path / "flair.nii.gz", _constant(70)[..., None]))
  assert _channel_values(case) == [70, 70, 70]


def test_uint8_voxels_with_a_scale_in_the_header_are_scaled(tmp_path):
  """The voxels mean up to 398, not the dataset's 0..255: scaled, not wrapped past 255."""
  ramp = (np.arange(np.prod(SHAPE)) % 200).astype(np.uint8).reshape(SHAPE)
  image = nib.Nifti1Image(ramp, np.eye(4))
  image.header.set_slope_inter(2.0, 0.0)
  nib.save(image, str(tmp_path / "flair.nii.gz"))
  [case] = predict.find_cases(tmp_path / "flair.nii.gz")
  assert abs(np.percentile(case.images, 99.99) - predict.PUBLISHED_P9999) <= 2


def test_a_folder_holding_a_case_and_patient_folders_is_an_error(tmp_path):
  """A stray template beside patient folders once became the only case."""
  _save(tmp_path / "cohort" / "template.nii.gz", _constant(60))
  for patient in ("P1", "P2"):
    _save(tmp_path / "cohort" / patient / "flair.nii.gz", _constant(60))
  with pytest.raises(DataError, match=r"cohort: holds a case's own files and patient folders \(P1, P2\)"):
    predict.find_cases(tmp_path / "cohort")


def test_slice_folders_refuse_a_mask_without_its_slice_and_two_files_for_one_slice(tmp_path):
  folder = tmp_path / "P"
  folder.mkdir()
  tifffile.imwrite(folder / "P_1.tif", np.zeros((256, 256, 3), np.uint8))
  tifffile.imwrite(folder / "P_2_mask.tif", np.zeros((256, 256), np.uint8))
  with pytest.raises(DataError, match=r"P_2_mask.tif: a mask without its slice \(expected P_2.tif"):
    predict.find_cases(folder)
  (folder / "P_2_mask.tif").unlink()
  tifffile.imwrite(folder / "P_1.png", np.zeros((256, 256, 3), np.uint8))
  with pytest.raises(DataError, match=r"P_1.png and P_1.tif are both slice P_1"):
    predict.find_cases(folder)


@pytest.mark.parametrize("shape,zooms,box", [
    ((8, 16, 2), (1.0, 1.0, 2.0), (0, 64, 256, 128)),    # narrow in x: centred, not stretched
    ((16, 8, 2), (0.5, 1.0, 2.0), (0, 0, 256, 256)),     # the same mm both ways: fills the canvas
    ((32, 16, 2), (1.0, 1.0, 2.0), (64, 0, 128, 256)),   # short in y (rows)
])
def test_a_grid_keeps_its_proportions_in_mm_and_the_written_mask_is_the_input(tmp_path, shape, zooms, box):
  """A head scanned on a 176x256 grid reached the model narrowed to 256x256."""
  x, y = np.meshgrid(np.arange(shape[0]) * zooms[0], np.arange(shape[1]) * zooms[1], indexing="ij")
  centre = ((shape[0] - 1) * zooms[0] / 2, (shape[1] - 1) * zooms[1] / 2)
  disk = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 3.5 ** 2)
  mask = np.repeat(disk[..., None], shape[2], axis=2).astype(np.uint8)
  affine = np.diag([*zooms, 1.0])
  _save(tmp_path / "case" / "flair.nii.gz", np.full(shape, 100, np.uint8), affine)
  _save(tmp_path / "case" / "mask.nii.gz", mask, affine)
  [case] = predict.find_cases(tmp_path / "case")
  top, left, height, width = box
  assert predict._canvas_box(case.nifti) == box
  lit = case.images[0, ..., 1] > 0
  assert lit[top:top + height, left:left + width].all() and lit.sum() == height * width  # black around
  rows, columns = np.nonzero(case.truth[0])
  voxel_on_canvas = max(height / shape[1], width / shape[0])  # display rows are y, columns x
  assert abs(np.ptp(rows) - np.ptp(columns)) <= voxel_on_canvas * 1.01  # a disk stays round, to a voxel
  predict.write_nifti_mask(case, case.truth, tmp_path / "written.nii.gz")
  np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "written.nii.gz")).dataobj), mask)
  true_ml = mask.sum() * np.prod(zooms) / 1000
  np.testing.assert_allclose(case.truth.sum() * predict.voxel_ml(case), true_ml, rtol=0.15)
