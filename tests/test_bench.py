"""The prepared GPU check runs end to end as its CPU dry run; the brain-box measurement counts right;
the rerun comparison pairs patients and refuses rows scored two ways."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

import pytest

from benchmarks import bench, brain_box, rerun_noise

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_measures_in_priority_order_and_writes_json_and_markdown(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has
  # The script calls `python`: make it this interpreter, as in an activated venv.
  env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
  # The first measurement, real, and the pending list: each later one costs about a minute here (a
  # ResNeXt compile, the torch peer); test_check_mode_records_every_kind_of_measurement runs the whole
  # list with stubs. The 300 s deadline bounds a slow or busy machine; it is not the stopping rule.
  result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), f"--out={tmp_path}", "--dry_run",
                           "--deadline_s=300", "--max_measurements=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  report = json.loads((tmp_path / "check.json").read_text())
  names = [m["name"] for m in report["measurements"]]
  assert report["dry_run"] and names == ["resnext_unet bf16 b64"]
  assert not [m for m in report["measurements"] if "error" in m]
  # Everything is measured or, past the deadline, listed as pending: nothing is dropped.
  assert len(names) + len(report["pending"]) >= 8 and not set(names) & set(report["pending"])
  first = report["measurements"][0]["result"]
  assert first["step_s"] > 0 and first["compile_s"] > 0 and first["resident_data_counted"] is False
  assert not any("compile" in n for n in names + report["pending"])  # no torch.compile on the CPU
  assert (tmp_path / "check.md").read_text().count("\n|") >= len(names)
  assert "Not measured (after --max_measurements=1): " in (tmp_path / "check.md").read_text()


def test_the_check_lists_input_rows_measure_both_input_paths():
  """The check's input measurements, in process at tiny sizes (the dry run above stops before them)."""
  device = bench.input_device_row(batch=2, size=32, augment="distortions", repeats=2)
  host = bench.input_host_row(batch=2, size=32, augment="distortions", workers=0, batches=2)
  assert device["images_per_s"] > 0 and device["resident_data_counted"] is True
  assert host["images_per_s"] > 0 and host["workers"] == 0


def test_check_mode_records_every_kind_of_measurement(tmp_path, monkeypatch):
  """The whole list, with the measurements stubbed: the dry run above stops at
  its deadline on a busy CPU before it reaches the later kinds (training)."""
  measured = []
  monkeypatch.setattr(bench, "_in_own_process",
                      lambda spec, timeout: measured.append(spec["kind"]) or {"step_s": 0.25, "images_per_s": 16.0})
  trainings = []
  monkeypatch.setattr(bench, "training_row",
                      lambda **kwargs: trainings.append(kwargs) or {"images_per_s_overall": 4.0, "epochs": 1})
  report = bench.run_check(tmp_path, dry_run=True, deadline_s=600.0, workers=2, peer="")
  assert [m for m in report["measurements"] if "error" in m] == [] and report["pending"] == []
  assert [m["name"] for m in report["measurements"]] == [c.name for c in bench.check_list(True, 2, None)]
  assert len(trainings) == 1 and trainings[0]["step_s"] == 0.25  # sized by the first ResNeXt step
  assert sorted(set(measured)) == ["input_device", "input_host", "train_step"]
  assert json.loads((tmp_path / "check.json").read_text())["measurements"] == report["measurements"]


def test_brain_box_side_is_the_larger_extent_of_the_voxels_above_the_threshold():
  volume = np.zeros((4, 256, 256, 3), np.uint8)
  volume[1, 10:50, 20:100, 1] = 200   # 40 rows x 80 columns, on one slice and one channel
  volume[2, 30:40, 120:121, 0] = 5    # faint: below 10% of the maximum
  assert brain_box.square_side(volume, 20) == 80
  assert brain_box.square_side(volume, 0) == 101
  assert brain_box.square_side(volume, 255) == 0


def test_rerun_noise_pairs_each_patient_and_refuses_other_settings(tmp_path, monkeypatch):
  settings = {"threshold": 0.5, "tta": "dihedral", "largest_component": True}

  def write(sweep, row, fold, dice, inference=settings):
    folder = tmp_path / sweep
    folder.mkdir(exist_ok=True)
    # Every patient: 10 slices, 4 with tumour; the first of a fold is a small tumour with one false positive.
    rows = [{"patient": f"p{fold}{i}", "dice": d, "slices": 10, "tumour_slices": 4, "hd95_px": 2.0 + i,
             "false_positive_slices": int(i == 0), "true_pixels": 5000 if i == 0 else 20000}
            for i, d in enumerate(dice)]
    (folder / f"{row}-fold{fold}-seed0.json").write_text(json.dumps(
        {"overrides": {"split.fold": fold}, "inference": inference, "test_per_patient": rows, "epochs": 1,
         "test": {"patient_dice": float(np.mean(dice))}}))

  monkeypatch.setattr(rerun_noise, "RESULTS", tmp_path)
  write("recipe", "old", 0, [0.8, 0.6, 0.7])
  write("recipe", "old", 1, [0.9, 0.5])
  write("ensemble", "new", 0, [0.7, 0.8, 0.7])  # -0.1, +0.2, 0
  write("ensemble", "new", 3, [0.9])  # no old fold 3: left out
  lines = rerun_noise.compare(("recipe", "old"), ("ensemble", "new"))
  table = [line for line in lines if line.startswith("| 0 |") or line.startswith("| all |")]
  assert table[0].startswith("| 0 | 3 | 0.7000 | 0.7333 | +0.0333") and table[1].startswith("| all | 3 |")
  # Over fold 0: median, below 0.7, missed, HD95 (2, 3, 4), FP (1 of 18 tumour-free slices), small tumours.
  assert "| old (old) | 0.700 | 1 | 0 | 3.0 | 5.6% | 0.800 (1) |" in lines
  assert "| new (new) | 0.700 | 0 | 0 | 3.0 | 5.6% | 0.700 (1) |" in lines
  write("ensemble", "new", 1, [0.9, 0.5], {**settings, "tta": "none"})
  with pytest.raises(ValueError, match="fold 1: old and new were scored with different settings"):
    rerun_noise.compare(("recipe", "old"), ("ensemble", "new"))
