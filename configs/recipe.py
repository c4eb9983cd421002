"""The real-data recipe at full size, for a GPU: configs/recipe_cpu.py's
elements on the seed's full-width U-Net (base width 64) at 256x256.

Run: python -m lgg_jax.main --config=configs/recipe.py \
       --config.data.manual_dir=/path/to/lgg-mri-segmentation --config.split.fold=0
All five folds: for k in 0 1 2 3 4; do python -m lgg_jax.main --config=configs/recipe.py \
  --config.data.manual_dir=/path/to/lgg-mri-segmentation --config.split.fold=$k --workdir=runs/recipe/fold$k; done
On a GPU add --config.data.on_device=True to augment on the device.
Figures, once a GPU has run it: benchmarks/QUALITY.md.
"""

from configs import recipe_cpu


def get_config():
  config = recipe_cpu.get_config()
  config.model.unet.base_width = 64
  config.data.image_size = 256
  config.num_epochs = 60
  config.optimizer.learning_rate = 1e-3
  config.eval_batch_size = 64
  return config
