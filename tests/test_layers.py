"""The big_vision layering: evaluation, prediction, reports and benchmarks
stand on the shared layer (parallel, state, steps, inference), never on the
trainer, and no module imports another in a circle."""

import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_inference_side_imports_without_the_trainer():
  code = ("import sys; sys.modules['lgg_jax.train'] = None\n"  # any `import lgg_jax.train` now fails
          "import lgg_jax.evaluate, lgg_jax.predict, lgg_jax.report, lgg_jax.bench, lgg_jax.inference\n"
          "print('imported')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]
  blocked = subprocess.run([sys.executable, "-c", code.replace("lgg_jax.evaluate,", "lgg_jax.main,")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert blocked.returncode != 0  # the block really blocks: main needs the trainer


def test_no_import_circles_among_our_modules():
  from conftest import require
  tool = REPO.parent / "shared" / "tools" / "import_cycles.py"
  require(tool, "../shared/tools/import_cycles.py")
  result = subprocess.run([sys.executable, str(tool)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.stdout.strip().splitlines()[-1] == "circles: 0", result.stdout


def test_no_module_edits_sys_path():
  """configs and experiments are packages (setup.py): nothing patches the import path."""
  offenders = [str(p.relative_to(REPO)) for folder in ("lgg_jax", "configs", "experiments", "tests", "benchmarks")
               for p in (REPO / folder).rglob("*.py") if re.search(r"sys\.path\.(insert|append)", p.read_text())
               and p.name != "test_layers.py"]
  assert offenders == []
