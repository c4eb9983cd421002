"""The seed's FPN at full size (25,238,593 parameters), 256x256.

Run: python -m lgg_jax.main --config=configs/fpn.py \
       [--config.data.manual_dir=/path/to/lgg-mri-segmentation]
Without manual_dir it trains on the embedded synthetic dataset. Meant for an
accelerator. Beside the other models on real data: python -m experiments.run
--sweep=experiments/model_comparison.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "fpn"
  return config
