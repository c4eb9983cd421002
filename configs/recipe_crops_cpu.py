"""The CPU recipe at the dataset's full resolution: 128x128 crops of the
256x256 slices, with deep supervision (issue: fewer failures).

Run (one patient fold of the 62 dev patients, on 2 CPU cores):
  python -m lgg_jax.main --config=configs/recipe_crops_cpu.py \
      --config.data.manual_dir=../shared/data/lgg_dev --config.split.fold=0
All five folds, the crops-only row beside it and the shipped settings:
  python -m experiments.run --sweep=experiments/full_resolution.py
Each training step sees a 128x128 crop, as configs/recipe_cpu.py sees a whole
slice downsized to 128x128, so a step costs about the same; validation and
every score run on whole 256x256 slices. Figures: benchmarks/QUALITY.md
("Full resolution").
"""

from configs import recipe_cpu


def get_config():
  config = recipe_cpu.get_config()
  config.data.image_size = 256       # the model sees full-resolution pixels ...
  config.data.crop_size = 128        # ... in 128x128 crops while training (data/crops.py)
  config.data.crop_context = 32      # augmentation sees a 192x192 window around each crop
  config.model.unet.deep_supervision = True  # nnU-Net's auxiliary losses at 1/2 and 1/4 resolution
  config.eval_batch_size = 16        # whole 256x256 slices: a quarter of the rows per batch
  return config
