"""U-Net on a ResNeXt50-32x4d encoder (30,947,777 parameters), 256x256.

Run: python -m lgg_jax.main --config=configs/resnext.py \
       [--config.data.manual_dir=/path/to/lgg-mri-segmentation] \
       [--config.model.pretrained_path=/path/to/resnext50_32x4d.pth]
Without manual_dir it trains on the embedded synthetic dataset; without
pretrained_path the encoder starts from random weights (nothing is
downloaded). Meant for an accelerator; step times on a CPU beside the
PyTorch peer: benchmarks/RESULTS.md ("Train steps"). With the pretrained
encoder on real data: python -m experiments.run
--sweep=experiments/pretrained_encoder.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnext_unet"
  config.optimizer.learning_rate = 3e-4
  return config
