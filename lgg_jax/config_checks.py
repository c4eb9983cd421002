"""The checks a run's config gets before any work: what no constructor checks
(batch sizes against devices and processes, files that must exist, ranges),
and building the loss, optimizer and schedule and checking the model and crop
settings once, up front, so a mistake fails in a second rather than after the
data is prepared. The trainer calls it; tests and the sweeps' checks too.
"""

from __future__ import annotations

import pathlib

from ml_collections.config_flags import config_path

from lgg_jax import choices, losses, models, optimizers, registry
from lgg_jax.data import crops, device_augment, preprocess, splits


# (setting, (lowest, excluded?), (highest, excluded?) or None): ranges no
# constructor checks. A negative clip norm flips every gradient; a negative
# warm-up gives none.
_RANGES = (
    ("optimizer.learning_rate", (0, True), None),
    ("optimizer.grad_clip_norm", (0, False), None),  # 0: no clipping
    ("schedule.warmup_steps", (0, False), None),
    ("schedule.cosine.final_lr_fraction", (0, False), (1, False)),
    ("model.freeze_encoder_epochs", (0, False), None),
    ("model.freeze_encoder_bn_epochs", (0, False), None),
    ("inference.threshold", (0, True), (1, True)),
    ("inference.component_fraction", (0, False), (1, False)),
    ("data.num_workers", (0, False), None),
    ("data.crop_context", (0, False), None),
    ("evaluation.slice_spacing", (0, True), None),
    ("evaluation.hd95_penalty", (0, False), None),
)


def validate_config(config, device_count: int, process_count: int) -> None:
  """Fails before any work on settings that would fail (or mislead) later."""
  for name in ("global_batch_size", "eval_batch_size"):
    value = config[name]
    if value <= 0 or value % device_count:
      raise ValueError(f"config.{name}={value} must be a positive multiple of the "
                       f"device count ({device_count})")
    if value % process_count:
      raise ValueError(f"config.{name}={value} must divide among {process_count} processes")
  for part, name in (("augmentation", config.augment.name), ("tta", config.inference.tta)):
    registry.check(part, name)
  losses.make_loss(config.loss)  # the constructors check their names and blocks
  optimizers.make_optimizer(config, total_steps=1)
  for setting, value, allowed in (
      ("config.data.normalization", config.data.normalization, preprocess.NORMALIZATIONS),
      ("config.inference.component_rank", config.inference.component_rank, choices.COMPONENT_RANKS)):
    choices.check(setting, value, allowed)
  models.check(config.model, config.data.image_size, config.compute_dtype)
  crops.check(config.data, models.input_divisor(config.model))
  if config.data.neighbours < 0:
    raise ValueError(f"config.data.neighbours={config.data.neighbours} must be >= 0")
  if not 0.0 <= config.data.tumour_fraction <= 1.0:
    raise ValueError(f"config.data.tumour_fraction={config.data.tumour_fraction} must be in [0, 1]")
  if config.model.pretrained_path and not pathlib.Path(config.model.pretrained_path).expanduser().is_file():
    raise ValueError(f"config.model.pretrained_path={config.model.pretrained_path} is not a file")
  if config.keep_checkpoints < 1:
    raise ValueError(f"config.keep_checkpoints={config.keep_checkpoints} must be at least 1 (resuming needs the "
                     "latest save)")
  for name in ("num_epochs", "checkpoint_every_epochs", "log_every_steps", "preemption_check_every_steps"):
    if config[name] <= 0:
      raise ValueError(f"config.{name} must be positive, got {config[name]}")
  for setting, low, high in _RANGES:
    value = config_path.get_value(setting, config)
    high = high or (float("inf"), False)
    if not ((low[0] < value) if low[1] else (low[0] <= value)) or not ((value < high[0]) if high[1]
                                                                        else (value <= high[0])):
      bounds = f"{'(' if low[1] else '['}{low[0]}, {high[0]}{')' if high[1] else ']'}"
      raise ValueError(f"config.{setting}={value} must be in {bounds}")
  for name in ("freeze_encoder_epochs", "freeze_encoder_bn_epochs"):
    if config.model[name] > config.num_epochs:
      raise ValueError(f"config.model.{name}={config.model[name]} is more than the run's "
                       f"config.num_epochs={config.num_epochs}")
  splits.check(config.split)
  if config.data.on_device:
    device_augment.check_supported(config.augment)
  if config.split.file and not pathlib.Path(config.split.file).expanduser().is_file():
    raise ValueError(f"config.split.file={config.split.file} is not a file")
  if config.data.manual_dir and not pathlib.Path(config.data.manual_dir).expanduser().exists():
    raise ValueError(f"config.data.manual_dir={config.data.manual_dir} does not exist")
