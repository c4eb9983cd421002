"""Entry point: python -m lgg_jax.main --config=configs/unet.py [--workdir=DIR]."""

import pathlib

import jax
from absl import flags, logging
from ml_collections import config_flags

from lgg_jax import cli, command_flags, report, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config"])
command_flags.take("workdir")  # the run folder; default runs/<config name>; re-running on it resumes


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  train.initialize_distributed(config)
  workdir = command_flags.one(command_flags.WORKDIR, "run folder") or str(pathlib.Path("runs") / pathlib.Path(
      config_flags.get_config_filename(flags.FLAGS["config"])).stem)
  logging.info("JAX %s on %d %s device(s), process %d of %d; workdir %s", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_index(), jax.process_count(), workdir)
  summary = train.train_and_evaluate(config, workdir)
  if summary.get("preempted"):
    logging.info("exiting after preemption at step %d", summary["step"])
  elif config.write_report:
    written = report.write(workdir)
    if written:
      print(f"report: {written}")


if __name__ == "__main__":
  cli.run(main)
