import pathlib

import numpy as np
import pytest

from experiments import run

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
                                      "split_protocol", "pretrained_encoder"}
  for path in SWEEPS:
    doc = path.read_text().split('"""')[1]
    assert "python -m experiments.run" in doc and "Runtime" in doc and "Should show" in doc, path.name
    full = run.load_sweep(path, tiny=False)
    assert all("split.fold" in m for m in full["members"]) and len(full["members"]) >= 10


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_tiny_sweep_runs_skips_what_it_lacks_and_aggregates(path, tmp_path, data_dir):
  sweep = _tiny(path, data_dir)
  status = run.run_sweep(sweep, tmp_path)
  for overrides in sweep["members"]:
    state = status[run.member_name(overrides)]
    if run.missing_files(overrides):
      assert state.startswith("skipped: missing")
    else:
      assert state == "finished", state
  table = run.aggregate(sweep, tmp_path)
  finished = [s for s in status.values() if s == "finished"]
  assert (tmp_path / "results.csv").read_text().count("\n") == len(finished) + 1
  assert "test Dice mean +- std" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "results.png").stat().st_size > 1000
  assert all(0 <= t["mean"] <= 1 for t in table)
  # A rerun skips finished members instead of training them again.
  again = run.run_sweep(sweep, tmp_path)
  assert all(s == "finished earlier" or s.startswith("skipped") for s in again.values())


def test_hosts_split_the_members(tmp_path, data_dir):
  sweep = _tiny(SWEEPS[0], data_dir)
  sweep["members"] = sweep["members"][:2]
  shares = [set(run.run_sweep(sweep, tmp_path / "sweep", i, 2)) for i in range(2)]
  assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 2


def test_bootstrap_interval_brackets_the_mean():
  values = np.random.default_rng(0).uniform(0.5, 1.0, 40)
  low, high = run.bootstrap_interval(values)
  assert low < values.mean() < high and high - low < 0.2


def test_unknown_override_key_is_named(tmp_path):
  with pytest.raises(KeyError, match="model.nonexistent"):
    run.build_config("configs/unet.py", {"model.nonexistent": 1})
