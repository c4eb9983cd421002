import json
import shutil

import numpy as np
import pytest

from lgg_jax import baselines, evaluate, train
from lgg_jax.data import pipeline
from conftest import tiny_config


def _square(shape, top, left, size):
  v = np.zeros(shape, bool)
  v[:, top:top + size, left:left + size] = True
  return v


def test_hd95_on_simple_shapes_and_empty_rules():
  a = _square((1, 40, 40), 10, 10, 10)
  assert evaluate.hd95(a, a) == 0.0
  b = _square((1, 40, 40), 10, 13, 10)  # shifted 3 px to the right
  assert evaluate.hd95(a, b) == pytest.approx(3.0)
  empty = np.zeros_like(a)
  assert evaluate.hd95(empty, empty) == 0.0
  assert np.isnan(evaluate.hd95(a, empty)) and np.isnan(evaluate.hd95(empty, a))


def test_largest_component_keeps_the_biggest_3d_body():
  v = np.zeros((3, 20, 20), bool)
  v[0:3, 2:8, 2:8] = True     # 108 voxels over 3 slices
  v[1, 15:17, 15:17] = True   # 4 voxels
  kept = evaluate.largest_component(v)
  assert kept.sum() == 108 and not kept[1, 15, 15]


def test_score_counts_sensitivity_precision_and_false_positives():
  truth = np.zeros((3, 4, 4), bool)
  truth[0, :2, :2] = True
  probs = np.zeros((3, 4, 4))
  probs[0, :2, :1] = 0.9       # 2 of 4 true pixels
  probs[1, 3, 3] = 0.8         # false positive on a tumour-free slice
  summary, rows = evaluate.score(np.array(["a", "a", "a"]), probs, truth, 0.5, False)
  assert summary["sensitivity"] == pytest.approx(0.5)
  assert summary["precision"] == pytest.approx(2 / 3)
  assert summary["empty_false_positive_rate"] == pytest.approx(0.5)
  assert rows[0]["dice"] == pytest.approx(2 * 2 / (3 + 4))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  config = tiny_config(root)
  config.data.image_size = 64
  config.data.synthetic.update(num_patients=16, min_slices=10, max_slices=12)
  config.model.base_width = 8
  config.model.depth = 4
  config.num_epochs = 16
  config.optimizer.learning_rate = 2e-3
  config.split.num_folds = 5
  summary = train.train_and_evaluate(config, root / "run")
  return root / "run", config, summary


def test_evaluation_reproduces_the_training_summary_and_writes_reports(trained_run):
  workdir, _, summary = trained_run
  result = evaluate.evaluate_run(workdir, checkpoint="best", split="test")
  assert result["patient_dice"] == pytest.approx(summary["test_dice"], abs=1e-6)
  out = workdir / "evaluation" / f"test_step{summary['best_step']}"
  assert json.loads((out / "summary.json").read_text())["patients"] == summary["test"]["patients"]
  assert (out / "per_patient.csv").read_text().count("\n") == summary["test"]["patients"] + 1
  assert "| patient_dice |" in (out / "table.md").read_text()
  tta = evaluate.evaluate_run(workdir, split="test", tta=True, keep_largest=True, threshold="val")
  assert 0.0 <= tta["patient_dice"] <= 1.0 and 0.1 <= tta["threshold"] <= 0.9


def test_runs_from_before_conv_impl_still_evaluate(trained_run, tmp_path):
  workdir, _, summary = trained_run
  old = tmp_path / "old_run"
  shutil.copytree(workdir, old)
  config = json.loads((old / "config.json").read_text())
  del config["model"]["conv_impl"]
  (old / "config.json").write_text(json.dumps(config))
  result = evaluate.evaluate_run(old, checkpoint="best", split="test")
  assert result["patient_dice"] == pytest.approx(summary["test_dice"], abs=1e-6)


def test_briefly_trained_model_beats_flair_threshold_on_held_out_patients(trained_run):
  workdir, config, summary = trained_run
  data = pipeline.load(config)

  def volumes(indices):
    ids = data.patient_ids[indices]
    out = []
    for pid in np.unique(ids):
      sel = indices[ids == pid]
      out.append((np.stack([data.source[int(i)]["image"] for i in sel]),
                  np.stack([data.source[int(i)]["mask"][..., 0] for i in sel])))
    return out

  train_vols = volumes(data.split.train)
  threshold, _ = baselines.fit_threshold([v for v, _ in train_vols], [m for _, m in train_vols])
  test_vols = volumes(data.split.test)
  baseline = baselines.patient_dice([v for v, _ in test_vols], [m for _, m in test_vols], threshold).mean()
  assert summary["test_dice"] > baseline + 0.2, (summary["test_dice"], baseline)


def test_training_writes_a_report_with_curves_and_patient_overlays(trained_run):
  workdir, _, _ = trained_run
  report = (workdir / "report" / "report.md").read_text()
  for name in ("loss_curves.png", "dice_curves.png", "best_patient.png", "worst_patient.png"):
    assert (workdir / "report" / name).stat().st_size > 1000
    assert name in report
  assert "## Evaluation of the best checkpoint" in report and "| patient_dice |" in report


def _patient_folder(tiny_dataset):
  return sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]


def test_prediction_on_slices_writes_masks_overlays_gif_and_panel(trained_run, tiny_dataset, tmp_path):
  import imageio.v2 as imageio
  import cv2
  from lgg_jax import predict
  workdir, _, _ = trained_run
  patient = _patient_folder(tiny_dataset)
  n = len([f for f in patient.iterdir() if not f.stem.endswith("_mask")])
  results = predict.predict(workdir, patient.parent, tmp_path / "out")
  result = next(r for r in results if r["case"] == patient.name)
  assert result["slices"] == n and 0.0 <= result["dice"] <= 1.0
  folder = tmp_path / "out" / patient.name
  masks = sorted((folder / "masks").iterdir())
  assert len(masks) == n
  assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (256, 256)
  assert len(list((folder / "overlays").iterdir())) == n
  frames = imageio.mimread(folder / f"{patient.name}.gif")
  assert len(frames) == n and frames[0].shape[:2] == (256, 256)
  assert (folder / f"{patient.name}_panel.png").stat().st_size > 1000


def test_prediction_on_nifti_keeps_the_affine(trained_run, tiny_dataset, tmp_path):
  nib = pytest.importorskip("nibabel")
  import tifffile
  from lgg_jax import predict
  workdir, _, _ = trained_run
  patient = _patient_folder(tiny_dataset)
  files = sorted((f for f in patient.iterdir() if not f.stem.endswith("_mask")),
                 key=lambda f: int(f.stem.rsplit("_", 1)[1]))
  volume = np.stack([tifffile.imread(f) for f in files], axis=2)  # (256, 256, S, 3)
  affine = np.diag([0.9, 0.9, 5.0, 1.0])
  case = tmp_path / "nifti" / "case1"
  case.mkdir(parents=True)
  for c, role in enumerate(("pre", "flair", "post")):
    nib.save(nib.Nifti1Image(volume[..., c].astype(np.float32) * 3.0, affine), str(case / f"case1_{role}.nii.gz"))
  results = predict.predict(workdir, case.parent, tmp_path / "out")
  assert results[0]["slices"] == len(files)
  mask = nib.load(str(tmp_path / "out" / "case1" / "case1_mask.nii.gz"))
  assert mask.shape == volume.shape[:3]
  np.testing.assert_allclose(mask.affine, affine)
  assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.parametrize("array,message", [
    (np.zeros((128, 128, 3), np.uint8), "size"),
    (np.zeros((256, 256, 2), np.uint8), "3 channels"),
    (np.zeros((256, 256, 3), np.uint16), "dtype"),
])
def test_bad_prediction_input_is_named(tmp_path, array, message):
  import tifffile
  from lgg_jax import predict
  from lgg_jax.data.kaggle import DataError
  path = tmp_path / "in" / "slice_1.tif"
  path.parent.mkdir()
  tifffile.imwrite(path, array)
  with pytest.raises(DataError, match=message) as err:
    predict.find_cases(path.parent)
  assert str(path) in str(err.value)
  broken = tmp_path / "in" / "slice_1.tif"
  broken.write_bytes(b"not a tiff")
  with pytest.raises(DataError, match="unreadable"):
    predict.find_cases(path.parent)


def test_evaluation_on_an_external_dataset_scores_every_patient(trained_run, tiny_dataset):
  workdir, _, _ = trained_run
  result = evaluate.evaluate_run(workdir, manual_dir=str(tiny_dataset))
  patients = [p for p in tiny_dataset.iterdir() if p.is_dir()]
  assert result["split"] == "external" and result["patients"] == len(patients)
  assert (workdir / "evaluation").is_dir()
