import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile

from lgg_jax import baselines, evaluate, inference, loading, metrics, predict, report, review, segmenter, state, train
from lgg_jax.data import pipeline
from conftest import import_or_skip, tiny_config

medpy_binary = import_or_skip("medpy.metric.binary", "the test extra's HD95 reference")
PLAIN = inference.Settings()  # threshold 0.5, no TTA, no component step


def _square(shape, top, left, size, slices=None):
  v = np.zeros(shape, bool)
  v[slice(None) if slices is None else slices, top:top + size, left:left + size] = True
  return v


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 1.0, 1.0)])
def test_hd95_equals_medpy_on_random_and_hand_made_volumes(spacing):
  rng = np.random.default_rng(0)
  cases = [(_square((6, 40, 40), 10, 10, 10), _square((6, 40, 40), 10, 13, 10)),
           (_square((8, 48, 48), 5, 5, 12, slice(1, 4)), _square((8, 48, 48), 20, 30, 8, slice(3, 7)))]
  for _ in range(6):
    a = rng.random((7, 32, 32)) < rng.uniform(0.02, 0.3)
    b = rng.random((7, 32, 32)) < rng.uniform(0.02, 0.3)
    cases.append((a, b))
  for pred, truth in cases:
    ours = metrics.hd95(pred, truth, spacing)
    assert ours == pytest.approx(medpy_binary.hd95(pred, truth, voxelspacing=spacing), abs=1e-6)


def test_hd95_charges_false_positives_on_tumour_free_slices():
  """A 20x20 blob on 3 tumour-free slices: a per-slice HD95 sees no surface to
  compare there and drops it; the 3-D one does not."""
  truth = _square((12, 128, 128), 50, 50, 30, slice(2, 6))
  pred = truth | _square((12, 128, 128), 90, 90, 20, slice(8, 11))
  ours = metrics.hd95(pred, truth)
  assert ours == pytest.approx(medpy_binary.hd95(pred, truth), abs=1e-6) and ours > 10
  assert metrics.hd95(truth, truth) == 0.0
  empty = np.zeros_like(truth)
  assert metrics.hd95(empty, empty) == 0.0
  assert np.isnan(metrics.hd95(truth, empty)) and np.isnan(metrics.hd95(empty, truth))


def test_undefined_hd95_is_counted_and_charged_the_penalty():
  config = tiny_config_evaluation()
  truth = _square((4, 32, 32), 8, 8, 8, slice(1, 3))
  volumes = [("found", truth.astype(np.float32), truth), ("missed", np.zeros((4, 32, 32)), truth)]
  summary, rows = evaluate.score(volumes, PLAIN, config)
  assert summary["hd95_undefined"] == 1 and summary["hd95_px"] == 0.0
  assert summary["hd95_px_penalised"] == pytest.approx(config.hd95_penalty / 2)
  assert summary["missed_patients"] == 1
  assert [r["patient"] for r in rows] == ["found", "missed"]


def tiny_config_evaluation():
  import tiny_config
  return tiny_config.get_config().evaluation


def test_largest_component_keeps_the_tumour_of_an_ordered_volume(tiny_dataset, tmp_path):
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  data = pipeline.load(config)
  patient = data.patients(np.arange(len(data.patient_ids)))[0]
  _, truth = data.volume(patient)
  truth = inference.keep_components(truth)  # the tumour's main body, over several slices
  assert truth.any(axis=(1, 2)).sum() >= 3
  pred = truth.copy()
  far = np.flatnonzero(~truth.any(axis=(1, 2)))[-1]
  pred[far, :6, :6] = True  # a small false positive on a tumour-free slice
  np.testing.assert_array_equal(inference.keep_components(pred), truth)
  # The same slices out of order cut the tumour into pieces, and the largest
  # one is no longer the tumour.
  shuffled = pred[np.random.default_rng(0).permutation(len(pred))]
  kept = inference.keep_components(shuffled)
  assert kept.sum() < truth.sum()


def test_score_counts_sensitivity_precision_and_false_positives():
  truth = np.zeros((3, 4, 4), bool)
  truth[0, :2, :2] = True
  probs = np.zeros((3, 4, 4))
  probs[0, :2, :1] = 0.9       # 2 of 4 true pixels
  probs[1, 3, 3] = 0.8         # false positive on a tumour-free slice
  summary, rows = evaluate.score([("a", probs, truth)], PLAIN)
  assert summary["sensitivity"] == pytest.approx(0.5)
  assert summary["precision"] == pytest.approx(2 / 3)
  assert summary["empty_false_positive_rate"] == pytest.approx(0.5)
  assert rows[0]["dice"] == pytest.approx(2 * 2 / (3 + 4))


def test_threshold_choice_is_the_best_grid_point():
  truth = _square((3, 16, 16), 4, 4, 6)
  probs = np.where(truth, 0.35, 0.0) + np.where(_square((3, 16, 16), 10, 10, 3), 0.3, 0.0)
  volumes = [("a", probs, truth)]
  best = evaluate.choose_threshold(volumes, PLAIN)
  scores = {t: evaluate.score(volumes, PLAIN.replace(threshold=t))[0]["patient_dice"] for t in evaluate.THRESHOLD_GRID}
  assert scores[best] == max(scores.values()) == 1.0 and best > 0.3
  assert scores[0.1] < 1.0  # the grid's low end takes the false blob too


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  config = tiny_config(root)
  config.data.image_size = 64
  config.data.synthetic.update(num_patients=16, min_slices=10, max_slices=12)
  config.model.unet.base_width = 8
  config.model.unet.depth = 4
  config.num_epochs = 16
  config.optimizer.learning_rate = 2e-3
  config.data.tumour_fraction = 0.5  # without it this tiny run barely leaves "no tumour anywhere"
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


def test_scores_are_taken_at_256_against_the_untouched_truth(trained_run):
  workdir, config, summary = trained_run
  assert config.data.image_size == 64
  data = pipeline.load(config)
  for row in summary["test_per_patient"]:
    _, truth = data.volume(row["patient"])
    assert truth.shape[1:] == (256, 256) and row["true_pixels"] == int(truth.sum())


def test_threshold_from_validation_and_tta_are_what_they_say(trained_run):
  workdir, config, _ = trained_run
  data = pipeline.load(config)
  member = loading.member_from_run(workdir)
  val = list(inference.Predictor(member).predict_patients(data, data.patients(data.split.val)))
  chosen = evaluate.evaluate_run(workdir, threshold="val", name="val_threshold")["threshold"]
  assert chosen == evaluate.choose_threshold(val, member.settings)
  # Flip TTA is the mean of the three views' probabilities, each flipped back.
  volume, _ = data.volume(data.patients(data.split.test)[0])
  plain = inference.Predictor(member, settings=PLAIN)
  views = [plain.predict_volume(volume), plain.predict_volume(volume[:, :, ::-1])[:, :, ::-1],
           plain.predict_volume(volume[:, ::-1])[:, ::-1]]
  np.testing.assert_allclose(inference.Predictor(member, settings=PLAIN.replace(tta="flips")).predict_volume(volume),
                             np.mean(views, axis=0), atol=2e-5)
  rotations = [np.rot90(plain.predict_volume(np.rot90(v, k, axes=(1, 2)).copy()), -k, axes=(1, 2))
               for v in (volume, volume.transpose(0, 2, 1, 3)) for k in range(4)]
  rotations[4:] = [r.transpose(0, 2, 1) for r in rotations[4:]]
  np.testing.assert_allclose(inference.Predictor(member, settings=PLAIN.replace(tta="dihedral")).predict_volume(volume),
                             np.mean(rotations, axis=0), atol=2e-5)


def test_evaluation_gives_each_patient_the_quality_estimate_beside_its_true_dice(trained_run, tmp_path):
  import csv
  workdir, _, summary = trained_run
  result = evaluate.evaluate_run(workdir, checkpoint="best", split="test", out=tmp_path / "eval")
  with open(tmp_path / "eval" / "per_patient.csv") as f:
    rows = list(csv.DictReader(f))
  assert {"dice", "quality", "review", "review_reason", "predicted_voxels"} <= set(rows[0])
  assert all(0.0 <= float(r["quality"]) <= 1.0 for r in rows)
  saved = json.loads((tmp_path / "eval" / "summary.json").read_text())["quality"]
  assert saved["patients"] == len(rows) == summary["test"]["patients"]
  assert saved["flagged"] == sum(r["review"] == "True" for r in rows)
  assert saved["rule"]["signal"] == "view_and_threshold"
  assert result["patient_dice"] == pytest.approx(summary["test_dice"], abs=1e-6)


def test_runs_from_before_newer_settings_still_evaluate(trained_run, tmp_path):
  workdir, _, summary = trained_run
  old = tmp_path / "old_run"
  shutil.copytree(workdir, old)
  config = json.loads((old / "config.json").read_text())
  for section, key in (("model", "conv_impl"), ("data", "neighbours"), ("data", "tumour_fraction")):
    del config[section][key]
  del config["inference"], config["evaluation"]
  (old / "config.json").write_text(json.dumps(config))
  result = evaluate.evaluate_run(old, checkpoint="best", split="test")
  assert result["patient_dice"] == pytest.approx(summary["test_dice"], abs=1e-6)


def test_a_run_with_its_best_checkpoint_apart_still_loads_and_refuses_to_resume(trained_run, tmp_path):
  """Runs written before one checkpoint manager kept both had best/<step>/ (state
  and metrics {"val_dice"}) beside checkpoints/ (the latest saves)."""
  workdir, config, summary = trained_run
  old = tmp_path / "old_layout"
  shutil.copytree(workdir, old, ignore=shutil.ignore_patterns("evaluation", "report", "tensorboard"))
  _, step, dice = state.best_checkpoint(workdir)
  (old / state.OLD_BEST).mkdir()
  shutil.move(old / "checkpoints" / str(step), old / state.OLD_BEST / str(step))
  shutil.rmtree(old / state.OLD_BEST / str(step) / "data")
  (old / state.OLD_BEST / str(step) / "metrics" / "metrics").write_text(json.dumps({"val_dice": dice}))
  assert state.best_checkpoint(old)[1:] == (step, dice)
  result = evaluate.evaluate_run(old, checkpoint="best", split="test")
  assert result["checkpoint_steps"] == [step]
  assert result["patient_dice"] == pytest.approx(summary["test_dice"], abs=1e-6)
  longer = config.copy_and_resolve_references()
  longer.num_epochs += 1
  with pytest.raises(ValueError, match=f"{old / state.OLD_BEST}: this run was started by an lgg_jax"):
    train.train_and_evaluate(longer, old)


def test_briefly_trained_model_beats_flair_threshold_on_held_out_patients(trained_run):
  workdir, config, summary = trained_run
  data = pipeline.load(config)
  train_vols = [data.volume(p) for p in data.patients(data.split.train)]
  threshold, _ = baselines.fit_threshold([v for v, _ in train_vols], [m for _, m in train_vols])
  test_vols = [data.volume(p) for p in data.patients(data.split.test)]
  baseline = baselines.patient_dice([v for v, _ in test_vols], [m for _, m in test_vols], threshold).mean()
  assert summary["test_dice"] > baseline + 0.2, (summary["test_dice"], baseline)


def test_report_holds_curves_overlays_and_the_test_table(trained_run):
  workdir, _, _ = trained_run
  written = report.write(workdir)
  text = written.read_text()
  for name in ("loss_curves.png", "dice_curves.png", "best_patient.png", "worst_patient.png"):
    assert (workdir / "report" / name).stat().st_size > 1000
    assert name in text
  assert "## Evaluation of the best checkpoint" in text and "| hd95_px |" in text


def _patient_folder(tiny_dataset):
  return sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]


def test_predict_equals_evaluate_on_the_same_patient(trained_run, tiny_dataset, tmp_path):
  workdir, _, _ = trained_run
  patient = _patient_folder(tiny_dataset)
  external = tiny_dataset.parent.parent / "external_copy"
  if not external.exists():
    shutil.copytree(tiny_dataset, external / "kaggle_3m")
  evaluate.evaluate_run(workdir, manual_dir=str(external), out=str(tmp_path / "ev"))
  with open(tmp_path / "ev" / "per_patient.csv") as f:
    rows = {r["patient"]: float(r["dice"]) for r in csv.DictReader(f)}
  results = predict.predict(workdir, patient, tmp_path / "out")
  assert results[0]["dice"] == pytest.approx(rows[patient.name], abs=1e-6)


def test_prediction_on_slices_writes_masks_overlays_gif_and_panel(trained_run, tiny_dataset, tmp_path):
  import imageio.v2 as imageio
  import cv2
  workdir, _, _ = trained_run
  patient = _patient_folder(tiny_dataset)
  n = len([f for f in patient.iterdir() if not f.stem.endswith("_mask")])
  results = predict.predict(workdir, patient.parent, tmp_path / "out", overlays=True)
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
  # The review page's volumes and index: the mask volume holds the PNG masks, slices in order.
  index = json.loads((tmp_path / "out" / review.INDEX_FILE).read_text())
  row = next(r for r in index["cases"] if r["case"] == patient.name)
  assert set(row["files"]) == {"pre", "flair", "post", "mask", "truth", "errors"}
  volume = nib.load(str(tmp_path / "out" / row["files"]["mask"]))
  pngs = np.stack([cv2.imread(str(m), cv2.IMREAD_UNCHANGED) > 0 for m in
                   sorted(masks, key=lambda m: int(m.stem.split("_")[-2]))])
  np.testing.assert_array_equal(predict.to_display_slices(np.asarray(volume.dataobj)) > 0, pngs)
  # Without overlays=True: no per-slice overlays or GIF.
  predict.predict(workdir, patient, tmp_path / "plain")
  assert not (tmp_path / "plain" / patient.name / "overlays").exists()
  assert not (tmp_path / "plain" / patient.name / f"{patient.name}.gif").exists()


def test_evaluation_writes_the_review_page_volumes_and_index(trained_run, tmp_path, monkeypatch):
  workdir, _, _ = trained_run
  summary = evaluate.evaluate_run(workdir, out=tmp_path / "eval", save_probabilities=True)
  index = json.loads((tmp_path / "eval" / review.INDEX_FILE).read_text(),  # strict JSON: browsers refuse NaN
                     parse_constant=lambda c: pytest.fail(f"{c} in review.json"))
  per_patient = list(csv.DictReader((tmp_path / "eval" / "per_patient.csv").open()))
  assert [r["case"] for r in index["cases"]] == [r["patient"] for r in per_patient]
  assert len(index["cases"]) == summary["patients"] and index["kind"] == "evaluate"
  for row in index["cases"]:
    assert {"dice", "hd95_px", "quality", "review"} <= set(row)
    assert set(row["files"]) == {"pre", "flair", "post", "mask", "truth", "errors", "probabilities", "uncertainty"}
    assert all((tmp_path / "eval" / f).is_file() for f in row["files"].values())
  assert review.find_index(tmp_path / "eval")["index"] == review.INDEX_FILE
  # A re-run into the same folder that stops part-way leaves no old table or
  # index beside the volumes it overwrote.
  with monkeypatch.context() as patch:
    patch.setattr(segmenter.Segmenter, "assess", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stopped")))
    with pytest.raises(RuntimeError, match="stopped"):
      evaluate.evaluate_run(workdir, out=tmp_path / "eval")
  assert not [f for f in (*evaluate.OUTPUT_FILES, review.INDEX_FILE) if (tmp_path / "eval" / f).exists()]


def test_nifti_in_any_axis_order_gives_the_tiff_folders_masks_and_keeps_its_header(trained_run, tiny_dataset,
                                                                                    tmp_path):
  """A kaggle patient written as uint8 NIfTI (RAS+, radiological display), once as is
  and once with permuted, flipped axes and a matching affine: the masks equal
  those of its TIFF folder, and each output keeps its input's grid, affine and
  qform/sform codes."""
  import cv2
  import nibabel as nib  # a dependency (setup.py)
  workdir, _, _ = trained_run
  patient = _patient_folder(tiny_dataset)
  files = sorted((f for f in patient.iterdir() if not f.stem.endswith("_mask")),
                 key=lambda f: int(f.stem.rsplit("_", 1)[1]))
  slices = np.stack([tifffile.imread(f) for f in files])  # (S, 256, 256, 3)
  ras = predict.from_display_slices(slices)  # (X, Y, S, 3)
  affine = np.diag([0.9, 0.9, 5.0, 1.0])
  # Voxel axes (slice, x, y), slice axis reversed: the same world, another array.
  permuted = np.flip(ras.transpose(2, 0, 1, 3), axis=0)
  swap = np.zeros((4, 4))
  swap[0, 1] = swap[1, 2] = swap[3, 3] = 1
  swap[2, 0], swap[2, 3] = -1, len(files) - 1
  permuted_affine = affine @ swap
  expected = {}
  results = predict.predict(workdir, patient, tmp_path / "tiff")
  for name in (f.stem for f in files):
    expected[name] = cv2.imread(str(tmp_path / "tiff" / patient.name / "masks" / f"{name}_pred.png"), 0) > 0
  for case, volume, case_affine in (("plain", ras, affine), ("permuted", permuted, permuted_affine)):
    folder = tmp_path / "nifti" / case
    folder.mkdir(parents=True)
    for c, role in enumerate(("pre", "flair", "post")):
      image = nib.Nifti1Image(np.ascontiguousarray(volume[..., c]), case_affine)  # uint8: taken as is
      image.set_qform(case_affine, code=1)
      image.set_sform(case_affine, code=2)
      nib.save(image, str(folder / f"{case}_{role}.nii.gz"))
    result = predict.predict(workdir, folder, tmp_path / "out")[0]
    mask = nib.load(str(tmp_path / "out" / case / f"{case}_mask.nii.gz"))
    assert mask.shape == volume.shape[:3]
    np.testing.assert_allclose(mask.affine, case_affine)
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 2)
    to_ras = nib.orientations.ornt_transform(nib.io_orientation(case_affine), nib.orientations.axcodes2ornt("RAS"))
    got = predict.to_display_slices(nib.orientations.apply_orientation(np.asarray(mask.dataobj), to_ras)) > 0
    for k, name in enumerate(f.stem for f in files):
      np.testing.assert_array_equal(got[k], expected[name], err_msg=f"{case} slice {name}")
    assert result["predicted_pixels"] == results[0]["predicted_pixels"]


def test_gif_frames_last_200_ms(tmp_path):
  from PIL import Image
  from lgg_jax import figures
  frames = [np.full((16, 16, 3), v, np.uint8) for v in (0, 120, 240)]
  figures.gif(frames, tmp_path / "a.gif", fps=5.0)
  with Image.open(tmp_path / "a.gif") as gif:
    durations = []
    for i in range(gif.n_frames):
      gif.seek(i)
      durations.append(gif.info["duration"])
  assert durations == [200, 200, 200]


@pytest.mark.parametrize("array,message", [
    (np.zeros((128, 128, 3), np.uint8), "size"),
    (np.zeros((256, 256, 2), np.uint8), "3 channels"),
    (np.zeros((256, 256, 3), np.uint16), "dtype"),
])
def test_bad_prediction_input_is_named(tmp_path, array, message):
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


def test_evaluation_on_an_external_dataset_scores_every_patient(trained_run, tiny_dataset, tmp_path):
  workdir, _, _ = trained_run
  result = evaluate.evaluate_run(workdir, manual_dir=str(tiny_dataset))
  patients = [p for p in tiny_dataset.iterdir() if p.is_dir()]
  assert result["split"] == "external" and result["patients"] == len(patients)
  assert (workdir / "evaluation").is_dir()
  # Two patients make no 5 folds: an external dataset is scored whole, never split.
  few = tmp_path / "few" / "kaggle_3m"
  for patient in sorted(patients)[:2]:
    shutil.copytree(patient, few / patient.name)
  result = evaluate.evaluate_run(workdir, manual_dir=str(few), out=str(tmp_path / "few_eval"))
  assert result["patients"] == 2


def test_an_ensemble_needs_other_patients_and_scores_its_members_mean_probability(trained_run, tiny_dataset,
                                                                                     tmp_path):
  """Two different models (the run's last checkpoint and, in a copy of the
  run, the one before it): the ensemble's per-patient Dice is that of the
  mean of their own probabilities, at the mean of their thresholds."""
  workdir, config, _ = trained_run
  with pytest.raises(ValueError, match="--manual_dir"):
    evaluate.evaluate_run([workdir, workdir])
  earlier = tmp_path / "earlier_run"
  shutil.copytree(workdir, earlier, ignore=shutil.ignore_patterns("evaluation", "report", "tensorboard"))
  kept = sorted(int(p.name) for p in (earlier / "checkpoints").iterdir() if p.name.isdigit())
  assert len(kept) >= 2, kept
  shutil.rmtree(earlier / "checkpoints" / str(kept[-1]))  # the copy's latest is now the step before
  runs = [workdir, earlier]
  result = evaluate.evaluate_run(runs, checkpoint="latest", manual_dir=str(tiny_dataset), out=str(tmp_path / "two"))
  assert result["checkpoint_steps"] == [kept[-1], kept[-2]] and result["runs"] == [str(r) for r in runs]
  members = [loading.member_from_run(r, "latest") for r in runs]
  threshold = float(np.mean([m.threshold for m in members]))
  assert not config.inference.largest_component  # scored on the thresholded mean alone
  external = config.copy_and_resolve_references()
  external.data.manual_dir = str(tiny_dataset)
  data = pipeline.load(external)
  with open(tmp_path / "two" / "per_patient.csv") as f:
    scored = {r["patient"]: (float(r["dice"]), int(r["predicted_pixels"])) for r in csv.DictReader(f)}
  patients = data.patients(np.arange(len(data.patient_ids)))
  assert sorted(scored) == sorted(patients)
  largest_gap = 0.0
  for patient in patients:
    volume, truth = data.volume(patient)
    first, second = (inference.Predictor(m).predict_volume(volume) for m in members)
    largest_gap = max(largest_gap, float(np.abs(first - second).max()))
    pred = (first + second) / 2 >= threshold
    dice = metrics.dice_from_counts((pred & truth).sum(), pred.sum(), truth.sum())
    assert scored[patient] == (pytest.approx(float(dice), abs=1e-6), int(pred.sum())), patient
  assert largest_gap > 0.05  # the two members really differ


@pytest.mark.parametrize("loss_name, label", [("bce", "BCE loss"), ("dice", "Dice loss"),
                                              ("dice_bce", "Dice + BCE loss")])
def test_the_loss_curve_names_the_runs_loss(tmp_path, monkeypatch, loss_name, label):
  """Every report's loss axis said "Dice + BCE loss", also for the loss
  ablation's bce and dice runs."""
  import matplotlib.axes
  from lgg_jax import figures
  metrics_path = tmp_path / "metrics.jsonl"
  metrics_path.write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_dice": 0.5,
                                              "val_dice": 0.4, "val_slice_dice": 0.45}) + "\n" for e in (1, 2)))
  labels = []
  original = matplotlib.axes.Axes.set_ylabel
  monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                      lambda self, text, *a, **k: (labels.append(text), original(self, text, *a, **k))[1])
  written = figures.training_curves(metrics_path, tmp_path, loss_name)
  assert [p.name for p in written][:1] == ["loss_curves.png"] and labels[0] == label
