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

import jax
import tqdm
from absl import app, flags, logging

from lgg_jax import config_defaults

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations asks the network on import

_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, show the full traceback.")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_main_process() -> bool:
  return jax.process_index() == 0


def write_whole(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` through a sibling file: a reader never sees half of it."""
  path = pathlib.Path(path)
  partial = path.with_name(path.name + ".partial")
  try:
    partial.write_text(text)
    os.replace(partial, path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise


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
      except TypeError as e:  # a value of another type than the setting's
        raise ValueError(f"{what} {key!r}={value!r}: {e}") from None
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


def _ours(module: str) -> bool:
  """A module of this project (by name, or a main module's path)."""
  return module.split(".")[0] in ("lgg_jax", "benchmarks", "experiments") or any(
      f"/{folder}/" in module for folder in ("lgg_jax", "benchmarks", "experiments"))


def flags_not_taken(main_module: str | None = None) -> list[str]:
  """Flags of this project given on the command line that the running
  command does not take: neither its own nor declared with
  flags.declare_key_flag (command_flags.take). Commands import one another,
  so their flags all exist in one process; this keeps a flag meant for
  another command from being silently ignored."""
  main_module = main_module or sys.argv[0]
  taken = {f.name for f in flags.FLAGS.get_key_flags_for_module(main_module)}
  taken |= {f.name for f in flags.FLAGS.get_key_flags_for_module(__name__)}  # --traceback
  ours = {f.name for module, defined in flags.FLAGS.flags_by_module_dict().items() if _ours(module)
          for f in defined}
  return sorted(name for name in ours - taken if flags.FLAGS[name].present)


def run(main, renamed_flags: dict[str, str] | None = None) -> None:
  """app.run(main) with a quiet terminal and one-line errors; a flag of
  another command is an error (naming its replacement where
  `renamed_flags` has one)."""

  def wrapped(argv):
    quiet_terminal()
    try:
      stray = flags_not_taken()
      if stray:
        hints = [f"--{name}: {(renamed_flags or {}).get(name, 'not a flag of this command')}" for name in stray]
        raise ValueError("; ".join(hints) + " (--help lists its flags)")
      return main(argv)
    except (ValueError, FileNotFoundError, KeyError, OSError, FloatingPointError, ImportError) as e:
      if _TRACEBACK.value:
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"error: {message}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped, flags_parser=_parse_flags)
