"""What a user gets is what was scored: one path from probabilities to masks.

A tiny run with `inference.largest_component=True` is scored by evaluate,
segmented by predict (PNG masks), by `Segmenter` on the run and on its
export; a second blob planted in the probabilities (the tiny model need not
make one) must be removed by the component step, and every path must give
the same masks and the same per-patient Dice.
"""

import csv
import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from lgg_jax import Segmenter, evaluate, export, inference, loading, parallel, predict, train
from lgg_jax.data import pipeline, preprocess
from conftest import tiny_config

BLOB = (0, slice(4, 10), slice(4, 10))  # a small second component: first slice, top-left corner


def _plant(probabilities: np.ndarray) -> np.ndarray:
  """The model's probabilities with a large 3-D blob in the middle and a
  small one in a corner: two components whatever the model predicts."""
  planted = probabilities.copy()
  middle = len(planted) // 2
  planted[max(middle - 1, 0):middle + 2, 96:160, 96:160] = 0.9
  planted[BLOB] = 0.9
  return planted


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, tiny_dataset):
  root = tmp_path_factory.mktemp("one_truth")
  config = tiny_config(root, manual_dir=tiny_dataset.parent)
  config.inference.largest_component = True
  config.write_report = False
  train.train_and_evaluate(config, root / "run")
  return root, config


@pytest.fixture
def planted(monkeypatch):
  original = inference.Predictor.predict_volume
  monkeypatch.setattr(inference.Predictor, "predict_volume", lambda self, volume: _plant(original(self, volume)))


def _png_masks(folder, patient, slices):
  files = sorted((folder / patient / "masks").glob("*_pred.png"), key=lambda f: int(f.stem.split("_")[-2]))
  assert len(files) == slices
  return np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0 for f in files])


def test_every_path_gives_the_scored_masks(planted_run, planted, tiny_dataset, monkeypatch):
  root, config = planted_run
  workdir = root / "run"
  data = pipeline.load(config)
  patients = data.patients(data.split.test)

  scored = {}
  original_score_patient = evaluate.score_patient

  def spy(pred, truth, evaluation_config=None):
    scored[len(scored)] = pred
    return original_score_patient(pred, truth, evaluation_config)

  monkeypatch.setattr(evaluate, "score_patient", spy)
  result = evaluate.evaluate_run(workdir, split="test", out=str(root / "evaluation"))
  monkeypatch.setattr(evaluate, "score_patient", original_score_patient)
  assert result["largest_component"] and result["inference"]["largest_component"]
  evaluated = dict(zip(patients, scored.values()))
  with open(root / "evaluation" / "per_patient.csv") as f:
    rows = {r["patient"]: r for r in csv.DictReader(f)}
  assert set(rows) == set(patients)

  exported = export.export_run(workdir, root / "export")
  assert json.loads((exported / "inference.json").read_text())["largest_component"] is True
  from_run, from_export = Segmenter.load(workdir), Segmenter.load(exported)
  predicted = predict.predict(workdir, tiny_dataset, root / "predictions")
  dice_of = {r["case"]: r["dice"] for r in predicted}

  for patient in patients:
    volume, truth = data.volume(patient)
    masks = from_run.predict(volume, masks=True)
    # The component step changes the mask: the planted blob is thresholded in and removed.
    unprocessed = from_run.predict(volume, masks=True, largest_component=False)
    assert unprocessed[BLOB].all() and not masks[BLOB].any()
    assert (unprocessed != masks).any()
    np.testing.assert_array_equal(evaluated[patient], masks)
    np.testing.assert_array_equal(from_export.predict(volume, masks=True), masks)
    np.testing.assert_array_equal(_png_masks(root / "predictions", patient, len(volume)), masks)
    assert dice_of[patient] == pytest.approx(float(rows[patient]["dice"]), abs=1e-6)


def test_a_patients_last_batch_is_rounded_to_8_rows_not_to_a_whole_batch(planted_run, tiny_dataset):
  """19 slices in eval batches of 16 on 8 devices: batches of 16 and 8 (not
  two of 16), and the probabilities of one unpadded call of the same step."""
  root, config = planted_run
  member = loading.member_from_run(root / "run")
  predictor = inference.Predictor(member)
  assert predictor.mesh.devices.size == 8 and member.config.eval_batch_size == 16
  assert predictor._chunks(member, 19) == [16, 8] and predictor._chunks(member, 32) == [16, 16]
  assert predictor._chunks(member, 3) == [8]
  data = pipeline.load(config)
  volume = np.concatenate([data.volume(p)[0] for p in data.patients(data.split.test)] * 4)[:19]
  inputs = preprocess.model_inputs(volume, member.config.data)
  whole = np.concatenate([inputs, np.zeros((24 - 19,) + inputs.shape[1:], inputs.dtype)])
  step = inference.make_probability_step(member.graphdef, "none", preprocess.SOURCE_SIZE)
  expected = np.asarray(step(member.variables, parallel.global_batch({"image": whole}, predictor.mesh)["image"]))
  np.testing.assert_allclose(predictor.predict_volume(volume), expected[:19], atol=1e-6)


def test_component_fraction_keeps_the_parts_of_a_multifocal_tumour():
  volume = np.zeros((6, 32, 32), bool)
  volume[1:4, 2:12, 2:12] = True     # 300 voxels
  volume[2:4, 20:28, 20:28] = True   # 128 voxels: 0.43 of the largest
  volume[5, 30:32, 0:2] = True       # 4 voxels
  largest = inference.keep_components(volume)
  assert largest.sum() == 300
  both = inference.keep_components(volume, 0.4)
  assert both.sum() == 428 and not both[5].any()
  assert inference.keep_components(volume, 0.5).sum() == 300
  settings = inference.Settings(largest_component=True, component_fraction=0.4)
  np.testing.assert_array_equal(inference.postprocess(volume.astype(np.float32), settings), both)
  np.testing.assert_array_equal(inference.postprocess(volume.astype(np.float32), inference.Settings()), volume)


def test_component_rank_by_confidence_keeps_a_confident_tumour_over_a_larger_doubtful_false_positive():
  probabilities = np.zeros((6, 32, 32), np.float32)
  probabilities[1:4, 2:14, 2:14] = 0.55   # 432 voxels, barely above the threshold: the false positive
  probabilities[2:4, 20:28, 20:28] = 0.97  # 128 voxels, confident: the tumour
  probabilities[2:4, 23:25, 23:25] = 0.99
  base = inference.Settings(largest_component=True)
  by_volume = inference.postprocess(probabilities, base)
  assert by_volume.sum() == 432 and not by_volume[2, 22, 22]
  by_max = inference.postprocess(probabilities, base.replace(component_rank="probability_max"))
  assert by_max.sum() == 128 and by_max[2, 22, 22]
  # Summed probability: 432 * 0.55 = 237.6 against about 124.5: the false positive still wins it,
  # and with a fraction every component of at least that share of the top sum is kept.
  assert inference.postprocess(probabilities, base.replace(component_rank="probability_sum")).sum() == 432
  both = inference.postprocess(probabilities, base.replace(component_rank="probability_sum", component_fraction=0.5))
  assert both.sum() == 432 + 128
  with pytest.raises(ValueError, match="component_rank: want one of"):
    inference.Settings(component_rank="biggest")
  with pytest.raises(ValueError, match="give them"):
    inference.keep_components(probabilities > 0.5, rank="probability_max")
  # Older settings files lack the field: volume, as before.
  assert inference.Settings.from_dict({"largest_component": True}, inference.Settings()).component_rank == "volume"


def test_an_ensemble_has_one_setting_or_an_error_naming_its_members():
  @dataclasses.dataclass
  class Stub:
    source: str
    settings: inference.Settings

  a = Stub("runs/fold0", inference.Settings(largest_component=True))
  b = Stub("runs/fold1", inference.Settings(largest_component=False))
  with pytest.raises(ValueError, match="largest_component.*runs/fold0: True, runs/fold1: False"):
    inference.ensemble_settings([a, b])
  assert inference.ensemble_settings([a, b], largest_component=False).largest_component is False
  assert inference.ensemble_settings([a, a]) == a.settings


def test_validation_keeps_its_cheap_settings():
  import tiny_config as tiny
  config = tiny.get_config()
  config.inference.update(tta="dihedral", largest_component=True, component_fraction=0.3)
  assert inference.validation_settings(config) == inference.Settings(threshold=config.inference.threshold)
  assert inference.Settings.from_config(config) == inference.Settings(config.inference.threshold, "dihedral", True, 0.3)


def test_an_export_names_no_path_of_the_training_machine_and_has_ordinary_modes(planted_run, tiny_dataset):
  root, _ = planted_run
  exported = export.export_run(root / "run", root / "shared_export")
  for name in ("config.json", "model_card.md", "inference.json"):
    text = (exported / name).read_text()
    for local in (str(root), str(tiny_dataset.parent), str(tiny_dataset)):
      assert local not in text, (name, local)
  config = json.loads((exported / "config.json").read_text())
  assert config["data"]["manual_dir"] == tiny_dataset.parent.name
  modes = {p.name: p.stat().st_mode & 0o777 for p in exported.iterdir()}
  umask = os.umask(0)
  os.umask(umask)
  assert modes == {name: 0o666 & ~umask for name in modes}, modes  # as open() makes files, not 0600
  assert Segmenter.load(exported).settings == Segmenter.load(root / "run").settings
  # Exporting a run again gives the same bytes (shipped files are checked by sha256).
  for again in range(3):
    other = export.export_run(root / "run", root / f"export_again{again}", forward=False)
    for name in ("weights.safetensors", "config.json", "inference.json", "model_card.md"):
      assert (other / name).read_bytes() == (exported / name).read_bytes(), (again, name)


def test_the_slice_protocol_scores_only_held_out_slices(tmp_path, tiny_dataset):
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  config.split.protocol = "slice"
  config.num_epochs = 1
  config.write_report = False
  summary = train.train_and_evaluate(config, tmp_path / "run")
  data = pipeline.load(config)
  for row in summary["test_per_patient"]:
    held_out = np.isin(data.records(row["patient"]), data.split.test)
    assert 0 < held_out.sum() < len(held_out)  # the leaky split: some of its slices trained
    assert row["slices"] == held_out.sum()
  assert summary["test"]["slices"] == len(data.split.test)
