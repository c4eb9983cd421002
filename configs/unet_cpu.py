"""The README's first run: a narrow U-Net on the synthetic data, sized for CPU.

Run: python -m lgg_jax.main --config=configs/unet_cpu.py
Sizes: 40 synthetic patients (~1,200 slices) at 128x128, U-Net base width 16
(487,297 parameters), batch 16, 6 epochs, for 2 CPU cores. Its time and
scores: benchmarks/RESULTS.md ("Training on the embedded synthetic data").
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.unet.base_width = 16
  config.data.image_size = 128
  config.num_epochs = 6
  config.global_batch_size = 16
  config.optimizer.learning_rate = 2e-3
  config.schedule.warmup_steps = 50
  return config
