"""Test setup: 8 fake CPU devices (before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

REAL_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg_dev" / "kaggle_3m"

# CI (CI=true) has ../shared and installs every extra: a test that lacks one
# there fails instead of skipping, so a green run never hides a skipped check.
IN_CI = os.environ.get("CI", "").lower() == "true"


# The files that take longest, first: .ci/run hands whole files to its two xdist workers in
# collection order (--dist loadfile --no-loadscope-reorder), and a heavy file started last leaves
# one worker idle while the other finishes it. Only an ordering: a stale list costs time, not tests.
LONGEST_FIRST = ("test_experiments", "test_train", "test_multiprocess", "test_evaluate", "test_crops",
                 "test_models", "test_data", "test_segmenter")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: files keep their order


def require(path, what):
  """Skip (outside CI) or fail (CI=true) a test that needs `path`."""
  if not pathlib.Path(path).exists():
    message = f"{what} is absent ({path})"
    if IN_CI:
      pytest.fail(f"{message}; CI=true needs it", pytrace=False)
    pytest.skip(message)


def import_or_skip(name, reason=""):
  """pytest.importorskip, except that under CI=true a missing module fails."""
  try:
    return importlib.import_module(name)
  except ImportError as e:
    message = f"{name} is not installed{f' ({reason})' if reason else ''}: {e}"
    if IN_CI:
      pytest.fail(f"{message}; CI=true needs it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def tiny_spec():
  from lgg_jax.data import synthetic
  return synthetic.SyntheticSpec(num_patients=8, min_slices=6, max_slices=8, seed=3)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_spec):
  """A tiny synthetic kaggle_3m/ shared by the tests (read-only by convention)."""
  from lgg_jax.data import synthetic
  return synthetic.write_dataset(tmp_path_factory.mktemp("synthetic"), tiny_spec)


@pytest.fixture(scope="session")
def real_builder(tmp_path_factory):
  """The 62 real dev patients prepared once per test session (skips without them)."""
  require(REAL_DATA, "../shared/data/lgg_dev")
  from lgg_jax.data import builder
  return builder.build(REAL_DATA, tmp_path_factory.mktemp("real_cache") / "tfds")


@pytest.fixture(scope="session")
def real_data(real_builder, tmp_path_factory):
  """The real dev patients as a loaded dataset (5 patient folds, fold 0)."""
  from lgg_jax.data import pipeline
  config = tiny_config(tmp_path_factory.mktemp("real"), manual_dir=REAL_DATA)
  config.data.data_dir = str(pathlib.Path(real_builder.data_dir).parents[3])  # <data_dir>/tfds/<fp>/lgg/<v>
  config.split.num_folds = 5
  return pipeline.load(config)


def tiny_config(tmp_path, manual_dir=""):
  """A config small enough for many train steps in seconds on one CPU."""
  import tiny_config as tiny
  config = tiny.get_config()
  config.data.manual_dir = str(manual_dir)
  config.data.data_dir = str(tmp_path / "cache")
  config.num_epochs = 2
  return config
