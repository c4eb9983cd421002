"""Shape features, Fisher tests and the radiogenomics command, on synthetic shapes."""

import csv
import itertools
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats

from lgg_jax.data.kaggle import DataError
from lgg_jax.radiogenomics import cohort, shape, stats

REPO = pathlib.Path(__file__).resolve().parents[1]


def ball(radius: int, margin: int = 2) -> np.ndarray:
  n = 2 * radius + 2 * margin
  centre = (n - 1) / 2
  y, x = np.ogrid[:n, :n]
  mask = np.zeros((n, n, n), bool)
  for s in range(n):  # slice by slice: a 300^3 float grid would need gigabytes
    mask[s] = (s - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 <= radius ** 2
  return mask


def disc(radius: float, size: int = 200, amplitude: float = 0.0, lobes: int = 10, centre=None) -> np.ndarray:
  """A disc whose border is perturbed by a sinusoid of `amplitude` x radius."""
  cy, cx = ((size - 1) / 2,) * 2 if centre is None else centre
  y, x = np.mgrid[:size, :size]
  angle = np.arctan2(y - cy, x - cx)
  return np.hypot(y - cy, x - cx) <= radius * (1 + amplitude * np.sin(lobes * angle))


def blob(rng, shape_=(12, 64, 64)) -> np.ndarray:
  """A random irregular 3-D shape: a union of random ellipsoids."""
  grid = np.indices(shape_).transpose(1, 2, 3, 0)
  mask = np.zeros(shape_, bool)
  for _ in range(rng.integers(1, 5)):
    centre = rng.uniform([3, 16, 16], [9, 48, 48])
    axes = rng.uniform([1, 3, 3], [5, 16, 16])
    mask |= (((grid - centre) / axes) ** 2).sum(-1) <= 1
  return mask


# ---- bounding ellipsoid volume ratio ----

def test_bevr_of_a_large_ellipsoid_is_about_one_and_of_a_cube_is_its_circumscribed_sphere():
  # The corners' hull overhangs a voxelised ball by about half a voxel: the ratio is
  # about 1 - 2.6/radius (0.92 at 30 voxels), within 2% of 1 from about 130 voxels.
  assert shape.bounding_ellipsoid_volume_ratio(ball(150)) == pytest.approx(1.0, rel=0.02)
  cube = np.zeros((14, 14, 14), bool)
  cube[2:12, 2:12, 2:12] = True
  assert shape.bounding_ellipsoid_volume_ratio(cube) == pytest.approx(2 / (math.pi * math.sqrt(3)), rel=0.02)


def test_bevr_never_exceeds_one():
  rng = np.random.default_rng(0)
  shapes = [blob(rng) for _ in range(15)] + [rng.random((4, 10, 10)) < 0.3 for _ in range(15)]
  shapes += [np.ones((1, 1, 1), bool), np.ones((1, 1, 5), bool), np.ones((2, 3, 4), bool)]
  values = [shape.bounding_ellipsoid_volume_ratio(m) for m in shapes]
  assert all(0 < v <= 1 + 1e-12 for v in values), values
  assert max(values) > 0.5  # not trivially small


def test_khachiyan_ellipsoid_holds_every_point_and_is_near_minimal():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(400, 3)) * [3.0, 1.0, 0.5]
  centre, matrix = shape.minimum_volume_ellipsoid(points)
  offsets = points - centre
  reach = np.einsum("ij,jk,ik->i", offsets, matrix, offsets)
  assert reach.max() <= 1 + 1e-9
  assert np.sum(reach > 1 - 1e-3) >= 4  # touches the points that define it (at least d + 1 in 3-D)
  box = np.array([[x, y, z] for x in (-2, 2) for y in (-1, 1) for z in (-1, 1)], float)  # 4x2x2 box
  _, box_matrix = shape.minimum_volume_ellipsoid(box)
  assert shape.ellipsoid_volume(box_matrix) == pytest.approx(4 / 3 * math.pi * 2 * 1 * 1 * 3 ** 1.5, rel=1e-3)


def test_one_slice_tumour_is_a_slab_whatever_its_thickness():
  # A cylinder's minimum ellipsoid has volume sqrt(3) pi r^2 h: BEVR 1/sqrt(3), for any h.
  flat = disc(100, size=210)[None]
  thick = np.repeat(flat, 3, axis=0)
  assert shape.bounding_ellipsoid_volume_ratio(flat) == pytest.approx(1 / math.sqrt(3), rel=0.03)
  assert shape.bounding_ellipsoid_volume_ratio(thick) == pytest.approx(
      shape.bounding_ellipsoid_volume_ratio(flat), rel=1e-3)
  features = shape.features(flat)
  assert features["slice_count"] == 1 and features["feature_slice"] == 0
  assert features["asd"] < 0.3 and features["mf"] < 0.01


# ---- angular standard deviation and margin fluctuation ----

def test_asd_and_mf_are_near_zero_for_a_disc_and_grow_with_a_rougher_border():
  # Bounds for a voxelised disc of radius 40: ASD < 0.3 px (pixelisation), MF < 0.01.
  assert shape.angular_standard_deviation(disc(40)) < 0.3
  assert shape.margin_fluctuation(disc(40)) < 0.01
  amplitudes = (0.0, 0.02, 0.05, 0.1, 0.2)
  asd = [shape.angular_standard_deviation(disc(40, amplitude=a)) for a in amplitudes]
  mf = [shape.margin_fluctuation(disc(40, amplitude=a)) for a in amplitudes]
  assert all(np.diff(asd) > 0), asd
  assert all(np.diff(mf) > 0), mf
  assert asd[-1] > 10 * asd[0] and mf[-1] > 5 * mf[0]


def test_features_do_not_change_under_translation_and_scale_as_documented():
  rng = np.random.default_rng(2)
  mask = blob(rng)
  mask[:, 16:48, 16:48] |= np.broadcast_to(disc(12, size=32, amplitude=0.15), (12, 32, 32)) & (
      np.arange(12) % 3 == 1)[:, None, None]
  base = shape.features(mask)
  moved = shape.features(np.roll(mask, (0, 7, -5), axis=(0, 1, 2)))
  for name in ("bevr", "asd", "mf", "volume", "slice_count"):
    assert moved[name] == pytest.approx(base[name], rel=1e-6), name
  scaled = shape.features(np.kron(mask, np.ones((2, 2, 2), bool)))
  assert scaled["bevr"] == pytest.approx(base["bevr"], rel=0.02)  # affine-invariant
  assert scaled["asd"] == pytest.approx(2 * base["asd"], rel=0.1)  # in pixels: doubles
  assert scaled["mf"] == pytest.approx(base["mf"], rel=0.1)  # normalised: scale-free
  assert scaled["volume"] == 8 * base["volume"]
  stretched = shape.features(np.repeat(mask, 3, axis=0))  # a thicker slice spacing
  assert stretched["bevr"] == pytest.approx(base["bevr"], rel=1e-3)


def test_empty_and_border_touching_masks_are_handled_as_documented():
  empty = shape.features(np.zeros((5, 32, 32), bool))
  assert empty["empty"] and empty["volume"] == 0 and empty["slice_count"] == 0
  assert all(math.isnan(empty[name]) for name in shape.FEATURES)
  # A disc cut by the image's corner is measured as it is visible: the same as
  # that cut shape well inside the image.
  cut = disc(30, size=100, amplitude=0.1, centre=(10, 10))[:60, :60]
  at_edge = np.zeros((3, 60, 60), bool)
  at_edge[1] = cut
  inside = np.zeros((3, 120, 120), bool)
  inside[1, 30:90, 30:90] = cut
  a, b = shape.features(at_edge), shape.features(inside)
  assert a["touches_border"] and not b["touches_border"]
  for name in ("bevr", "asd", "mf", "volume"):
    assert a[name] == pytest.approx(b[name], rel=1e-6), name
  assert shape.features(np.ones((1, 1, 1), bool))["mf"] == 0.0  # one voxel: defined, no fluctuation


# ---- statistics ----

def _brute_force_fisher(table):
  table = np.asarray(table)
  columns, top, n = table.sum(0), table[0].sum(), table.sum()

  def probability(first_row):
    return math.prod(math.comb(int(c), int(x)) for c, x in zip(columns, first_row)) / math.comb(int(n), int(top))

  observed = probability(table[0])
  every = [probability(x) for x in itertools.product(*(range(int(c) + 1) for c in columns)) if sum(x) == top]
  return sum(p for p in every if p <= observed * (1 + 1e-7))


def test_fisher_exact_matches_scipy_for_2x2_and_enumeration_for_2xk():
  rng = np.random.default_rng(3)
  for _ in range(50):
    table = rng.integers(0, 15, (2, 2))
    assert stats.fisher_exact_2xk(table) == pytest.approx(scipy_stats.fisher_exact(table).pvalue, rel=1e-9, abs=1e-15)
  for _ in range(20):
    table = rng.integers(0, 7, (2, rng.integers(3, 5)))
    assert stats.fisher_exact_2xk(table) == pytest.approx(_brute_force_fisher(table), rel=1e-9, abs=1e-15)
  # resolves 0.0002 exactly: all of one cluster above, all of the other below
  assert stats.fisher_exact_2xk([[7, 0], [0, 7]]) == pytest.approx(2 / special.comb(14, 7))
  assert stats.fisher_exact_2xk([[3, 0, 0], [0, 0, 0]]) == 1.0  # one populated column: nothing to test


def _cohort_rows(values, labels):
  return {f"P{i:03d}": {"manual_bevr": v, "manual_empty": False, "C": lab}
          for i, (v, lab) in enumerate(zip(values, labels))}


def test_association_is_far_below_threshold_when_the_feature_decides_the_cluster_and_not_when_shuffled():
  rng = np.random.default_rng(4)
  values = rng.uniform(0.2, 0.6, 60)
  labels = np.where(values < 0.35, "1", np.where(values < 0.45, "2", "3"))
  settings = cohort.AnalysisSettings(clusters=("C",), auc_cluster="C")
  decided = [r for r in cohort.associations(_cohort_rows(values, labels), ["manual"], settings)
             if r["measure"] == "bevr"][0]
  assert decided["p_min"] < 1e-8 and decided["significant"] and decided["hypotheses"] == 10
  assert decided["p_bonferroni"] == pytest.approx(10 * decided["p_min"])
  shuffled = [[r for r in cohort.associations(_cohort_rows(values, rng.permutation(labels)), ["manual"], settings)
               if r["measure"] == "bevr"][0] for _ in range(40)]
  # Bonferroni holds the family-wise error at 5%: few shuffles pass, most are far off.
  assert sum(r["significant"] for r in shuffled) <= 4
  assert np.median([r["p_min"] for r in shuffled]) > 0.05
  # A blank label leaves that patient out of this test only, and is counted.
  rows = _cohort_rows(values, labels)
  rows["P000"]["C"] = None
  rows["P001"]["manual_empty"] = True
  counted = [r for r in cohort.associations(rows, ["manual"], settings) if r["measure"] == "bevr"][0]
  assert (counted["patients"], counted["left_out_blank_label"], counted["left_out_undefined_feature"]) == (58, 1, 1)


def test_auc_equals_mann_whitney_and_its_interval_holds_it():
  rng = np.random.default_rng(5)
  scores, positive = rng.normal(size=40), rng.random(40) < 0.4
  scores[positive] += 1
  u = scipy_stats.mannwhitneyu(scores[positive], scores[~positive]).statistic
  point, low, high = stats.bootstrap_auc(scores, positive, 500, np.random.default_rng(0))
  assert point == pytest.approx(u / (positive.sum() * (~positive).sum()))
  assert low < point < high and 0.5 < point
  assert stats.icc_agreement(scores, scores) == pytest.approx(1.0)
  assert stats.icc_agreement(scores, scores + 5) < 0.5  # absolute agreement: a shift disagrees


# ---- the command on a synthetic kaggle_3m ----

def _predict_layout(dataset: pathlib.Path, out: pathlib.Path, emptied: str) -> None:
  """Manual masks written as `predict` writes masks, one patient's emptied."""
  import cv2
  import tifffile
  for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
    (out / folder.name / "masks").mkdir(parents=True)
    for mask_path in folder.glob("*_mask.tif"):
      mask = tifffile.imread(mask_path)
      if folder.name == emptied:
        mask = np.zeros_like(mask)
      cv2.imwrite(str(out / folder.name / "masks" / mask_path.name.replace("_mask.tif", "_pred.png")), mask)


def test_command_writes_tables_keeps_empty_masks_and_reports_them(tiny_dataset, tmp_path):
  patients = sorted(p.name for p in tiny_dataset.iterdir() if p.is_dir())
  predictions = tmp_path / "predict"
  _predict_layout(tiny_dataset, predictions, emptied=patients[0])
  settings = cohort.AnalysisSettings(bootstrap=50)
  result = cohort.run(tiny_dataset, tmp_path / "out", predictions=predictions, settings=settings)
  out = tmp_path / "out"
  with (out / "features.csv").open() as f:
    features = list(csv.DictReader(f))
  assert [r["patient"] for r in features] == patients
  assert features[0]["automatic_empty"] == "True" and features[0]["automatic_bevr"] == ""
  assert features[1]["manual_bevr"] == features[1]["automatic_bevr"] != ""  # the same masks, the same value
  with (tiny_dataset / "data.csv").open() as f:  # each patient's cluster, blank where data.csv is blank
    clusters = {r["Patient"]: r["RNASeqCluster"] for r in csv.DictReader(f)}
  assert [r["RNASeqCluster"] for r in features] == [clusters[p.rsplit("_", 1)[0]] for p in patients]
  assert len({r["RNASeqCluster"] for r in features}) > 1
  text = (out / "associations.md").read_text()
  assert f"automatic masks: 1 empty (features undefined, left out of every test: {patients[0]})" in text
  assert "## Agreement, manual versus automatic masks" in text
  agreement = {r["measure"]: r for r in result["agreement"]}
  assert agreement["bevr"]["patients"] == len(patients) - 1 and agreement["bevr"]["icc"] == pytest.approx(1.0)
  for name in ("associations.csv", "auc.csv", "agreement.csv", "bevr_by_RNASeqCluster.png"):
    assert (out / name).stat().st_size > 0
  associations = [r for r in result["associations"] if r["masks"] == "automatic"]
  assert all(r["left_out_undefined_feature"] == 1 for r in associations)
  # Again into the same folder with manual masks alone: no agreement file is left from the run before.
  cohort.run(tiny_dataset, out, settings=settings)
  assert not (out / "agreement.csv").exists() and (out / "features.csv").is_file()
  with pytest.raises(ValueError, match="--save_masks writes the masks --models predicts"):
    cohort.run(tiny_dataset, out, predictions=predictions, settings=settings, save_masks=True)


def test_bad_inputs_stop_with_an_error_naming_the_file(tiny_dataset, tmp_path):
  data = tmp_path / "kaggle_3m"
  shutil.copytree(tiny_dataset, data)
  rows = list(csv.reader((data / "data.csv").open()))
  patients = sorted(p.name for p in data.iterdir() if p.is_dir())
  with (data / "data.csv").open("w", newline="") as f:
    csv.writer(f).writerows([r[:1] + r[2:] for r in rows])  # without RNASeqCluster
  with pytest.raises(DataError, match=r"data\.csv: missing column\(s\) RNASeqCluster"):
    cohort.run(data, tmp_path / "out")
  with (data / "data.csv").open("w", newline="") as f:
    csv.writer(f).writerows(rows[:-1])  # the last patient's row dropped
  with pytest.raises(DataError, match=r"data\.csv: no row for 1 patient"):
    cohort.run(data, tmp_path / "out")
  predictions = tmp_path / "predict"
  _predict_layout(tiny_dataset, predictions, emptied="")
  next((predictions / patients[2] / "masks").iterdir()).unlink()
  with pytest.raises(DataError, match=f"{patients[2]}/masks: does not match the .* images of {patients[2]}"):
    cohort.run(tiny_dataset, tmp_path / "out", predictions=predictions)
  result = subprocess.run([sys.executable, "-m", "lgg_jax.radiogenomics", f"--manual_dir={tiny_dataset}",
                           f"--predictions={predictions}", f"--out={tmp_path / 'cli'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {predictions / patients[2] / 'masks'}")


def test_cross_validated_masks_come_from_the_model_that_held_each_patient_out(tmp_path):
  folds = []
  for k, held_out in enumerate((["A", "B"], ["C"], ["D", "E"])):
    run = tmp_path / f"fold{k}"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": [], "val": [], "test": held_out}))
    folds.append(run)
  export = tmp_path / "export"
  export.mkdir()
  (export / "model_card.md").write_text("## Data and split\n\n- train: A, B\n- val: C\n- test: F, G\n")
  assignment = cohort.assign_models(folds + [export], ["A", "B", "C", "D", "E", "F"])
  assert {m.name: ids for m, ids in assignment.items()} == {
      "fold0": ["A", "B"], "fold1": ["C"], "fold2": ["D", "E"], "export": ["F"]}
  with pytest.raises(DataError, match="patient H is in no model's test split"):
    cohort.assign_models(folds, ["A", "H"])
  with pytest.raises(DataError, match="patient A is in the test split of several models"):
    cohort.assign_models(folds + [folds[0]], ["A"])
  (tmp_path / "bare").mkdir()
  with pytest.raises(DataError, match="no split.json and no model_card.md"):
    cohort.assign_models([tmp_path / "bare"], ["A"])
  # A model that trained on a patient it lists as test gives no cross-validated mask of it.
  leaky = tmp_path / "leaky"
  leaky.mkdir()
  (leaky / "split.json").write_text(json.dumps({"protocol": "slice", "train": ["A"], "val": [], "test": ["A"]}))
  with pytest.raises(DataError, match=f"{leaky / 'split.json'}: split protocol 'slice'"):
    cohort.assign_models([leaky], ["A"])
  (leaky / "split.json").write_text(json.dumps({"protocol": "patient", "train": ["A"], "val": [], "test": ["A", "B"]}))
  with pytest.raises(DataError, match=r"1 test patient\(s\) also in train or val \(A\)"):
    cohort.assign_models([leaky], ["A"])
  (export / "model_card.md").write_text("- train: A, F\n- val: C\n- test: F, G\n")
  with pytest.raises(DataError, match="model_card.md: 1 test patient"):
    cohort.assign_models([export], ["F"])


def test_the_table_wide_correction_counts_every_tested_cell_and_holds_the_family_error():
  """Bonferroni within a cell only: over a table of 9 feature x cluster cells
  of pure noise, some cell is bold in a large share of tables."""
  rng = np.random.default_rng(5)
  settings = cohort.AnalysisSettings(clusters=("C1", "C2", "C3"), auc_cluster="C1")

  def table(decided: bool):
    rows = {}
    for i in range(60):
      bevr = rng.uniform(0.2, 0.6)
      rows[f"P{i:03d}"] = {"manual_bevr": bevr, "manual_asd": rng.uniform(), "manual_mf": rng.uniform(),
                           "manual_empty": False, "C1": ("1" if bevr < 0.4 else "2") if decided else str(i % 2),
                           "C2": str(rng.integers(3)), "C3": str(rng.integers(2))}
      if not decided:
        rows[f"P{i:03d}"]["C1"] = str(rng.integers(2))
    return [r for r in cohort.associations(rows, ["manual"], settings) if r["kind"] == "feature"]

  decided = table(True)
  tested = [r for r in decided if not np.isnan(r["p_min"])]
  assert len(tested) == 9
  for r in tested:
    assert r["p_table"] == pytest.approx(min(1.0, r["p_min"] * 10 * 9))
    assert r["significant_table"] == (r["p_table"] < settings.alpha)
  bevr_c1 = next(r for r in tested if (r["measure"], r["cluster"]) == ("bevr", "C1"))
  assert bevr_c1["significant_table"]
  noise = [table(False) for _ in range(30)]
  any_cell = sum(any(r["significant"] for r in t) for t in noise)
  any_table = sum(any(r["significant_table"] for r in t) for t in noise)
  assert any_table <= 2 and any_table <= any_cell
