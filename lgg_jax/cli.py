"""What every command shares: quiet terminal, one-line errors, progress bars.

A command's terminal shows progress bars, its results and real warnings;
library INFO chatter (Orbax, absl) goes to the run's log.txt, not here. An
error a user can meet (bad data, a bad setting, a missing run) ends the
command with `error: <what, naming the file or setting>` and exit status 1;
`--traceback` shows the whole traceback instead.
"""

from __future__ import annotations

import logging as std_logging
import os
import pathlib
import sys
from collections.abc import Callable

import jax
import tqdm
from absl import app, flags, logging

from lgg_jax import config_defaults, registry
from lgg_jax.choices import COMPONENT_RANKS

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations asks the network on import

_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, show the full traceback.")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def define_inference_flags(what: str = "the model's own", threshold: bool = True) -> Callable[[], dict]:
  """--tta, --largest_component, --component_fraction, --component_rank (and --threshold) for a
  command that makes masks, each unset meaning `what`; returns a function
  giving their values as `inference.Settings` overrides (None: unset)."""
  tta = flags.DEFINE_enum("tta", "", ["", *registry.names("tta")], f"Test-time augmentation; empty: {what}.")
  largest = flags.DEFINE_bool("largest_component", None, "Keep each patient's largest 3-D component "
                              f"(--nolargest_component: do not); unset: {what}.")
  fraction = flags.DEFINE_float("component_fraction", None, "With the component step, also keep every "
                                f"component of at least this fraction of the largest; unset: {what}.")
  rank = flags.DEFINE_enum("component_rank", "", ["", *COMPONENT_RANKS], "What ranks the components: "
                           f"voxels, or summed or highest probability; empty: {what}.")
  cut = flags.DEFINE_float("threshold", -1.0, f"Probability threshold; negative: {what}.") if threshold else None

  def overrides() -> dict:
    values = {"tta": tta.value or None, "largest_component": largest.value, "component_fraction": fraction.value,
              "component_rank": rank.value or None}
    if cut is not None:
      values["threshold"] = None if cut.value < 0 else cut.value
    return values

  return overrides


def is_main_process() -> bool:
  return jax.process_index() == 0


def progress(iterable=None, **kwargs):
  """A tqdm bar on process 0 only."""
  return tqdm.tqdm(iterable, disable=not is_main_process(), dynamic_ncols=True, **kwargs)


def quiet_terminal() -> None:
  """INFO stays off the terminal; log files (`log_to`) still get it."""
  logging.get_absl_handler().setLevel(std_logging.WARNING)
  std_logging.getLogger().setLevel(std_logging.INFO)


class log_to:
  """Context manager: the root logger's INFO records also go to `path`."""

  def __init__(self, path: pathlib.Path):
    self.handler = std_logging.FileHandler(path, mode="a")
    self.handler.setFormatter(std_logging.Formatter(LOG_FORMAT))
    self.handler.setLevel(std_logging.INFO)

  def __enter__(self):
    std_logging.getLogger().addHandler(self.handler)
    return self

  def __exit__(self, *exc):
    std_logging.getLogger().removeHandler(self.handler)
    self.handler.close()
    return False


def override(config, overrides: dict, what: str = "override"):
  """`config` with `overrides` ({dotted.key: value}) applied: ml_collections'
  update_from_flattened_dict on the locked config, so a misspelt key is an
  error, not a new setting; a key of an older layout is an error naming
  today's (config_defaults.RENAMED)."""
  for key in overrides:
    if config_defaults.renamed(key):
      raise KeyError(f"{what} {key!r}: renamed; use {' and/or '.join(config_defaults.renamed(key))}")
  was_locked = config.is_locked
  config.lock()
  try:
    for key, value in overrides.items():  # one at a time, so that an error names its key
      try:
        config.update_from_flattened_dict({key: value})
      except KeyError as e:
        raise KeyError(f"{what} {key!r}: {e.args[0] if e.args else e}") from None
  finally:
    if not was_locked:
      config.unlock()
  return config


def _renamed_config_flags(argv) -> None:
  """`--config.<key>=` with a key of an older layout: an error naming today's."""
  for arg in argv[1:]:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if config_defaults.renamed(key):
        raise app.UsageError(f"--config.{key} was renamed: use "
                             f"{' and/or '.join('--config.' + k for k in config_defaults.renamed(key))}")


def _parse_flags(argv):
  try:
    _renamed_config_flags(argv)
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  return app.parse_flags_with_usage(argv)


def run(main) -> None:
  """app.run(main) with a quiet terminal and one-line errors."""

  def wrapped(argv):
    quiet_terminal()
    try:
      return main(argv)
    except (ValueError, FileNotFoundError, KeyError, OSError, FloatingPointError, ImportError) as e:
      if _TRACEBACK.value:
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"error: {message}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped, flags_parser=_parse_flags)
