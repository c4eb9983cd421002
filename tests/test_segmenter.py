"""A trained run as a model people use: Segmenter, export, TensorBoard, split
files, and one-line errors in every command."""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from lgg_jax import Segmenter, export, inference, loading, train
from lgg_jax.data import pipeline
from lgg_jax.predict import find_cases
from conftest import REAL_DATA, require, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("segmenter")
  config = tiny_config(root)
  config.data.neighbours = 1
  config.data.normalization = "patient"
  config.inference.choose_threshold = True
  config.log_every_steps = 2
  train.train_and_evaluate(config, root / "run")
  return root / "run", config


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  workdir, _ = run
  return export.export_run(workdir, tmp_path_factory.mktemp("exports") / "model")


def _patient(config):
  data = pipeline.load(config)
  patient = data.patients(data.split.test)[0]
  return data, patient


def test_segmenter_from_a_run_equals_the_inference_layer_and_gives_masks(run):
  workdir, config = run
  data, patient = _patient(config)
  volume, _ = data.volume(patient)
  seg = Segmenter.load(workdir)
  probabilities = seg.predict(volume)
  assert probabilities.dtype == np.float32 and probabilities.shape == (len(volume), 256, 256)
  reference = inference.Predictor(loading.member_from_run(workdir)).predict_volume(volume)
  np.testing.assert_array_equal(probabilities, reference)
  summary = json.loads((workdir / "summary.json").read_text())
  assert seg.threshold == summary["inference"]["threshold"]  # chosen on the validation patients
  masks = seg.predict(volume, masks=True)
  np.testing.assert_array_equal(masks, probabilities >= seg.threshold)
  # A given threshold replaces the chosen one: one that keeps a different voxel set.
  other = float(np.quantile(probabilities, 0.999 if (probabilities >= seg.threshold).mean() > 0.001 else 0.99))
  at_other = seg.predict(volume, masks=True, threshold=other)
  np.testing.assert_array_equal(at_other, probabilities >= other)
  assert at_other.any() and not np.array_equal(at_other, masks)
  flips = seg.predict(volume, tta="flips")
  assert flips.shape == probabilities.shape and not np.array_equal(flips, probabilities)
  with pytest.raises(ValueError, match="uint8"):
    seg.predict(volume.astype(np.float32))


def test_export_round_trip_and_ensemble(run, exported):
  workdir, config = run
  data, patient = _patient(config)
  volume, _ = data.volume(patient)
  assert {p.name for p in exported.iterdir()} == {"config.json", "weights.safetensors", "inference.json",
                                                  "forward.jax", "model_card.md", "quality.json"}
  card = (exported / "model_card.md").read_text()
  assert "Not a medical device" in card and patient in card and "patient_dice" in card
  from_run, from_export = Segmenter.load(workdir), Segmenter.load(exported)
  best = from_export.predict(volume)
  np.testing.assert_allclose(best, from_run.predict(volume), atol=1e-6)
  assert from_export.threshold == from_run.threshold
  # An ensemble of two different models: the export (best step) and the run's
  # other kept checkpoint; it predicts the mean of their own probabilities.
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  other_step = next(s for s in kept if s != from_export.members[0].step)
  other = Segmenter.load(workdir, checkpoint=str(other_step)).predict(volume)
  assert np.abs(other - best).max() > 1e-3  # the two members really differ
  ensemble = Segmenter.load([workdir, exported], checkpoint=str(other_step))
  assert [m.step for m in ensemble.members] == [other_step, from_export.members[0].step]
  np.testing.assert_allclose(ensemble.predict(volume), (other + best) / 2, atol=1e-6)
  assert ensemble.threshold == from_run.threshold
  with pytest.raises(FileExistsError, match="not empty"):
    export.export_run(workdir, exported)
  # An export of another checkpoint says whose test figures its card shows.
  earlier = export.export_run(workdir, exported.parent / "other_step", str(other_step), forward=False)
  card = (earlier / "model_card.md").read_text()
  assert f"best checkpoint's figures (step {from_export.members[0].step}), not this export's (step {other_step})" in card
  assert "not this export's" not in (exported / "model_card.md").read_text()


@pytest.mark.parametrize("name", ["config.json", "inference.json", "summary.json"])
def test_a_json_file_cut_short_is_an_error_naming_it(run, exported, tmp_path, name):
  source = run[0] if name == "summary.json" else exported
  copy = tmp_path / "copy"
  shutil.copytree(source, copy, ignore=shutil.ignore_patterns("checkpoints") if name == "summary.json" else None)
  if name == "summary.json":
    (copy / "checkpoints").symlink_to(source / "checkpoints")
  text = (copy / name).read_text()
  (copy / name).write_text(text[:len(text) // 2])
  with pytest.raises(ValueError, match=f"{copy / name}: not readable JSON"):
    Segmenter.load(copy)


def test_exported_forward_pass_runs_with_only_jax_and_numpy(run, exported, tmp_path):
  """A fresh process that imports jax and numpy alone reproduces the model's
  probabilities from the serialized StableHLO."""
  workdir, config = run
  data, patient = _patient(config)
  volume, _ = data.volume(patient)
  from lgg_jax.data import preprocess
  np.save(tmp_path / "inputs.npy", preprocess.model_inputs(volume, config.data))
  expected = Segmenter.load(workdir).predict(volume, tta="none")
  code = ("import sys, jax, numpy as np\n"
          f"forward = jax.export.deserialize(open({str(exported / 'forward.jax')!r}, 'rb').read())\n"
          f"np.save({str(tmp_path / 'out.npy')!r}, np.asarray(forward.call(np.load({str(tmp_path / 'inputs.npy')!r}))))\n"
          "assert not [m for m in sys.modules if m.startswith(('lgg_jax', 'flax', 'optax'))]\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def test_segment_a_real_patient_folder_from_python(exported):
  """A real patient folder, read by find_cases in slice order: the Segmenter's
  probabilities are the inference layer's on those slices, and its masks
  (this model keeps every component) those probabilities at its threshold."""
  require(REAL_DATA, "../shared/data/lgg_dev")
  folder = REAL_DATA / "TCGA_CS_4941_19960909"
  case = find_cases(folder)[0]
  files = sorted((f for f in folder.glob("*.tif") if not f.stem.endswith("_mask")),
                 key=lambda f: int(f.stem.rsplit("_", 1)[1]))
  np.testing.assert_array_equal(case.images, np.stack([tifffile.imread(f) for f in files]))
  seg = Segmenter.load(exported)
  assert not seg.members[0].config.inference.largest_component
  probabilities = seg.predict(case.images)
  reference = inference.Predictor(loading.member_from_export(exported)).predict_volume(case.images)
  np.testing.assert_array_equal(probabilities, reference)
  assert probabilities.std() > 0  # not a constant map
  masks = seg.predict(case.images, masks=True)
  assert masks.shape == (len(files), 256, 256) and masks.dtype == bool
  np.testing.assert_array_equal(masks, reference >= seg.threshold)


def test_tensorboard_holds_curves_overlays_and_the_config(run):
  from tensorboard.backend.event_processing import event_accumulator
  workdir, config = run
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
  events.Reload()
  tags = events.Tags()
  for scalar in ("train/step_loss", "train/step_grad_norm", "train/lr", "val/dice", "train/loss"):
    assert scalar in tags["scalars"], (scalar, tags["scalars"])
  assert len(events.Scalars("train/step_loss")) >= 2
  assert [e.step for e in events.Scalars("val/dice")] == [r["step"] for r in map(
      json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
  overlays = events.Images("validation/overlays")
  assert len(overlays) == config.num_epochs and overlays[-1].width == 512
  assert "config/text_summary" in tags["tensors"]
  assert (workdir / "progress.png").stat().st_size > 5000


def test_split_file_reproduces_the_run_and_bad_ones_are_named(run, tmp_path):
  workdir, config = run
  written = json.loads((workdir / "split.json").read_text())
  shared = config.copy_and_resolve_references()
  shared.split.file = str(workdir / "split.json")
  shared.split.seed = 99  # ignored: the file decides
  data = pipeline.load(shared)
  assert data.split.patients == {k: written[k] for k in ("train", "val", "test")}
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({**written, "test": written["test"] + ["TCGA_XX_0000_20000101"]}))
  shared.split.file = str(bad)
  with pytest.raises(ValueError, match=f"{bad}.*TCGA_XX_0000"):
    pipeline.load(shared)
  bad.write_text(json.dumps({**written, "val": written["val"] + written["test"][:1]}))
  with pytest.raises(ValueError, match="in both"):
    pipeline.load(shared)
  bad.write_text(json.dumps({**written, "test": []}))  # once: trained, then failed with nothing to report
  with pytest.raises(ValueError, match=f"{bad}: test lists no patient"):
    pipeline.load(shared)


def _command(*args, env=None):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,message", [
    (("lgg_jax.evaluate", "--workdir=/nonexistent/run"), "not a run folder"),
    (("lgg_jax.predict", "--workdir=/nonexistent/run", "--input=/nonexistent/scans"), "does not exist"),
    (("lgg_jax.export", "--workdir=/nonexistent/run", "--out=/tmp/never"), "not a run folder"),
    (("lgg_jax.explore", "--manual_dir=/nonexistent/lgg"), "does not exist"),
    (("experiments.run", "--sweep=/nonexistent/sweep.py"), "does not exist"),
    (("lgg_jax.main", f"--config={REPO / 'tests' / 'tiny_config.py'}", "--config.model.name=vnet"),
     "config.model.name: unknown value 'vnet'"),
])
def test_commands_end_errors_in_one_line(args, message):
  result = _command(*args)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, result.stderr[-1500:]
  assert "Traceback" not in result.stderr


def test_traceback_flag_shows_the_traceback():
  """One command is enough: every command ends through the same `cli.run`."""
  result = _command("lgg_jax.export", "--workdir=/nonexistent/run", "--out=/tmp/never", "--traceback")
  assert result.returncode != 0 and "Traceback" in result.stderr and "not a run folder" in result.stderr


def test_a_truncated_tiff_is_one_line_naming_it(tiny_dataset, tmp_path):
  root = tmp_path / "src" / "kaggle_3m"
  shutil.copytree(tiny_dataset, root)
  patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
  image = patient / f"{patient.name}_2.tif"
  image.write_bytes(image.read_bytes()[:300])
  result = _command("lgg_jax.main", f"--config={REPO / 'tests' / 'tiny_config.py'}", f"--workdir={tmp_path / 'run'}",
                    f"--config.data.manual_dir={root}", f"--config.data.data_dir={tmp_path / 'cache'}")
  assert result.returncode == 1
  with pytest.raises(Exception) as reading:  # what tifffile itself says of the truncated file
    tifffile.imread(io.BytesIO(image.read_bytes()))
  expected = f"error: {image}: unreadable TIFF ({type(reading.value).__name__}: {reading.value})"
  assert result.stderr.strip().splitlines()[-1] == expected, result.stderr[-1500:]
  assert "Traceback" not in result.stderr


def test_the_library_works_from_any_directory_with_only_lgg_jax_importable(run, exported, tmp_path):
  """What a user who installed only lgg_jax has: a copy of the package on the
  path, no configs/, experiments/ or benchmarks/, and no checkout as cwd. The
  child drops any editable-install finder (the development environment's may
  map configs/ to a checkout) so that the copy is all there is."""
  workdir, config = run
  data, patient = _patient(config)
  volume, _ = data.volume(patient)
  np.save(tmp_path / "volume.npy", volume)
  expected = Segmenter.load(workdir).predict(volume)
  site = tmp_path / "site"
  shutil.copytree(REPO / "lgg_jax", site / "lgg_jax", ignore=shutil.ignore_patterns("__pycache__"))
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  patient_folder = pipeline.resolve_manual_dir(config.data) / "kaggle_3m" / patient
  code = ("import importlib.util, json, sys\n"
          "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
          "assert [n for n in ('configs', 'experiments', 'benchmarks') if importlib.util.find_spec(n)] == []\n"
          "import numpy as np\n"
          "import lgg_jax\n"
          "from lgg_jax import evaluate, export, predict, segmenter\n"
          f"assert lgg_jax.__file__ == {str(site / 'lgg_jax' / '__init__.py')!r}, lgg_jax.__file__\n"
          f"volume = np.load({str(tmp_path / 'volume.npy')!r})\n"
          f"np.save('from_run.npy', segmenter.Segmenter.load({str(workdir)!r}).predict(volume))\n"
          f"np.save('from_export.npy', segmenter.Segmenter.load({str(exported)!r}).predict(volume))\n"
          f"again = export.export_run({str(workdir)!r}, 'export')\n"
          "np.save('from_new_export.npy', segmenter.Segmenter.load(again).predict(volume))\n"
          f"predicted = predict.predict({str(workdir)!r}, {str(patient_folder)!r}, 'predicted')\n"
          f"scored = evaluate.evaluate_run({str(workdir)!r}, out='evaluation')\n"
          "print(json.dumps({'predicted': predicted[0]['case'], 'test_dice': scored['patient_dice'],\n"
          "                  'imported': sorted({m.split('.')[0] for m in sys.modules} & {'configs', 'experiments', 'benchmarks'})}))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(site)
  result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  summary = json.loads((workdir / "summary.json").read_text())
  assert report == {"predicted": patient, "test_dice": pytest.approx(summary["test_dice"], abs=1e-6), "imported": []}
  # One device there, eight here: the batches split differently, hence not bit for bit.
  np.testing.assert_allclose(np.load(elsewhere / "from_run.npy"), expected, atol=1e-6)
  np.testing.assert_allclose(np.load(elsewhere / "from_export.npy"), expected, atol=1e-6)
  np.testing.assert_allclose(np.load(elsewhere / "from_new_export.npy"), expected, atol=1e-6)
  assert (elsewhere / "evaluation" / "per_patient.csv").is_file()
