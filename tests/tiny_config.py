"""A config for subprocess tests: python -m lgg_jax.main --config=tests/tiny_config.py ..."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 32
  config.data.synthetic.num_patients = 8
  config.data.synthetic.min_slices = 6
  config.data.synthetic.max_slices = 8
  config.model.unet.base_width = 4
  config.model.unet.depth = 3
  config.global_batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 3
  config.split.num_folds = 4
  config.split.val_fraction = 0.2
  config.optimizer.warmup_steps = 2
  config.optimizer.learning_rate = 3e-3
  config.preemption_check_every_steps = 1
  return config
