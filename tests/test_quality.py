"""The quality estimate: planted failures caught, empty masks reported, the
rule read from a model folder, and `Segmenter.assess` against `segment`."""

import json
import logging

import numpy as np
import pytest

from lgg_jax import Segmenter, inference, loading, metrics, pretrained, quality

SHIPPED = inference.Settings(0.5, "none", True, 0.0)


def _blob(shape, corner, size, value):
  out = np.zeros(shape, np.float32)
  (z, y, x), (dz, dy, dx) = corner, size
  out[z:z + dz, y:y + dy, x:x + dx] = value
  return out


def test_a_confident_false_positive_kept_by_the_component_step_is_flagged_by_the_members():
  """The outside patient that scored 0: the largest blob is a confident false
  positive, so the component step deletes the tumour. Three members see the
  false positive as well, two the tumour alone: those two disagree with the mask."""
  shape = (8, 64, 64)
  tumour = _blob(shape, (2, 40, 40), (3, 10, 10), 0.95)           # 300 voxels
  false_positive = _blob(shape, (1, 5, 5), (5, 12, 12), 0.97)     # 720 voxels
  members = [np.maximum(tumour, false_positive)] * 3 + [tumour] * 2
  probabilities = np.mean(members, axis=0)  # the false positive at 0.58, the tumour at 0.95
  mask = inference.postprocess(probabilities, SHIPPED)
  assert mask[1:6, 5:17, 5:17].all() and not mask[2:5, 40:50, 40:50].any()  # the tumour is gone
  rule = quality.Rule("member_agreement", 0.7)
  estimate = quality.estimate(probabilities, mask, SHIPPED, rule,
                              member_masks=[inference.postprocess(m, SHIPPED) for m in members])
  assert estimate.review and estimate.score == pytest.approx(0.6) and "member agreement" in estimate.reason
  # The same mask with members that agree is not flagged.
  agreeing = quality.estimate(probabilities, mask, SHIPPED, rule, member_masks=[mask] * 5)
  assert not agreeing.review and agreeing.score == 1.0
  assert estimate.signals["kept_fraction"] == pytest.approx(720 / 1020)


def test_a_mask_that_moves_with_the_threshold_or_the_view_is_flagged():
  shape = (6, 32, 32)
  certain = _blob(shape, (1, 8, 8), (4, 10, 10), 0.99)
  doubtful = certain.copy()
  doubtful[1:5, 8:18, 13:18] = 0.55  # half the blob barely above 0.5
  rule = quality.DEFAULT_SINGLE
  sure = quality.estimate(certain, certain >= 0.5, SHIPPED, rule, view_masks=[certain >= 0.5])
  assert not sure.review and sure.score == 1.0
  moving = quality.estimate(doubtful, doubtful >= 0.5, SHIPPED, rule, view_masks=[doubtful >= 0.5])
  assert moving.review and moving.signals["threshold_stability"] == pytest.approx(2 * 200 / (400 + 200))
  mirrored_off = certain >= 0.5
  mirrored_off = np.roll(mirrored_off, 6, axis=2)
  shifted = quality.estimate(certain, certain >= 0.5, SHIPPED, rule, view_masks=[mirrored_off])
  assert shifted.review and shifted.signals["view_agreement"] < 0.5


def test_an_empty_or_tiny_mask_is_reported_as_no_tumour_found():
  probabilities = np.zeros((4, 32, 32), np.float32)
  nothing = quality.estimate(probabilities, probabilities > 0.5, SHIPPED, quality.DEFAULT_SINGLE,
                             view_masks=[probabilities > 0.5])
  assert nothing.review and nothing.score == 0.0 and nothing.reason.startswith("no tumour found")
  assert nothing.predicted_voxels == 0
  probabilities[1, 3:5, 3:5] = 0.9  # 4 voxels
  tiny = quality.estimate(probabilities, probabilities > 0.5, SHIPPED, quality.DEFAULT_SINGLE,
                          view_masks=[probabilities > 0.5])
  assert tiny.review and "4 voxels" in tiny.reason and tiny.as_row()["predicted_voxels"] == 4


def test_the_rule_is_read_from_a_model_folder_and_a_bad_one_is_named(tmp_path):
  assert quality.Rule.load(tmp_path) is None
  quality.Rule("view_agreement", 0.83, "test").save(tmp_path)
  assert quality.Rule.load(tmp_path) == quality.Rule("view_agreement", 0.83, "test")
  assert loading.quality_rule([str(tmp_path)], 1) == quality.Rule("view_agreement", 0.83, "test")
  assert loading.quality_rule([str(tmp_path), str(tmp_path)], 2) == quality.DEFAULT_ENSEMBLE
  assert loading.quality_rule(tmp_path, 1) == quality.Rule("view_agreement", 0.83, "test")


def test_a_pretrained_rule_holds_for_its_own_ensemble_only(tmp_path, caplog):
  """The shipped rule's threshold was fitted to the five shipped members'
  agreement; with another model added it no longer holds, so the default
  is used, and the log says so."""
  shipped = quality.Rule.load(pretrained.model_dir(pretrained.DEFAULT))
  assert shipped is not None and shipped != quality.DEFAULT_ENSEMBLE
  assert loading.quality_rule(pretrained.DEFAULT, 5) == shipped
  assert loading.quality_rule([pretrained.DEFAULT], 5) == shipped
  quality.Rule("view_agreement", 0.83, "test").save(tmp_path)
  with caplog.at_level(logging.WARNING):
    assert loading.quality_rule([pretrained.DEFAULT, str(tmp_path)], 6) == quality.DEFAULT_ENSEMBLE
  assert any("mixes a pretrained ensemble with other models" in r.getMessage() for r in caplog.records)
  (tmp_path / quality.QUALITY_FILE).write_text(json.dumps({"signal": "vibes", "review_threshold": 0.5}))
  with pytest.raises(ValueError, match="quality signal"):
    quality.Rule.load(tmp_path)
  (tmp_path / quality.QUALITY_FILE).write_text("{}")
  with pytest.raises(ValueError, match=f"{quality.QUALITY_FILE}: not a quality rule"):
    quality.Rule.load(tmp_path)
  with pytest.raises(ValueError, match="review_threshold"):
    quality.Rule("view_agreement", 1.5)


def test_summary_of_estimates_against_true_dice():
  scores = np.array([0.1, 0.2, 0.9, 0.95, 0.97])
  dice = np.array([0.3, 0.5, 0.8, 0.9, 0.92])
  summary = quality.summarise(scores, dice, scores < 0.5)
  assert summary["roc_auc"] == 1.0 and summary["spearman_rho"] == pytest.approx(1.0)
  assert summary["failures_flagged_share"] == 1.0 and summary["flagged_share"] == pytest.approx(0.4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dataset):
  from conftest import tiny_config
  from lgg_jax import train
  root = tmp_path_factory.mktemp("quality_run")
  config = tiny_config(root, manual_dir=tiny_dataset.parent)
  config.write_report = False
  train.train_and_evaluate(config, root / "run")
  return root, config


def test_assess_gives_segment_s_masks_and_probabilities_with_a_spread_and_an_estimate(tiny_run):
  from lgg_jax import export
  from lgg_jax.data import pipeline
  root, config = tiny_run
  data = pipeline.load(config)
  volume, _ = data.volume(data.patients(data.split.test)[0])
  single = Segmenter.load(root / "run")
  assessed = single.assess(volume)
  probabilities, masks = single.segment(volume)
  np.testing.assert_array_equal(assessed.probabilities, probabilities)
  np.testing.assert_array_equal(assessed.masks, masks)
  assert assessed.uncertainty.shape == masks.shape and assessed.uncertainty.dtype == np.float32
  # The second view through the public API: the mirrored volume's probabilities, mirrored back.
  mirrored = single.predict(np.ascontiguousarray(volume[:, :, ::-1]), tta="none")[:, :, ::-1]
  assert np.abs(mirrored - probabilities).max() > 1e-4  # a real second view, not the first again
  np.testing.assert_allclose(assessed.uncertainty, np.abs(probabilities - mirrored) / 2, atol=1e-6)
  assert 0.0 <= assessed.estimate.score <= 1.0 and single.rule == quality.DEFAULT_SINGLE
  # An export carries its rule; an ensemble assesses with its members' agreement and the mean's masks.
  exported = export.export_run(root / "run", root / "export", forward=False)
  assert quality.Rule.load(exported).review_threshold == quality.DEFAULT_SINGLE.review_threshold
  assert Segmenter.load(exported).rule.review_threshold == quality.DEFAULT_SINGLE.review_threshold
  quality.Rule("threshold_stability", 0.5, "test").save(exported)
  assert Segmenter.load(exported).rule.signal == "threshold_stability"
  pair = Segmenter.load([root / "run", exported])
  both = pair.assess(volume)
  np.testing.assert_array_equal(both.probabilities, pair.predict(volume))
  assert "member_agreement" in both.estimate.signals and pair.rule == quality.DEFAULT_ENSEMBLE
  np.testing.assert_allclose(both.uncertainty, 0.0, atol=1e-6)  # the same weights twice: no spread


def test_the_signals_are_measured_under_the_views_the_rule_was_measured_under(tiny_run, tmp_path):
  """The single-model rule was measured without TTA; under dihedral TTA the
  softer probabilities lowered threshold_stability, and good masks were
  flagged (4 more of 13 dev patients). The delivered masks stay the TTA's."""
  from lgg_jax.data import pipeline
  root, config = tiny_run
  data = pipeline.load(config)
  volume, _ = data.volume(data.patients(data.split.test)[0])
  single = Segmenter.load(root / "run")
  # A threshold that gives this tiny model a mask of about 2% of the voxels, so the signals are not all 0.
  threshold = float(np.quantile(single.predict(volume, tta="dihedral"), 0.98))
  plain, dihedral = (single.assess(volume, tta=tta, threshold=threshold) for tta in ("none", "dihedral"))
  np.testing.assert_array_equal(dihedral.masks, single.segment(volume, tta="dihedral", threshold=threshold)[1])
  assert not np.array_equal(dihedral.probabilities, plain.probabilities)
  assert min(plain.masks.sum(), dihedral.masks.sum()) >= quality.MIN_VOXELS
  assert dihedral.estimate.signals == plain.estimate.signals and dihedral.estimate.score == plain.estimate.score
  assert dihedral.estimate.predicted_voxels == int(dihedral.masks.sum()) != int(plain.masks.sum())
  # A rule measured under dihedral views is applied to the dihedral pass itself.
  quality.Rule("confidence", 0.5, "test", tta="dihedral").save(tmp_path)
  assert quality.Rule.load(tmp_path).tta == "dihedral"
  under_dihedral = Segmenter(single.members, rule=quality.Rule.load(tmp_path))
  own = quality.signals(dihedral.probabilities, dihedral.masks, single.settings.replace(tta="dihedral",
                                                                                        threshold=threshold))
  assert under_dihedral.assess(volume, tta="dihedral", threshold=threshold).estimate.signals["confidence"] == \
      own["confidence"] != plain.estimate.signals["confidence"]
  with pytest.raises(ValueError, match="quality rule tta: want one of"):
    quality.Rule("threshold_stability", 0.5, "test", tta="d8")


def test_predict_saves_probabilities_and_uncertainty_in_the_input_grid_and_flags_in_its_rows(
    tiny_run, tiny_dataset, tmp_path):
  import nibabel as nib
  from lgg_jax import predict
  root, _ = tiny_run
  seg = Segmenter.load(root / "run")
  folder = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
  results = predict.predict(root / "run", folder, tmp_path / "slices", save_probabilities=True)
  [case] = predict.find_cases(folder)
  assessed = seg.assess(case.images)
  written = {kind: nib.load(str(tmp_path / "slices" / case.name / f"{case.name}_{kind}.nii.gz"))
             for kind in ("probabilities", "uncertainty")}
  for kind, expected in (("probabilities", assessed.probabilities), ("uncertainty", assessed.uncertainty)):
    image = written[kind]
    assert image.get_data_dtype() == np.float32 and np.allclose(image.affine, np.eye(4))
    assert image.shape == (256, 256, len(case.images))
    np.testing.assert_array_equal(predict.to_display_slices(np.asarray(image.dataobj)), expected)
  saved = json.loads((tmp_path / "slices" / "predictions.json").read_text())
  assert saved["cases"][0]["quality"] == pytest.approx(assessed.estimate.score, abs=1e-4)
  assert saved["cases"][0]["review"] == assessed.estimate.review == results[0]["review"]
  assert saved["quality_rule"]["review_threshold"] == quality.DEFAULT_SINGLE.review_threshold
  lines = predict.review_lines(results)
  assert (case.name in lines[1]) if assessed.estimate.review else ("none of the 1" in lines[0])
  # NIfTI input: the maps come back in the input's grid and affine.
  affine = np.diag([0.9, 0.9, 3.0, 1.0])
  affine[:3, 3] = (-10, 20, 5)
  flair = np.moveaxis(case.images[..., 1], 0, -1)[::4, ::4].astype(np.float32)  # (64, 64, S)
  nib.save(nib.Nifti1Image(flair, affine), str(tmp_path / "flair.nii.gz"))
  predict.predict(root / "run", tmp_path / "flair.nii.gz", tmp_path / "nifti", save_probabilities=True)
  image = nib.load(str(tmp_path / "nifti" / "flair" / "flair_probabilities.nii.gz"))
  assert image.shape == flair.shape and np.allclose(image.affine, affine)
  values = np.asarray(image.dataobj)
  assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0


def test_evaluate_and_predict_take_the_given_setting_for_members_that_disagree(tiny_run, tiny_dataset, tmp_path,
                                                                                     monkeypatch):
  from lgg_jax import evaluate, export
  root, _ = tiny_run
  low = export.export_run(root / "run", tmp_path / "low", forward=False, threshold=0.4)
  high = export.export_run(root / "run", tmp_path / "high", forward=False, threshold=0.6)
  with pytest.raises(ValueError, match="disagree on inference threshold"):
    Segmenter.load([low, high])
  assert Segmenter.load([low, high], threshold=0.5).threshold == 0.5
  from lgg_jax import predict
  patient = next(p for p in sorted(tiny_dataset.iterdir()) if p.is_dir())
  predicted = predict.predict([low, high], patient, tmp_path / "predicted", threshold=0.5)
  assert len(predicted) == 1
  assert json.loads((tmp_path / "predicted" / "predictions.json").read_text())["inference"]["threshold"] == 0.5
  summary = evaluate.evaluate_run([str(low), str(high)], manual_dir=str(tiny_dataset.parent), threshold="0.5",
                                  out=tmp_path / "eval")
  assert summary["threshold"] == 0.5 and summary["quality"]["rule"]["signal"] == "member_agreement"
  # A re-run into that folder which stops part-way leaves no index describing its masks.
  def fail(*args, **kwargs):
    raise RuntimeError("stopped part-way")
  monkeypatch.setattr(Segmenter, "assess", fail)
  with pytest.raises(RuntimeError, match="part-way"):
    predict.predict([low, high], patient, tmp_path / "predicted", threshold=0.5)
  assert not (tmp_path / "predicted" / "predictions.json").exists()
  assert not (tmp_path / "predicted" / "review.json").exists()


def test_the_capped_threshold_rule_flags_at_most_its_share_where_youden_flags_more():
  """benchmarks/quality_estimate.py's two stated rules on 40 patients whose
  signal separates the 12 below Dice 0.7 perfectly: Youden's rule flags those
  12 (30%); the capped rule (20%) flags the 8 lowest, all of them failures."""
  from benchmarks import quality_estimate
  rng = np.random.default_rng(0)
  dice = np.concatenate([rng.uniform(0.1, 0.6, 12), rng.uniform(0.75, 0.95, 28)])
  rows = [{"patient": f"p{i}", "fold": i % 5, "dice": float(d), "predicted_voxels": 1000,
           **{s: float(rng.random()) for s in quality.SINGLE_MODEL_SIGNALS}, "view_and_threshold": float(d)}
          for i, d in enumerate(dice)]
  values = quality_estimate.scores(rows, "view_and_threshold")
  youden, capped = quality_estimate.choose(rows), quality_estimate.choose(rows, max_flagged=0.2)
  assert youden.signal == capped.signal == "view_and_threshold"
  assert (values < youden.review_threshold).sum() == 12
  assert (values < capped.review_threshold).sum() == 8 and (dice[values < capped.review_threshold] < 0.7).all()
  _, flagged, rules = quality_estimate.cross_validate(rows, max_flagged=0.2)
  for fold, rule in rules.items():  # each fold's threshold respects the cap on its training patients
    train = np.array([r["fold"] != fold for r in rows])
    assert (values[train] < rule.review_threshold).mean() <= 0.2
  assert flagged.mean() <= 0.25 and not flagged[dice >= 0.7].any()  # held out: no needless flag here


def test_held_out_ensembles_agree_on_a_found_tumour_and_disagree_on_a_false_positive(tmp_path):
  """benchmarks/quality_estimate.py --held_out: each patient's held-out models
  from two folders make one ensemble. Where both find the tumour, they agree
  and the Dice is high; where one keeps a false positive, agreement drops.
  A patient missing from a folder is named, and a fold mismatch is an error."""
  from benchmarks import cv_files, quality_estimate
  shape = (8, 64, 64)
  truth = _blob(shape, (2, 20, 20), (4, 16, 16), 1) > 0
  tumour = _blob(shape, (2, 20, 20), (4, 16, 16), 0.9)
  false_positive = _blob(shape, (0, 40, 40), (8, 20, 20), 0.95)  # larger than the tumour
  first, second = tmp_path / "first", tmp_path / "second"
  first.mkdir(), second.mkdir()

  def save(folder, patient, probabilities, fold):
    np.savez_compressed(folder / f"{patient}.npz", probabilities=probabilities, truth=truth,
                        mirrored=probabilities, fold=np.int32(fold))

  save(first, "TCGA_A", tumour, 0), save(second, "TCGA_A", tumour, 0)
  save(first, "TCGA_B", tumour, 1), save(second, "TCGA_B", np.maximum(tumour, false_positive), 1)
  save(first, "TCGA_C", tumour, 2)  # not in the second folder
  saved = [cv_files.load_patient(p) for p in cv_files.saved_patients(first)]
  rows, missing = quality_estimate.held_out_rows(saved, [str(second)])
  assert missing == ["TCGA_C"] and [r["patient"] for r in rows] == ["TCGA_A", "TCGA_B"]
  agreeing, disagreeing = rows
  assert agreeing["member_agreement"] == 1.0 and agreeing["dice"] == pytest.approx(1.0)
  # B's mean probability: the tumour 0.9, the false positive 0.475 (under 0.5): the mask is the tumour,
  # which the second member's largest component (the false positive) does not share.
  assert disagreeing["dice"] == pytest.approx(1.0) and disagreeing["member_agreement"] == pytest.approx(0.5)
  # member_and_threshold also doubts the false positive's 0.475 (in the mask at 0.3, not at 0.7).
  assert agreeing["member_and_threshold"] == 1.0
  assert disagreeing["member_and_threshold"] == pytest.approx(2 * 1024 / (2 * 1024 + 3200))
  save(second, "TCGA_A", tumour, 3)
  with pytest.raises(ValueError, match="TCGA_A.npz: fold 3"):
    quality_estimate.held_out_rows(saved, [str(second)])
  with pytest.raises(FileNotFoundError, match="--held_out: .*nowhere holds no saved patients"):
    quality_estimate.report_held_out(saved, [str(tmp_path / "nowhere")], 1.0)


def test_size_aware_signals_doubt_a_small_unsure_mask_more_than_a_large_sure_one():
  """expected_dice, certainty and predicted_volume: a large mask with a sharp
  edge scores near 1 on the first two; the same boundary doubt (an edge at
  probability 0.6) costs a small mask more expected Dice than a large one,
  and a small mask scores lower predicted volume."""
  shape = (6, 96, 96)
  large_sure = _blob(shape, (1, 10, 10), (4, 60, 60), 0.99)
  large_unsure, small_unsure = large_sure.copy(), _blob(shape, (2, 40, 40), (2, 6, 6), 0.6)
  large_unsure[1:5, 9, 10:70] = large_unsure[1:5, 70, 10:70] = 0.6   # a doubtful one-pixel rim
  small_unsure[2:4, 42:44, 42:44] = 0.99                             # a sure core in a doubtful rim
  found = {}
  for name, p in (("large_sure", large_sure), ("large_unsure", large_unsure), ("small_unsure", small_unsure)):
    found[name] = quality.signals(p, inference.postprocess(p, SHIPPED), SHIPPED)
  assert found["large_sure"]["expected_dice"] == pytest.approx(0.99 * 2 / 1.99, abs=1e-6)
  assert found["large_sure"]["certainty"] > found["large_unsure"]["certainty"] > found["small_unsure"]["certainty"]
  assert found["large_sure"]["expected_dice"] > found["large_unsure"]["expected_dice"] \
      > found["small_unsure"]["expected_dice"]
  large, small = 4 * 60 * 60, 2 * 6 * 6
  assert found["large_sure"]["predicted_volume"] == pytest.approx(large / (large + metrics.SMALL_TUMOUR_PIXELS))
  assert found["small_unsure"]["predicted_volume"] == pytest.approx(small / (small + metrics.SMALL_TUMOUR_PIXELS))
  empty = quality.signals(np.zeros(shape, np.float32), np.zeros(shape, bool), SHIPPED)
  assert empty["certainty"] == empty["predicted_volume"] == empty["expected_dice"] == 0.0


def test_quality_estimate_rejects_an_unknown_candidate_signal_by_name():
  from absl import flags
  from absl.testing import flagsaver

  from benchmarks import quality_estimate
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(candidates=["certainty", "volume"]):
    with pytest.raises(ValueError, match="^--candidates: want some of view_agreement, .*, got volume$"):
      quality_estimate.main([])


def test_cv_probabilities_are_the_held_out_patients_of_the_named_models(tiny_run, tiny_dataset, tmp_path):
  """benchmarks/cv_probabilities.py predicts each member's recorded test
  patients, refuses a dataset that rebuilds another split, and never takes
  another model's saved files as these models'."""
  import shutil
  from benchmarks import cv_probabilities
  from lgg_jax import parallel
  root, config = tiny_run
  member = loading.member_from_run(root / "run", "best")
  out = tmp_path / "cv"
  out.mkdir()
  written = cv_probabilities.save_fold_probabilities(member, str(tiny_dataset.parent), out, parallel.make_mesh())
  assert sorted(written) == sorted(loading.held_out_patients(root / "run")) and written
  saved = np.load(out / f"{written[0]}.npz")
  assert saved["probabilities"].shape == saved["truth"].shape and int(saved["fold"]) == config.split.fold
  # One patient fewer: the folds are rebuilt differently, so the "held-out" patients would not be.
  fewer = tmp_path / "fewer" / "kaggle_3m"
  shutil.copytree(tiny_dataset, fewer)
  shutil.rmtree(fewer / written[0])
  with pytest.raises(ValueError, match="other test patients than it held out"):
    cv_probabilities.save_fold_probabilities(member, str(fewer), tmp_path / "cv2", parallel.make_mesh())
  with pytest.raises(ValueError, match="no models.json naming their models"):
    cv_probabilities.check_same_models(out, {config.split.fold: str(root / "run")})
  (out / cv_probabilities.MODELS_FILE).write_text(json.dumps({"folds": {str(config.split.fold): "elsewhere"}}))
  with pytest.raises(ValueError, match=f"came from elsewhere, not {root / 'run'}"):
    cv_probabilities.check_same_models(out, {config.split.fold: str(root / "run")})
  cv_probabilities.check_same_models(out, {config.split.fold: "elsewhere"})


def test_a_patient_file_left_half_written_is_not_a_patient(tmp_path):
  from benchmarks import cv_files
  for name in ("TCGA_A_1.npz", "TCGA_B_2.partial.npz", "other.npz"):
    (tmp_path / name).write_bytes(b"")
  assert [p.name for p in cv_files.saved_patients(tmp_path)] == ["TCGA_A_1.npz"]
