"""Defaults shared by every config: lgg_jax/config_defaults.py, where each
knob an ablation may turn lives (restoring a saved run needs them, so they
are part of the library). Each part's settings sit in the block of its
name: config.model.unet (fpn, resnext_unet), config.loss.dice_bce (dice,
bce), config.optimizer.adamw (adam, sgd), config.schedule.cosine (constant).

Model configs (`unet.py`, ...) start from `get_config()` and change only what
differs. Any key can be overridden on the command line, e.g.
`--config.num_epochs=5 --config.data.manual_dir=/data/lgg`.
"""

import ml_collections

from lgg_jax import config_defaults


def get_config() -> ml_collections.ConfigDict:
  return config_defaults.get_config()
