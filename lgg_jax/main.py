"""Entry point: python -m lgg_jax.main --config=configs/unet.py [--workdir=DIR]."""

import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder; default runs/<config name>. "
                               "Re-running on the same folder resumes.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries(logging.logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the training log."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  import jax  # after flags, so XLA_FLAGS from the environment apply

  from lgg_jax import train
  train.initialize_distributed(_CONFIG.value)
  workdir = _WORKDIR.value or str(pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem)
  logging.info("JAX %s on %d %s device(s), process %d of %d; workdir %s", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_index(), jax.process_count(), workdir)
  summary = train.train_and_evaluate(_CONFIG.value, workdir)
  if summary.get("preempted"):
    logging.info("exiting after preemption at step %d", summary["step"])


if __name__ == "__main__":
  app.run(main)
