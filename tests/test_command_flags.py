"""Commands define their flags at module level (absl's convention) and share
the ones several take, so they import one another without a DuplicateFlagError,
and a flag meant for another command is an error, not silently ignored."""

import pathlib
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from lgg_jax import command_flags, evaluate, predict

REPO = pathlib.Path(__file__).resolve().parents[1]


def _command(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_module_of_the_project_imports_beside_every_other():
  """Every command, benchmark and sweep module in one process (as the suite
  imports them): no DuplicateFlagError."""
  modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                   for folder in ("lgg_jax", "benchmarks", "experiments") for p in (REPO / folder).rglob("*.py")
                   if "results" not in p.parts)
  assert {"lgg_jax.evaluate", "lgg_jax.predict", "lgg_jax.export", "benchmarks.segment_speed",
          "benchmarks.ship_pretrained", "lgg_jax.radiogenomics.__main__"} <= set(modules)
  optional = ("lgg_jax.onnx_export", "lgg_jax.onnx_predict")  # the [onnx] extra
  code = (f"import importlib\nfor m in {modules!r}:\n"
          f"  try:\n    importlib.import_module(m)\n"
          f"  except ImportError as e:\n    assert m in {optional!r}, (m, e)\n"
          "print('imported')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


@pytest.fixture
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield


def test_main_reads_its_module_level_flags_when_imported(parsed_flags, tmp_path):
  flags.FLAGS.workdir = [str(tmp_path / "no_run")]
  with pytest.raises(FileNotFoundError, match="no_run is not a run folder"):
    evaluate.main([])
  flags.FLAGS.input = str(tmp_path / "no_scans")
  with pytest.raises(ValueError, match="no_scans does not exist"):
    predict.main([])


def test_model_and_workdir_together_are_refused_not_one_ignored(parsed_flags, tmp_path):
  flags.FLAGS.workdir, flags.FLAGS.model = [str(tmp_path / "run")], ["pretrained"]
  flags.FLAGS.input = str(tmp_path)
  for command in (evaluate, predict):
    with pytest.raises(ValueError, match="give --model or --workdir, not both"):
      command.main([])


def test_threshold_takes_model_and_val_in_evaluate_only(parsed_flags):
  for value, expected in (("model", None), ("", None), ("0.3", 0.3), ("val", "val")):
    flags.FLAGS.threshold = value
    assert command_flags.threshold(allow_val=True) == expected
  flags.FLAGS.threshold = "val"
  with pytest.raises(ValueError, match=r"--threshold=val: want a number in \(0, 1\) or 'model'$"):
    command_flags.threshold()
  flags.FLAGS.threshold = "-1"  # the old float flag's "the model's own"
  assert command_flags.threshold() is None
  flags.FLAGS.threshold = "1.5"
  with pytest.raises(ValueError, match=r"--threshold=1.5: want a number in \(0, 1\)"):
    command_flags.threshold()
  flags.FLAGS.threshold, flags.FLAGS.tta = "model", "d8"
  with pytest.raises(ValueError, match="--tta=d8: want one of none, flips, dihedral"):
    command_flags.inference_overrides()


def test_a_flag_of_another_command_is_an_error_naming_it(tmp_path):
  result = _command("lgg_jax.main", f"--config={REPO / 'tests' / 'tiny_config.py'}", f"--workdir={tmp_path}",
                    "--input=scans", "--tta=flips")
  assert result.returncode == 1
  assert "--input: not a flag of this command; --tta: not a flag of this command" in result.stderr
  assert not any(tmp_path.iterdir())
  renamed = _command("benchmarks.segment_speed", "--tta=none,flips")
  assert renamed.returncode == 1 and "--tta: renamed here: --tta_modes=" in renamed.stderr
