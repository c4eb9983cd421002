"""The ensemble shipped in lgg_jax/pretrained/recipe_cpu/ is the one measured:
it installs from a wheel and segments with no repository around it, and each
shipped fold model reproduces the committed Dice of one of its held-out dev
patients with the settings it ships with."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REAL_DATA, require
from lgg_jax import Segmenter, evaluate, inference, predict, pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "lgg_jax" / "pretrained" / "recipe_cpu"


def _shipped() -> dict:
  return json.loads((SHIPPED / "shipped.json").read_text())


def test_the_wheel_installs_the_ensemble_and_it_segments_from_anywhere(tmp_path):
  wheels = tmp_path / "wheels"
  # Without the `wheel` package, setuptools before 70.1 has no bdist_wheel: build in pip's isolated
  # environment then (it fetches setuptools and wheel from the package registry).
  isolation = [] if importlib.util.find_spec("wheel") is None else ["--no-build-isolation"]
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                          "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-2000:]
  site = tmp_path / "site"
  install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                            str(next(wheels.glob("lgg_jax-*.whl")))], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-2000:]
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  code = ("import sys, json\n"
          "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__ + repr(f)]\n"
          "import lgg_jax\n"
          "from lgg_jax import Segmenter, pretrained, predict\n"
          "from lgg_jax.data import synthetic\n"
          f"assert lgg_jax.__file__.startswith({str(site)!r}), lgg_jax.__file__\n"
          "root = synthetic.write_dataset('data', synthetic.SyntheticSpec(num_patients=1, min_slices=12, "
          "max_slices=12, seed=1))\n"
          "case = predict.find_cases(next(p for p in root.rglob('*') if p.is_dir() and any(p.glob('*.tif'))))[0]\n"
          "seg = Segmenter.load(pretrained.RECIPE_CPU)\n"
          "probabilities, masks = seg.segment(case.images)\n"
          "print(json.dumps({'members': len(seg.members), 'shape': list(masks.shape), 'dtype': str(masks.dtype),\n"
          "                  'range': [float(probabilities.min()), float(probabilities.max())],\n"
          "                  'tumour': int(masks.sum()), 'settings': seg.settings.as_dict()}))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", pretrained.ROOT_ENV)}
  env["PYTHONPATH"] = str(site)
  result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  shipped = _shipped()
  assert report["members"] == len(shipped["members"]) >= 1
  assert report["shape"] == [12, 256, 256] and report["dtype"] == "bool"
  assert 0.0 <= report["range"][0] <= report["range"][1] <= 1.0
  assert report["settings"] == _settings(shipped)


def _settings(shipped: dict) -> dict:
  """shipped.json's settings, with fields added since it was written at their defaults (as loading does)."""
  return inference.Settings.from_dict(shipped["settings"], inference.Settings()).as_dict()


def test_each_shipped_fold_reproduces_a_held_out_patients_committed_dice():
  require(REAL_DATA, "../shared/data/lgg_dev")
  shipped = _shipped()
  for member, result_file in shipped["members"].items():
    result = json.loads((REPO / result_file).read_text())
    row = min((r for r in result["test_per_patient"] if r["tumour_slices"]), key=lambda r: r["slices"])
    case = predict.find_cases(REAL_DATA / row["patient"])[0]
    seg = Segmenter.load(SHIPPED / member)
    assert seg.settings.as_dict() == _settings(shipped)
    scored, _ = evaluate.score_patient(seg.predict(case.images, masks=True), case.truth)
    assert scored["dice"] == pytest.approx(row["dice"], abs=1e-4), (member, row["patient"])


def test_the_shipped_figures_are_those_of_the_committed_result_files():
  """shipped.json's cross-validated figures (read by scripts) and the card's description of the members
  come from the result files it names and the members' own configs, not from typed-in text."""
  from benchmarks import ship_pretrained
  shipped = _shipped()
  source = ship_pretrained.Source.from_shipped(SHIPPED, REPO / pathlib.Path(shipped["members"]["fold0"]).parent)
  computed = ship_pretrained.cross_validated(source)
  # Floats to 1e-9: the bootstrap interval's last digits may move with scipy or numpy.
  assert _flat(shipped["cross_validated"]) == pytest.approx(_flat(json.loads(json.dumps(computed))), rel=1e-9)
  trained_with, lines = ship_pretrained.members_description(source, [SHIPPED / m for m in sorted(shipped["members"])])
  card = (SHIPPED / "model_card.md").read_text()
  assert trained_with in card and all(line in card for line in lines)


def _flat(figures: dict, prefix: str = "") -> dict:
  """{"small_tumours/mean_dice": ..., "ci95_bca/0": ...}: one level, as pytest.approx compares."""
  flat = {}
  for key, value in figures.items():
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
      flat[prefix + str(key)] = value
    else:
      flat.update(_flat(dict((str(k), v) for k, v in items), f"{prefix}{key}/"))
  return flat
