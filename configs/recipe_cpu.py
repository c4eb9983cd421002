"""The real-data recipe sized for 2 CPU cores (issue: segment real patients well).

Run (one patient fold of the 62 dev patients, about 45 minutes on 2 cores):
  python -m lgg_jax.main --config=configs/recipe_cpu.py \
      --config.data.manual_dir=../shared/data/lgg_dev --config.split.fold=0
All five folds (and the inference rows):
  python -m experiments.run --sweep=experiments/recipe.py \
      --rows=r7-epochs,r8-tta,r9-recipe,r10-threshold
Trains at 128x128; every score is at 256x256 on held-out patients. Its
folds, retrained, are the shipped ensemble (lgg_jax/pretrained/recipe_cpu/).
Figures: benchmarks/QUALITY.md ("The CPU recipe: 5-fold development
cross-validation", "Retraining on another day", "The shipped ensemble").
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.unet.base_width = 16
  config.model.unet.norm = "batch"        # BatchNorm after each conv (Buda et al.'s U-Net block)
  config.data.image_size = 128
  config.num_epochs = 40
  config.global_batch_size = 16
  config.optimizer.learning_rate = 2e-3
  config.schedule.warmup_steps = 200
  # Per-patient intensity normalisation over the brain (nnU-Net's MRI scheme).
  config.data.normalization = "patient"
  # 2.5-D: each slice with its two neighbours, 9 input channels.
  config.data.neighbours = 1
  # A third of every batch from tumour slices (nnU-Net's foreground oversampling).
  config.data.tumour_fraction = 0.33
  # nnU-Net's 2-D augmentation set where albumentations has it.
  config.augment.name = "nnunet"
  config.augment.affine_probability = 0.3
  config.augment.rotate_limit = 30.0
  config.augment.scale_limit = 0.2
  config.augment.shift_limit = 0.05
  # A quarter of the samples get pre- and/or post-contrast replaced by FLAIR,
  # as the dataset does for patients missing a sequence.
  config.augment.missing_sequence_probability = 0.25
  # Inference: 8-way dihedral TTA and the largest 3-D component of each
  # patient; the threshold stays 0.5 (choosing it on the few validation
  # patients did not help: experiments/recipe.py's last row).
  config.inference.tta = "dihedral"
  config.inference.largest_component = True
  config.split.num_folds = 5
  return config
