"""The big_vision layering: evaluation, prediction, reports and benchmarks
stand on the shared layer (parallel, state, steps, inference), never on the
trainer, and no module imports another in a circle. The library stands
alone: it never imports configs/, experiments/ or benchmarks/, and installing
it puts only lgg_jax into site-packages."""

import ast
import pathlib
import re
import shutil
import subprocess
import sys


from configs import default
from lgg_jax import config_defaults

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_inference_side_imports_without_the_trainer():
  code = ("import sys; sys.modules['lgg_jax.train'] = None\n"  # any `import lgg_jax.train` now fails
          "import lgg_jax.evaluate, lgg_jax.predict, lgg_jax.report, lgg_jax.inference, benchmarks.bench\n"
          "print('imported')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]
  blocked = subprocess.run([sys.executable, "-c", code.replace("lgg_jax.evaluate,", "lgg_jax.main,")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert blocked.returncode != 0  # the block really blocks: main needs the trainer


def test_segmenting_commands_load_no_augmentation_library():
  """albumentations imports torch when it is installed (seconds per command):
  only training's host pipeline needs it."""
  code = ("import sys, lgg_jax.evaluate, lgg_jax.predict, lgg_jax.export, lgg_jax.segmenter\n"
          "print(sorted(m for m in ('albumentations', 'torch', 'scipy.stats') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_no_import_circles_among_our_modules():
  from conftest import require
  tool = REPO.parent / "shared" / "tools" / "import_cycles.py"
  require(tool, "../shared/tools/import_cycles.py")
  result = subprocess.run([sys.executable, str(tool)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.stdout.strip().splitlines()[-1] == "circles: 0", result.stdout


def test_no_module_edits_sys_path():
  """configs, experiments and benchmarks are used from the repository root
  (pytest.ini's pythonpath for the tests): nothing patches the import path."""
  offenders = [str(p.relative_to(REPO)) for folder in ("lgg_jax", "configs", "experiments", "tests", "benchmarks")
               for p in (REPO / folder).rglob("*.py") if re.search(r"sys\.path\.(insert|append)", p.read_text())
               and p.name != "test_layers.py"]
  assert offenders == []


OUTSIDE_THE_LIBRARY = ("configs", "experiments", "benchmarks")


def _imported_top_level_names(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


def test_the_library_imports_nothing_from_configs_experiments_or_benchmarks():
  modules = sorted((REPO / "lgg_jax").rglob("*.py"))
  assert len(modules) > 20
  offenders = {str(p.relative_to(REPO)): sorted(_imported_top_level_names(p) & set(OUTSIDE_THE_LIBRARY))
               for p in modules}
  assert {k: v for k, v in offenders.items() if v} == {}


def test_configs_default_is_the_library_defaults_and_sets_nothing_itself():
  """Restoring a saved run fills newer settings from lgg_jax.config_defaults;
  configs/default.py must not drift from it by keeping settings of its own."""
  assert default.get_config().to_dict() == config_defaults.get_config().to_dict()
  tree = ast.parse((REPO / "configs" / "default.py").read_text())
  settings = [ast.unparse(t) for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
              if isinstance(t, (ast.Attribute, ast.Subscript))]
  assert settings == []


def test_installing_puts_only_lgg_jax_into_site_packages(tmp_path):
  """What `pip install` copies is setuptools' build_py output (this project has
  no scripts or data files); built from a copy so the checkout stays clean."""
  source = tmp_path / "source"
  source.mkdir()
  for name in ("setup.py", "README.md", "LICENSE"):
    shutil.copy(REPO / name, source / name)
  for folder in REPO.iterdir():
    if (folder / "__init__.py").is_file():  # what find_packages could pick up
      shutil.copytree(folder, source / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
  assert {"lgg_jax", "configs", "experiments"} <= {p.name for p in source.iterdir()}
  result = subprocess.run([sys.executable, "setup.py", "-q", "build_py", f"--build-lib={tmp_path / 'lib'}"],
                          cwd=source, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["lgg_jax"]
  installed = {str(p.relative_to(tmp_path / "lib")) for p in (tmp_path / "lib").rglob("*.py")}
  assert installed == {str(p.relative_to(REPO)) for p in (REPO / "lgg_jax").rglob("*.py")}
