"""The seed's vanilla U-Net at full size (7,782,913 parameters), 256x256.

Run: python -m lgg_jax.main --config=configs/unet.py \
       --config.data.manual_dir=/path/to/lgg-mri-segmentation
Without manual_dir it trains on the embedded synthetic dataset. Meant for an
accelerator: on a 2-core CPU a step takes tens of seconds (the run says how
long up front); use configs/unet_cpu.py there.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "unet"
  return config
