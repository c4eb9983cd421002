"""U-Net on a ResNeXt50-32x4d encoder (30,947,777 parameters), 256x256.

Run: python -m lgg_jax.main --config=configs/resnext.py \
       [--config.data.manual_dir=/path/to/lgg-mri-segmentation] \
       [--config.model.pretrained_path=/path/to/resnext50_32x4d.pth]
Without manual_dir it trains on the embedded synthetic dataset; without
pretrained_path the encoder starts from random weights (nothing is
downloaded). Meant for an accelerator: on a 2-core CPU a 256x256 step of
batch 4 takes about 8 s (benchmarks/RESULTS.md), so an epoch of the synthetic
data (about 50 steps of 16) should take about half an hour. Target on real data (issue 9, not
yet measured here): mean per-patient Dice >= 0.82 over 5 patient folds.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnext_unet"
  config.optimizer.learning_rate = 3e-4
  return config
