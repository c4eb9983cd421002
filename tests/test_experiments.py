import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

from configs import recipe_cpu
from experiments import common, ensemble, recipe, run
from lgg_jax import config_checks, provenance

SWEEPS = sorted((pathlib.Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))
SWEEPS = [p for p in SWEEPS if p.stem not in ("__init__", "run", "common")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("sweep_data")


def _tiny(path, data_dir):
  sweep = run.load_sweep(path, tiny=True)
  sweep["common"]["data.data_dir"] = str(data_dir)
  return sweep


def test_every_sweep_states_command_runtime_and_expectation():
  assert {p.stem for p in SWEEPS} >= {"model_comparison", "loss_ablation", "augmentation_ablation",
                                      "split_protocol", "pretrained_encoder", "recipe"}
  for path in SWEEPS:
    doc = path.read_text().split('"""')[1]
    assert "python -m experiments.run" in doc and "Runtime" in doc and "Should show" in doc, path.name
    full = run.load_sweep(path, tiny=False)
    assert all("split.fold" in m for m in full["members"]) and len(full["members"]) >= 10


# Sweeps whose tiny variant trains in the suite: every row sweep (rows of settings, rescoring rows,
# chains) and two grid sweeps (one with a member lacking its file). The other grid sweeps vary one
# setting that other tests train or compute (each model in test_train, each loss in
# test_losses_metrics, each augmentation set on the host and the device in test_augment and
# test_device_augment); their members pass the config checks below.
TRAINED = ("recipe", "ensemble", "full_resolution", "pretrained_encoder", "split_protocol")
# Rows trained, where not every row: the recipe's r1-r6 each add one setting and r7 holds them all
# (r0 keeps its two seeds, s1 its clipping, r8-r10 rescore r7); full_resolution's f0 is f1 without
# deep supervision, which test_crops and test_deep_supervision train. The rows left out pass the
# config checks above.
ROWS_TRAINED = {"recipe": ("r0-before", "s1-clip-p10-p99", "r7-epochs", "r8-tta", "r9-recipe", "r10-threshold"),
                "full_resolution": ("f1-crops-ds", "f2-shipped")}


def test_every_member_of_every_sweep_passes_the_config_checks():
  for path in SWEEPS:
    for tiny in (True, False):
      sweep = run.load_sweep(path, tiny=tiny)
      for member in sweep["members"]:
        overrides = {**sweep.get("common", {}), **run.overrides_of(member)}
        # Files (the dev patients, ImageNet weights) need not be on this machine.
        overrides.pop("data.manual_dir", None)
        overrides.pop("model.pretrained_path", None)
        assert not run.missing_files(overrides), (path.stem, member)
        config = run.build_config(sweep["config"], overrides)
        config_checks.validate_config(config, device_count=1, process_count=1)


@pytest.mark.parametrize("path", [p for p in SWEEPS if p.stem in TRAINED], ids=lambda p: p.stem)
def test_tiny_sweep_runs_skips_what_it_lacks_and_aggregates(path, tmp_path, data_dir):
  sweep = _tiny(path, data_dir)
  results = tmp_path / "results"
  rows = ROWS_TRAINED.get(path.stem, ())
  status = run.run_sweep(sweep, tmp_path, results, only_rows=rows)
  members = [m for m in sweep["members"] if not rows or m["_row_name"] in rows]
  assert sorted(status) == sorted(run.member_name(m) for m in members)
  for member in members:
    state = status[run.member_name(member)]
    if run.missing_files(run.overrides_of(member)):
      assert state.startswith("skipped: missing")
    else:
      assert state == "finished", state
      written = json.loads((results / f"{run.member_name(member)}.json").read_text())
      assert written["test_per_patient"] and written["provenance"]["git_commit"]
  table = run.aggregate(sweep, tmp_path, results)
  finished = [s for s in status.values() if s == "finished"]
  assert (results / "results.csv").read_text().count("\n") == len(finished) + 1
  assert "Dice mean [95% CI]" in (results / "results.md").read_text()
  assert (tmp_path / "results.png").stat().st_size > 1000
  assert all(0 <= t["mean"] <= 1 for t in table)
  # A rerun skips members whose result file exists, even without their run folders.
  for member_dir in (p for p in tmp_path.iterdir() if p.is_dir() and p.name != "results"):
    (member_dir / "summary.json").unlink(missing_ok=True)
  again = run.run_sweep(sweep, tmp_path, results, only_rows=rows)
  assert all(s == "finished earlier" or s.startswith("skipped") for s in again.values())


def test_each_member_starts_from_its_own_models_config():
  sweep = run.load_sweep(pathlib.Path(run.REPO) / "experiments" / "model_comparison.py", tiny=False)
  rates = {m["config"]: run.build_config(sweep["config"], run.overrides_of(m)).optimizer.learning_rate
           for m in sweep["members"]}
  assert rates["configs/resnext.py"] == 3e-4 and rates["configs/unet.py"] == 1e-3


def test_recipe_ablation_rows_add_one_element_each_and_end_at_the_recipe():
  """The last training row is configs/recipe_cpu.py, and it differs from the
  row before in the schedule length only, so the table's last training step
  measures that."""
  rows = [r for r in recipe.rows() if "compare_to" not in r]
  configs = [run.build_config("configs/unet_cpu.py", r["overrides"]) for r in rows if "overrides" in r]
  expected = recipe_cpu.get_config()
  expected.inference.update(tta="none", choose_threshold=False, largest_component=False)
  assert configs[-1].to_dict() == expected.to_dict()
  before_last = configs[-2]
  before_last.num_epochs = expected.num_epochs
  assert before_last.to_dict() == expected.to_dict()
  for earlier, later in zip(configs[:-2], configs[1:-1]):
    assert earlier.to_dict() != later.to_dict()
  last_training = max(i for i, r in enumerate(rows) if "overrides" in r)
  recipe_row = next(r for r in rows if "(the recipe)" in r["label"])
  inference = {}
  for r in rows[last_training + 1:rows.index(recipe_row) + 1]:
    inference.update(r["inference"])
  rescored = run.build_config("configs/unet_cpu.py", {**rows[last_training]["overrides"], **inference})
  assert rescored.to_dict() == recipe_cpu.get_config().to_dict()


def test_rescoring_rows_reuse_the_training_of_the_row_they_name(tmp_path, data_dir):
  sweep = _tiny(pathlib.Path(run.REPO) / "experiments" / "recipe.py", data_dir)
  rescoring = [m for m in sweep["members"] if m.get("_from")]
  assert rescoring and all(any(run.member_name(t) == m["_from"] for t in sweep["members"]) for m in rescoring)
  assert len({run.member_name(m) for m in sweep["members"]}) == len(sweep["members"])
  with pytest.raises(FileNotFoundError, match="has not finished"):
    run._rescore(sweep, rescoring[0], tmp_path)


def test_hosts_split_the_members(tmp_path, data_dir):
  sweep = _tiny(SWEEPS[0], data_dir)
  # Every member lacks a file, so each host only lists its share (skipped) instead of training it.
  sweep["common"]["model.pretrained_path"] = str(tmp_path / "absent.pth")
  shares = [run.run_sweep(sweep, tmp_path / "sweep", tmp_path / "results", i, 2) for i in range(2)]
  assert all(s.startswith("skipped: missing") for share in shares for s in share.values())
  assert not set(shares[0]) & set(shares[1])
  assert set(shares[0]) | set(shares[1]) == {run.member_name(m) for m in sweep["members"]}
  assert len(shares[0]) == (len(sweep["members"]) + 1) // 2


def test_bootstrap_interval_brackets_the_mean_and_paired_difference_sees_a_gain():
  rng = np.random.default_rng(0)
  values = rng.uniform(0.5, 1.0, 40)
  low, high = run.bootstrap_interval(values)
  assert low < values.mean() < high and high - low < 0.2
  patients = [{"patient": f"p{i}", "dice": float(v)} for i, v in enumerate(values)]
  better = [{"patient": p["patient"], "dice": p["dice"] + 0.02 + rng.normal(0, 0.005)} for p in patients]
  diff = run.paired_difference([{"test_per_patient": better}], [{"test_per_patient": patients}])
  assert diff["patients"] == 40 and 0 < diff["low"] < 0.02 < diff["high"] < 0.03


def test_unknown_override_key_is_named(tmp_path):
  with pytest.raises(KeyError, match="model.nonexistent"):
    run.build_config("configs/unet.py", {"model.nonexistent": 1})


@pytest.mark.parametrize("sweep", [recipe, ensemble], ids=lambda m: m.__name__.rpartition(".")[2])
def test_side_rows_change_one_setting_of_the_row_they_name(sweep):
  rows = {r["label"]: r for r in sweep.rows()}
  side = [r for r in rows.values() if "compare_to" in r]
  assert side and (sweep is recipe or all("evaluate" in r for r in side))

  def overrides(row):  # a re-scoring row: its source's training under its inference settings
    return {**overrides(rows[row["evaluate"]]), **row["inference"]} if "evaluate" in row else row["overrides"]

  for r in side:
    mine = traverse_util.flatten_dict(run.build_config("configs/unet_cpu.py", overrides(r)).to_dict())
    theirs = traverse_util.flatten_dict(
        run.build_config("configs/unet_cpu.py", overrides(rows[r["compare_to"]])).to_dict())
    changed = [k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)]
    assert len(changed) == 1, changed


def _fake_result(row, fold, dice):
  patients = [{"patient": f"f{fold}p{i}", "dice": d, "hd95_px": 5.0, "slices": 20, "tumour_slices": 5,
               "false_positive_slices": 0} for i, d in enumerate(dice)]
  return {"member": f"{row}-{fold}", "row": row, "overrides": {"split.fold": fold, "seed": 0}, "epochs": 1,
          "test": {"patient_dice": float(np.mean(dice)), "empty_false_positive_rate": 0.0},
          "best_val_dice": 0.5, "wall_seconds": 1.0, "test_per_patient": patients}


def test_a_row_with_two_seeds_reports_their_paired_difference_as_the_noise_floor(tmp_path):
  rng = np.random.default_rng(1)
  base = rng.uniform(0.4, 0.6, 20)
  results = []
  for seed, offset in ((0, 0.0), (1, -0.03 + rng.normal(0, 0.01, 20))):
    for fold in (0, 1):
      r = _fake_result("a", fold, base + offset + 0.01 * fold)
      r["overrides"]["seed"] = seed
      r["test_per_patient"][0]["hd95_px"] = float("nan")  # one empty mask, in both seeds
      results.append(r)
  (noise,) = run.seed_differences(results)
  assert noise["seed"] == 1 and noise["versus_seed"] == 0 and noise["patients"] == 40
  assert noise["low"] < -0.03 < noise["high"] < 0
  assert run.seed_differences(results[:2]) == []
  # The row's interval resamples its 40 patients (seeds averaged), not 80 patient-seed pairs.
  row = run.summarise_group(results)
  means = list(run._patient_means(results).values())
  assert row["patients"] == 40 and (row["low"], row["high"]) == pytest.approx(run.bootstrap_interval(means))
  assert row["mean"] == pytest.approx(np.mean(means))
  assert row["hd95_undefined"] == 2  # f0p0 and f1p0, each counted once for its two seeds


def test_a_patient_scored_in_parts_gets_its_volumetric_dice_not_the_parts_mean():
  """The slice protocol spreads a patient's slices over the folds' test sets:
  a perfect part (64 pixels) and a tumour-free part with one stray pixel
  (Dice 0 by the empty rule) are one patient of Dice 128 / 129."""
  parts = [_fake_result("a", 0, [1.0]), _fake_result("a", 1, [0.0])]
  for r, (predicted, true) in zip(parts, ((64, 64), (1, 0))):
    r["test_per_patient"][0].update(patient="p", predicted_pixels=predicted, true_pixels=true)
  assert run._patient_means(parts) == {"p": pytest.approx(128 / 129)}
  assert run.summarise_group(parts)["patients"] == 1


def test_a_side_row_is_compared_with_the_row_it_names_and_the_chain_skips_it(tmp_path):
  rng = np.random.default_rng(0)
  base = rng.uniform(0.4, 0.6, 30)
  offsets = {"a": 0.0, "b": 0.1, "side of a": 0.15, "c": 0.2, "c rescored": 0.25}
  rows = [{"name": "a", "label": "a", "overrides": {}}, {"name": "b", "label": "b", "overrides": {}},
          {"name": "s", "label": "side of a", "overrides": {}, "compare_to": "a"},
          {"name": "c", "label": "c", "overrides": {}},
          {"name": "cr", "label": "c rescored", "evaluate": "c", "inference": {}}]
  sweep = {"name": "fake", "rows": rows, "folds": (0,)}
  sweep["members"] = run._expand_rows(sweep, "fake.py")
  for m in sweep["members"]:
    result = _fake_result(m["_row"], 0, base + offsets[m["_row"]])
    (tmp_path / f"{run.member_name(m)}.json").write_text(json.dumps(result))
  table = {t["label"]: t for t in run.aggregate(sweep, tmp_path, tmp_path)}
  assert table["side of a"]["difference"]["mean"] == pytest.approx(0.15)
  assert table["side of a"]["difference"]["versus"] == "a"
  assert table["c"]["difference"]["mean"] == pytest.approx(0.1)
  assert table["c"]["difference"]["versus"] == "b"
  assert table["c rescored"]["difference"]["mean"] == pytest.approx(0.05)
  assert "| side of a |" in (tmp_path / "results.md").read_text()
  assert run.references(rows + [{"label": "side rescored", "evaluate": "side of a"}])["side rescored"] == "side of a"
  bad = {"name": "fake", "rows": [{"name": "s", "label": "s", "overrides": {}, "compare_to": "later"}], "folds": (0,)}
  with pytest.raises(ValueError, match="compared to 'later'"):
    run._expand_rows(bad, "fake.py")
  twins = {"name": "fake", "rows": [rows[0], {**rows[1], "name": "a"}], "folds": (0,)}
  with pytest.raises(ValueError, match="rows share a name: a"):  # b's results would be a's files
    run._expand_rows(twins, "fake.py")


_SWEEP_WITH_A_FAILING_MEMBER = """
from experiments.common import TINY


def get_sweep(tiny):
  return {{"config": "configs/unet.py", "common": {{**TINY, "data.data_dir": {data_dir!r}}},
          "members": [{{"model.name": "vnet", "split.fold": 0}}, {{"split.fold": 0}}]}}
"""


def test_the_command_exits_1_naming_the_failed_members_and_keeps_the_others(tmp_path, data_dir):
  sweep_file = tmp_path / "failing.py"
  sweep_file.write_text(_SWEEP_WITH_A_FAILING_MEMBER.format(data_dir=str(data_dir)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(run.REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  done = subprocess.run([sys.executable, "-m", "experiments.run", f"--sweep={sweep_file}", "--tiny",
                         f"--workdir={tmp_path / 'sweep'}"], cwd=run.REPO, env=env, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 1, done.stderr[-3000:]
  error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "failed" in error[0] and "model.name=vnet+split.fold=0" in error[0], error
  results = tmp_path / "sweep" / "results"
  assert json.loads((results / "split.fold=0.json").read_text())["test_per_patient"]
  assert not (results / "model.name=vnet+split.fold=0.json").exists()
  assert (results / "results.md").exists()


def test_result_files_keep_the_resolved_config_and_a_rescored_row_its_own_commit(tmp_path, data_dir):
  rows = [{"name": "a", "label": "a", "overrides": {}},
          {"name": "a-flips", "label": "a with flips", "evaluate": "a", "inference": {"inference.tta": "flips"}}]
  sweep = {"name": "rescoring", "config": "configs/unet.py", "rows": rows, "folds": (0,), "seeds": (0,),
           "common": {**common.TINY, "data.data_dir": str(data_dir)}}
  sweep["members"] = run._expand_rows(sweep, "rescoring.py")
  results = tmp_path / "results"
  assert run.run_sweep(sweep, tmp_path, results, only_rows=("a",)) == {"a-fold0-seed0": "finished"}
  # As if trained at another commit: the re-scored row keeps that one beside its own.
  summary_path = tmp_path / "a-fold0-seed0" / "summary.json"
  summary = json.loads(summary_path.read_text())
  summary["provenance"]["git_commit"] = "0" * 40
  summary_path.write_text(json.dumps(summary))
  assert run.run_sweep(sweep, tmp_path, results, only_rows=("a-flips",)) == {"a-flips-fold0-seed0": "finished"}
  for member in sweep["members"]:
    written = json.loads((results / f"{run.member_name(member)}.json").read_text())
    config = run.build_config(sweep["config"], {**sweep["common"], **run.overrides_of(member)})
    assert written["config"] == json.loads(config.to_json_best_effort())
  assert written["config"]["inference"]["tta"] == "flips"
  assert written["provenance"]["git_commit"] == "0" * 40
  assert written["provenance"]["rescored_git_commit"] == provenance.git_commit()
  run.aggregate(sweep, tmp_path, results)
  assert f"- a with flips: {'0' * 40} (re-scored at {provenance.git_commit()})" in (results / "results.md").read_text()


def test_rows_and_folds_select_the_members_run(tmp_path):
  """--rows/--folds: only the named rows' members on the named folds are looked at."""
  sweep = run.load_sweep(pathlib.Path(run.REPO) / "experiments" / "ensemble.py", tiny=False)
  results = tmp_path / "results"
  results.mkdir()
  for fold in (1, 3):
    (results / f"e2-tta-flips-fold{fold}-seed0.json").write_text("{}")
  status = run.run_sweep(sweep, tmp_path / "runs", results, only_rows=("e2-tta-flips",), only_folds=(1, 3))
  assert status == {"e2-tta-flips-fold1-seed0": "finished earlier", "e2-tta-flips-fold3-seed0": "finished earlier"}
  # A result file made with other settings than the row's now is not taken as this row's.
  (results / "e2-tta-flips-fold3-seed0.json").write_text(json.dumps({"overrides": {"inference.tta": "dihedral"}}))
  status = run.run_sweep(sweep, tmp_path / "runs", results, only_rows=("e2-tta-flips",), only_folds=(1, 3))
  assert status["e2-tta-flips-fold1-seed0"] == "finished earlier"
  assert status["e2-tta-flips-fold3-seed0"].startswith("failed: ")
  assert "other settings (inference.tta: 'dihedral' -> 'flips')" in status["e2-tta-flips-fold3-seed0"]
  # A dropped override shows too, and a file cut short is named, not a crash of the sweep.
  (results / "e2-tta-flips-fold3-seed0.json").write_text(json.dumps({"overrides": {"optimizer.learning_rate": 1}}))
  (results / "e2-tta-flips-fold1-seed0.json").write_text('{"member": "e2-tta')
  status = run.run_sweep(sweep, tmp_path / "runs", results, only_rows=("e2-tta-flips",), only_folds=(1, 3))
  assert "optimizer.learning_rate: 1 -> (not set)" in status["e2-tta-flips-fold3-seed0"]
  assert status["e2-tta-flips-fold1-seed0"].startswith(f"failed: {results / 'e2-tta-flips-fold1-seed0.json'} is "
                                                        "unreadable (JSONDecodeError")


def test_a_result_file_is_compared_with_the_whole_config_and_a_stale_one_is_left_out_of_the_table(tmp_path):
  """A file carrying its config: an edit to the config file or a dropped
  override changed nothing the old check looked at, and aggregate tabled
  files run_sweep had just refused."""
  rows = [{"name": "a", "label": "a", "overrides": {"optimizer.learning_rate": 0.002}},
          {"name": "b", "label": "b", "overrides": {}}]
  sweep = {"name": "fake", "config": "configs/unet_cpu.py", "rows": rows, "folds": (0,), "seeds": (0,)}
  sweep["members"] = run._expand_rows(sweep, "fake.py")
  rng = np.random.default_rng(0)
  for member in sweep["members"]:
    result = _fake_result(member["_row"], 0, rng.uniform(0.4, 0.6, 10))
    result["overrides"] = run.overrides_of(member)
    config = run.build_config(sweep["config"], result["overrides"])
    result["config"] = json.loads(config.to_json_best_effort())
    (tmp_path / f"{run.member_name(member)}.json").write_text(json.dumps(result))
  assert [t["label"] for t in run.aggregate(sweep, tmp_path, tmp_path)] == ["a", "b"]
  # b's file, made with the config file's other loss: as if configs/unet_cpu.py had been edited since.
  b_file = tmp_path / "b-fold0-seed0.json"
  stale = json.loads(b_file.read_text())
  stale["config"]["loss"]["name"] = "bce"
  b_file.write_text(json.dumps(stale))
  assert run.read_result(b_file, sweep, sweep["members"][1])[1].startswith(
      f"{b_file} was made with other settings (config.loss.name: 'bce' -> 'dice_bce')")
  assert [t["label"] for t in run.aggregate(sweep, tmp_path, tmp_path)] == ["a"]
  # Machine paths and settings that change nothing trained or scored may differ.
  stale["config"]["loss"]["name"] = "dice_bce"
  stale["config"]["data"]["data_dir"], stale["config"]["log_every_steps"] = "/elsewhere", 7
  stale["config"]["model"]["fpn"]["base_width"] = 3  # a block the U-Net does not read
  b_file.write_text(json.dumps(stale))
  assert run.read_result(b_file, sweep, sweep["members"][1]) == (stale, None)
  # A relabelled row keeps its results: files are found by member name, rows by the sweep's labels.
  rows[1]["label"] = "b renamed"
  sweep["members"] = run._expand_rows(sweep, "fake.py")
  assert [t["label"] for t in run.aggregate(sweep, tmp_path, tmp_path)] == ["a", "b renamed"]


def test_an_unknown_row_is_an_error_naming_the_rows(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.run", "--sweep=experiments/recipe.py",
                           "--rows=r8-recipe", f"--workdir={tmp_path}"], cwd=run.REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1
  assert "--rows: r8-recipe not rows of experiments/recipe.py (its rows: r0-before," in result.stderr
  assert not any(tmp_path.iterdir())
