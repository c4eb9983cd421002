"""The pretrained-model package: named models resolve to checked member exports;
a changed, missing or unlisted file is an error naming it; setup.py ships the
files and git does not ignore them."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import ship_pretrained
from lgg_jax import Segmenter, export, inference, pretrained, quality, train
from lgg_jax.data import pipeline
from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
MEMBERS = ("fold0", "fold1", "fold2", "fold10")  # fold10 sorts after fold2


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained_run")
  config = tiny_config(root)
  config.num_epochs = 1
  train.train_and_evaluate(config, root / "run")
  return export.export_run(root / "run", root / "export"), config


@pytest.fixture
def models_root(tiny_export, tmp_path):
  """A pretrained root holding recipe_cpu as shipped: member exports, a model card, SHA256SUMS."""
  exported, _ = tiny_export
  model = tmp_path / "pretrained" / "recipe_cpu"
  for member in MEMBERS:
    shutil.copytree(exported, model / member)
  (model / "model_card.md").write_text("# the ensemble\n")
  pretrained.write_checksums(model)
  return tmp_path / "pretrained"


def test_names_cannot_be_mistaken_for_paths():
  assert pretrained.RECIPE_CPU == "pretrained:recipe_cpu" and pretrained.is_pretrained_name(pretrained.RECIPE_CPU)
  assert pretrained.DEFAULT in pretrained.known_names()
  for other in ("recipe_cpu", "runs/pretrained", pathlib.Path("pretrained:recipe_cpu"), None, ["pretrained:x"]):
    assert not pretrained.is_pretrained_name(other)


def test_resolve_checks_every_file_and_gives_the_members_in_order(models_root, tiny_export):
  exported, config = tiny_export
  members = pretrained.resolve(pretrained.RECIPE_CPU, models_root)
  assert members == [models_root / "recipe_cpu" / m for m in ("fold0", "fold1", "fold2", "fold10")]
  listed = (models_root / "recipe_cpu" / "SHA256SUMS").read_text().splitlines()
  assert len(listed) == 1 + len(MEMBERS) * len(list(exported.iterdir()))
  assert "model_card.md" in {line.split("  ", 1)[1] for line in listed}
  # The list is sha256sum's own format.
  check = subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=models_root / "recipe_cpu",
                         capture_output=True, text=True)
  assert check.returncode == 0, check.stdout + check.stderr
  # The members load as an ensemble equal to the export they copy.
  data = pipeline.load(config)
  volume, _ = data.volume(data.patients(data.split.test)[0])
  np.testing.assert_allclose(Segmenter.load(members[:2]).predict(volume), Segmenter.load(exported).predict(volume),
                             atol=1e-6)


def test_the_root_can_be_set_from_the_environment(models_root, monkeypatch):
  monkeypatch.setenv(pretrained.ROOT_ENV, str(models_root))
  assert pretrained.root() == models_root
  assert pretrained.resolve(pretrained.RECIPE_CPU)[0] == models_root / "recipe_cpu" / "fold0"
  monkeypatch.delenv(pretrained.ROOT_ENV)
  assert pretrained.root() == pathlib.Path(pretrained.__file__).resolve().parent


def _one_line(error):
  message = str(error.value)
  assert "\n" not in message
  return message


def test_a_changed_byte_in_the_weights_is_an_error_naming_the_file(models_root):
  weights = models_root / "recipe_cpu" / "fold2" / "weights.safetensors"
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 0x01
  weights.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="sha256") as error:
    pretrained.resolve(pretrained.RECIPE_CPU, models_root)
  assert str(weights) in _one_line(error)


def test_a_missing_file_is_an_error_naming_it(models_root):
  missing = models_root / "recipe_cpu" / "fold1" / "inference.json"
  missing.unlink()
  with pytest.raises(FileNotFoundError, match="missing") as error:
    pretrained.resolve(pretrained.RECIPE_CPU, models_root)
  assert str(missing) in _one_line(error)


def test_an_unlisted_file_is_an_error_naming_it(models_root):
  extra = models_root / "recipe_cpu" / "fold0" / "old_weights.safetensors"
  extra.write_bytes(b"stale")
  with pytest.raises(ValueError, match="not listed") as error:
    pretrained.resolve(pretrained.RECIPE_CPU, models_root)
  assert str(extra) in _one_line(error)


def test_a_malformed_checksum_line_is_an_error_naming_the_line(models_root):
  sums = models_root / "recipe_cpu" / "SHA256SUMS"
  sums.write_text(sums.read_text() + f"{'0' * 64}  ../outside.json\n")
  with pytest.raises(ValueError, match="SHA256SUMS:") as error:
    pretrained.resolve(pretrained.RECIPE_CPU, models_root)
  assert "outside.json" in _one_line(error)


def test_unknown_and_uninstalled_names_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown pretrained model") as error:
    pretrained.resolve("pretrained:recipe_gpu", tmp_path)
  assert "pretrained:recipe_cpu" in _one_line(error)
  with pytest.raises(ValueError, match="unknown"):
    pretrained.resolve("recipe_cpu", tmp_path)
  (tmp_path / "recipe_cpu" / "fold0").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="not installed") as error:
    pretrained.resolve(pretrained.RECIPE_CPU, tmp_path)
  assert str(tmp_path / "recipe_cpu") in _one_line(error)


SHIPPED = ("recipe_cpu/SHA256SUMS", "recipe_cpu/model_card.md", "recipe_cpu/shipped.json", "recipe_cpu/fold0/config.json",
           "recipe_cpu/fold0/weights.safetensors", "recipe_cpu/fold0/inference.json",
           "recipe_cpu/fold0/model_card.md", "recipe_cpu/fold0/forward.jax")


def test_setup_py_ships_the_model_files_as_package_data(tmp_path):
  """setup.py's build step (what a wheel holds) copies every file of a model
  placed in lgg_jax/pretrained/."""
  tree = tmp_path / "tree"
  tree.mkdir()
  for name in ("setup.py", "README.md", "LICENSE"):
    shutil.copy(REPO / name, tree / name)
  for package in ("lgg_jax", "configs", "experiments"):
    shutil.copytree(REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "recipe_cpu"))
  for relative in SHIPPED:
    (tree / "lgg_jax" / "pretrained" / relative).parent.mkdir(parents=True, exist_ok=True)
    (tree / "lgg_jax" / "pretrained" / relative).write_text("x")
  build = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                         cwd=tree, capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr[-2000:]
  built = tmp_path / "lib" / "lgg_jax" / "pretrained"
  assert (built / "__init__.py").is_file()
  assert sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file() and p.suffix != ".py") \
      == sorted(SHIPPED)


def test_git_does_not_ignore_the_shipped_weights():
  if not (REPO / ".git").exists():
    pytest.skip("not a git checkout")
  for relative in SHIPPED:
    path = f"lgg_jax/pretrained/{relative}"
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert result.returncode == 1, f"git ignores {path}"
  assert subprocess.run(["git", "check-ignore", "--no-index", "-q", "runs/x/weights.safetensors"],
                        cwd=REPO).returncode == 0


def _committed_results(folder: pathlib.Path, run: pathlib.Path, row: str, settings: dict) -> None:
  """Result files as experiments.run writes them, for a run copied into every fold."""
  summary = json.loads((run / "summary.json").read_text())
  folder.mkdir(parents=True, exist_ok=True)
  for fold in ship_pretrained.FOLDS:
    for name, scored_with in (("e0-recipe", summary["inference"]), (row, settings)):
      (folder / f"{name}-fold{fold}-seed0.json").write_text(json.dumps(
          {"inference": scored_with, "test": summary["test"], "test_per_patient": summary["test_per_patient"],
           "best_step": summary["best_step"], "epochs": 1,
           "evaluated_from": None if name == "e0-recipe" else f"e0-recipe-fold{fold}-seed0",
           "overrides": {"config": "configs/tiny.py", "split.fold": fold, "seed": 0},
           "provenance": {"git_commit": "0123456789", "devices": {"backend": "cpu", "count": 1, "kind": "cpu"}}}))


def test_shipping_exports_every_fold_with_the_rows_settings(tiny_export, tmp_path):
  """benchmarks/ship_pretrained.py: runs that reproduce their training row's
  files ship, as a checked pretrained model, with the settings the named row
  was scored with; a run that does not reproduce, or a row scored two ways,
  ships nothing; a subset of folds ships as such and its card says so."""
  exported, _ = tiny_export
  run = exported.parent / "run"
  runs = tmp_path / "runs"
  for fold in ship_pretrained.FOLDS:
    shutil.copytree(run, runs / f"e0-recipe-fold{fold}-seed0")
  settings = {"threshold": 0.4, "tta": "flips", "largest_component": True, "component_fraction": 0.2}
  results = tmp_path / "results"
  _committed_results(results, run, "s9-test", settings)
  source = ship_pretrained.Source(runs=runs, results=results, row="s9-test")
  out = tmp_path / "pretrained" / "recipe_cpu"
  lines = ship_pretrained.ship(source, out, "abc123")
  assert "reproduces e0-recipe to 0.00e+00" in lines[1] and lines[-1].startswith(f"shipped {out}")
  members = pretrained.resolve(pretrained.RECIPE_CPU, tmp_path / "pretrained")
  assert [m.name for m in members] == [f"fold{k}" for k in ship_pretrained.FOLDS]
  assert not (members[0] / "forward.jax").exists()
  assert Segmenter.load(members).settings == inference.Settings(**settings)
  shipped = json.loads((out / "shipped.json").read_text())
  assert shipped["row"] == "s9-test" and shipped["settings"] == inference.Settings(**settings).as_dict()
  assert shipped["members"]["fold3"].endswith("results/s9-test-fold3-seed0.json")
  card = (out / "model_card.md").read_text()
  assert "3-view flip" in card and "at least 0.2 of its size" in card and "abc123" in card
  assert "still training" not in card and "five fold models" in card

  two = ship_pretrained.ship(dataclasses.replace(source, folds=(0, 2)), tmp_path / "two" / "recipe_cpu", "abc123")
  assert [m.name for m in pretrained.resolve(pretrained.RECIPE_CPU, tmp_path / "two")] == ["fold0", "fold2"]
  assert "Folds 1, 3, 4 are still training" in (tmp_path / "two" / "recipe_cpu" / "model_card.md").read_text()
  assert "fold 2:" in two[2]
  ship_pretrained.ship(dataclasses.replace(source, folds=(0, 1, 2, 3)), tmp_path / "four" / "recipe_cpu", "abc123")
  assert "Fold 4 is still training" in (tmp_path / "four" / "recipe_cpu" / "model_card.md").read_text()

  first = next(iter(json.loads((run / "summary.json").read_text())["test_per_patient_dice"]))
  e0 = json.loads((results / "e0-recipe-fold3-seed0.json").read_text())
  e0["test_per_patient"] = [{**r, "dice": r["dice"] + 0.01} if r["patient"] == first else r
                            for r in e0["test_per_patient"]]
  (results / "e0-recipe-fold3-seed0.json").write_text(json.dumps(e0))
  with pytest.raises(ValueError, match="e0-recipe-fold3-seed0 reproduces e0-recipe to 1.00e-02"):
    ship_pretrained.ship(source, tmp_path / "other", "abc123")
  _committed_results(results, run, "s9-test", settings)
  row = json.loads((results / "s9-test-fold2-seed0.json").read_text())
  row["inference"]["tta"] = "none"
  (results / "s9-test-fold2-seed0.json").write_text(json.dumps(row))
  with pytest.raises(ValueError, match="s9-test-fold\\*: the folds were scored with different settings"):
    ship_pretrained.ship(source, tmp_path / "other", "abc123")
  _committed_results(results, run, "s9-test", settings)
  row = json.loads((results / "s9-test-fold1-seed0.json").read_text())
  (results / "s9-test-fold1-seed0.json").write_text(json.dumps({**row, "evaluated_from": None}))  # trained anew
  with pytest.raises(ValueError, match="s9-test-fold1-seed0.json: scored a training of its own"):
    ship_pretrained.ship(source, tmp_path / "other", "abc123")
  assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other*"))


def test_refresh_rewrites_a_shipped_model_in_place_from_its_exports(tiny_export, tmp_path):
  """--refresh needs no runs: the card describes the members from their configs, shipped.json gains the
  cross-validated figures, and a row that re-scored the same runs puts its settings into every member;
  a member that is not its training row's best checkpoint is an error naming it, and nothing changes."""
  exported, config = tiny_export
  run = exported.parent / "run"
  runs, results = tmp_path / "runs", tmp_path / "results"
  shutil.copytree(run, runs / "e0-recipe-fold0-seed0")
  shipped_settings = {"threshold": 0.5, "tta": "none", "largest_component": True, "component_fraction": 0.0}
  _committed_results(results, run, "s9-test", shipped_settings)
  out = tmp_path / "pretrained" / "recipe_cpu"
  ship_pretrained.ship(ship_pretrained.Source(runs=runs, results=results, row="s9-test", folds=(0,)), out, "abc123")
  shipped = json.loads((out / "shipped.json").read_text())
  rows = json.loads((run / "summary.json").read_text())["test_per_patient"]
  assert shipped["cross_validated"]["patients"] == len(rows)
  assert shipped["cross_validated"]["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
  card = (out / "model_card.md").read_text()
  parameters = sum(x.size for x in jax.tree.leaves(Segmenter.load(out / "fold0").members[0].variables["params"]))
  assert f"{parameters:,} parameters" in card and f"{config.num_epochs} epochs" in card
  assert f"base_width={config.model.unet.base_width}" in card and "`configs/tiny.py`" in card

  shutil.rmtree(runs)
  rescored = {**shipped_settings, "component_fraction": 0.1, "component_rank": "probability_sum"}
  _committed_results(results, run, "s10-components", rescored)
  quality.Rule("member_agreement", 0.9, "a test").save(out)
  pretrained.write_checksums(out)
  with pytest.raises(ValueError, match="--commit is needed: fold0 change their masks"):
    ship_pretrained.refresh(out, results, "s10-components")
  lines = ship_pretrained.refresh(out, results, "s10-components", "def456")
  assert "settings of s10-components written into fold0" in lines[0]
  assert "review threshold was fixed on the masks of s9-test" in lines[1]
  assert "fixed on the masks of s9-test, not measured again" in quality.Rule.load(out).source
  card = (out / "model_card.md").read_text()
  assert "## Which masks to doubt" in card and "not measured again" in card
  assert "ranked by probability sum" in card and "def456" in card
  assert not list(out.parent.glob(".recipe_cpu*")), "the replaced folder or the partial one was left behind"
  pretrained.verify(out)
  assert Segmenter.load(pretrained.resolve(pretrained.RECIPE_CPU, tmp_path / "pretrained")).settings == \
      inference.Settings(**rescored)
  assert "also components >= 0.1 of it, ranked by probability sum" in (out / "fold0" / "model_card.md").read_text()
  shipped = json.loads((out / "shipped.json").read_text())
  assert shipped["row"] == "s10-components" and shipped["commit"] == "def456"
  assert shipped["members"]["fold0"].endswith("s10-components-fold0-seed0.json")
  assert ship_pretrained.refresh(out, results)[0].endswith("SHA256SUMS rewritten")  # nothing to change: no commit

  row = json.loads((results / "s10-components-fold0-seed0.json").read_text())
  (results / "s10-components-fold0-seed0.json").write_text(json.dumps({**row, "evaluated_from": "e0-recipe-fold3-seed0"}))
  with pytest.raises(ValueError, match=r"s10-components-fold0-seed0.json: scored e0-recipe-fold3-seed0 at step "
                                       r"\d+, not the shipped e0-recipe-fold0-seed0"):
    ship_pretrained.refresh(out, results)
  (results / "s10-components-fold0-seed0.json").write_text(json.dumps(row))

  trained = json.loads((results / "e0-recipe-fold0-seed0.json").read_text())
  (results / "e0-recipe-fold0-seed0.json").write_text(json.dumps({**trained, "best_step": trained["best_step"] + 1}))
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  with pytest.raises(ValueError, match=r"fold0: not the best checkpoint of e0-recipe-fold0-seed0"):
    ship_pretrained.refresh(out, results, "s9-test")
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
