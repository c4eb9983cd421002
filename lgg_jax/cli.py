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

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations asks the network on import

_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, show the full traceback.")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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

  app.run(wrapped)
