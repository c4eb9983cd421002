"""A config for subprocess tests: python -m lgg_jax.main --config=tests/tiny_config.py ...

The sweeps' CI-sized overrides (experiments/common.py TINY: 32x32, tiny
widths of every model) and what these tests need beside them.
"""

from configs import default
from experiments.common import TINY
from lgg_jax import cli


def get_config():
  config = cli.override(default.get_config(), TINY)
  config.data.synthetic.num_patients = 8
  config.num_epochs = 3
  config.split.num_folds = 4
  config.split.val_fraction = 0.2
  config.optimizer.learning_rate = 3e-3
  config.preemption_check_every_steps = 1
  config.write_report = True
  return config
