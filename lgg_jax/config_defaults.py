"""The config's layout: every knob with its default, and the map from older layouts.

Part of the library because restoring a saved run needs both: a run, export
or shipped model written in an older layout is read through `from_saved`,
which renames its keys (`RENAMED`) and gives settings added since their
defaults. configs/default.py is `get_config()`; model configs
(configs/unet.py, ...) start from it and change only what differs. Any key
can be overridden on the command line, e.g. `--config.num_epochs=5
--config.data.manual_dir=/data/lgg`.
"""

from __future__ import annotations

import ml_collections

# Keys of older layouts (a key or a whole block) and the keys that hold them
# today. The block of a registry entry is named as the entry:
# `config.model.resnext_unet`, formerly `config.model.resnext`.
RENAMED = {
    "threshold": ("inference.threshold",),
    "model.base_width": ("model.unet.base_width", "model.fpn.base_width"),
    "model.depth": ("model.unet.depth",),
    "model.norm": ("model.unet.norm",),
    "model.align_corners": ("model.unet.align_corners", "model.fpn.align_corners"),
    "model.deep_supervision": ("model.unet.deep_supervision",),
    "model.resnext": ("model.resnext_unet",),
    "loss.bce_weight": ("loss.dice_bce.bce_weight",),
    "loss.dice_weight": ("loss.dice_bce.dice_weight",),
    "loss.smooth": ("loss.dice_bce.smooth", "loss.dice.smooth"),
    "optimizer.b1": ("optimizer.adamw.b1", "optimizer.adam.b1"),
    "optimizer.b2": ("optimizer.adamw.b2", "optimizer.adam.b2"),
    "optimizer.weight_decay": ("optimizer.adamw.weight_decay",),
    "optimizer.momentum": ("optimizer.sgd.momentum",),
    "optimizer.schedule": ("schedule.name",),
    "optimizer.warmup_steps": ("schedule.warmup_steps",),
    "optimizer.final_lr_fraction": ("schedule.cosine.final_lr_fraction",),
}
# Keys that older versions wrote and no version reads any more (dropped on loading).
REMOVED = ("model.resnext.grouped_conv",)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 50
  config.global_batch_size = 16    # split evenly over every device
  config.eval_batch_size = 32
  config.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 2
  config.log_every_steps = 20       # TensorBoard: training loss, grad norm and lr every N steps
  config.write_report = True  # main (and the sweep runner) write workdir/report/report.md after training
  config.preemption_check_every_steps = 10  # multi-process: how often SIGTERM is agreed on

  # Multi-host: jax.distributed.initialize() before anything else. With no
  # address it auto-detects SLURM, TPU pods and Kubernetes; set all three
  # for a manual launch (e.g. several processes on one machine).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ""   # host:port of process 0
  config.distributed.num_processes = 0
  config.distributed.process_id = -1
  config.distributed.cpu_collectives = "gloo"   # CPU-only multi-process runs need one

  # The model: `name` picks a registry entry (lgg_jax/registry.py) and the
  # block of that name holds its constructor's keyword arguments, nothing
  # else (a misspelt key is an error naming it). Only the named block is read.
  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  # Same functions, backend-specific forms: "xla" (plain lax convs, for GPU/TPU)
  # or "cpu" (dot-based kernel gradients, bundled grouped convs, sub-pixel
  # transposed convs: XLA:CPU runs those several times faster). "auto" picks.
  config.model.conv_impl = "auto"
  # Models with an encoder (resnext_unet): torchvision resnext50_32x4d
  # ImageNet weights (.pth or .safetensors; never downloaded), and how long the
  # trainer keeps the encoder fixed.
  config.model.pretrained_path = ""
  config.model.freeze_encoder_epochs = 0      # encoder parameters fixed for the first N epochs
  config.model.freeze_encoder_bn_epochs = 0   # encoder BatchNorm in eval mode for the first N epochs
  config.model.unet = ml_collections.ConfigDict()
  config.model.unet.base_width = 64      # channels of the first level, doubled per level
  config.model.unet.depth = 4            # levels; depth - 1 max-pools
  config.model.unet.align_corners = True  # the seed's nn.Upsample(align_corners=True)
  config.model.unet.norm = "none"        # "none" (the seed's) or "batch" (after each conv, synced)
  # Auxiliary logits at each decoder level below full resolution, scored
  # against downsampled targets with weights halving per level (nnU-Net's deep
  # supervision); training only, never in inference or exports.
  config.model.unet.deep_supervision = False
  config.model.fpn = ml_collections.ConfigDict()
  config.model.fpn.base_width = 64
  config.model.fpn.pyramid_channels = 256
  config.model.fpn.segmentation_channels = 256
  config.model.fpn.group_norm_groups = 32
  config.model.fpn.align_corners = True
  config.model.resnext_unet = ml_collections.ConfigDict()
  config.model.resnext_unet.stem_width = 64
  config.model.resnext_unet.blocks = (3, 4, 6, 3)
  config.model.resnext_unet.groups = 32
  config.model.resnext_unet.width_per_group = 4
  config.model.resnext_unet.sync_batch_norm = True  # BatchNorm statistics over all devices

  config.data = ml_collections.ConfigDict()
  # Folder holding kaggle_3m/ (or kaggle_3m/ itself). Empty: the embedded
  # synthetic dataset below, generated once under data_dir.
  config.data.manual_dir = ""
  config.data.data_dir = "~/.cache/lgg_jax"  # prepared TFDS copies and the synthetic data
  config.data.image_size = 256
  # Train on random crops of this side at the full 256x256 resolution (0:
  # whole slices at image_size, which must then be 256). Validation and
  # inference run on whole slices. crop_context: pixels of context around the
  # crop that augmentation sees (data/crops.py).
  config.data.crop_size = 0
  config.data.crop_context = 32
  # "slice": per-slice, per-channel z-score; "unit": x / 255; "patient": per
  # channel over the patient's volume, brain (non-zero) voxels only: clip at
  # `normalization_percentiles`, then z-score (nnU-Net's MRI scheme).
  config.data.normalization = "slice"
  config.data.normalization_percentiles = (0.5, 99.5)
  # 2.5-D input: slices +-k of the same patient as extra channels (edge
  # slices repeat); 0 is plain 2-D. The models take 3 * (2k + 1) channels.
  config.data.neighbours = 0
  # Tumour-aware sampling: this share of every batch is drawn from tumour
  # slices (nnU-Net forces 33% foreground); 0 draws uniformly.
  config.data.tumour_fraction = 0.0
  config.data.num_workers = 0        # grain worker processes; 0 reads in the main process
  # Keep the training records on the accelerator and augment there, in JAX
  # (data/device_pipeline.py), instead of grain + albumentations on the host.
  config.data.on_device = False
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_patients = 40
  config.data.synthetic.min_slices = 20
  config.data.synthetic.max_slices = 40
  config.data.synthetic.image_size = 256
  config.data.synthetic.seed = 0

  config.split = ml_collections.ConfigDict()
  config.split.protocol = "patient"  # "slice" reproduces the seed's leaky split (ablation only)
  config.split.num_folds = 5         # fold `fold` is the test set
  config.split.fold = 0
  config.split.val_fraction = 0.15   # of the non-test patients
  config.split.seed = 0
  # A split.json (written by every run, or by hand: {"train": [...], "val":
  # [...], "test": [...]} patient ids) instead of the folds above.
  config.split.file = ""

  config.augment = ml_collections.ConfigDict()
  # "none" | "flips" | "seed" (the seed's set) | "distortions" (seed + elastic/grid/optical)
  # | "nnunet" (nnU-Net's 2-D set where albumentations has it: flips, rot90,
  # transpose, rotation/scale/shift, brightness, contrast, gamma, noise, blur)
  config.augment.name = "flips"
  config.augment.flip_probability = 0.5
  config.augment.rotate90_probability = 0.5
  config.augment.transpose_probability = 0.5
  config.augment.affine_probability = 0.25   # the seed's ShiftScaleRotate(0.01, 0.04, 0)
  config.augment.shift_limit = 0.01          # fraction of the image size
  config.augment.scale_limit = 0.04
  config.augment.rotate_limit = 0.0          # degrees
  config.augment.distortion_probability = 0.8  # one of the three below
  config.augment.elastic_alpha = 120.0
  config.augment.elastic_sigma = 6.0         # 120 * 0.05, as the seed
  config.augment.grid_num_steps = 5
  config.augment.grid_distort_limit = 0.3
  config.augment.optical_distort_limit = 0.5  # albumentations 2.x range is [-1, 1]
  # Intensity transforms of the "nnunet" set, on the uint8 image before
  # normalisation (nnU-Net's probabilities and ranges).
  config.augment.brightness_limit = 0.25     # multiplier in [1 - l, 1 + l]
  config.augment.brightness_probability = 0.15
  config.augment.contrast_limit = 0.25       # contrast factor in [1 - l, 1 + l] around the mean
  config.augment.contrast_probability = 0.15
  config.augment.gamma_range = (0.7, 1.5)
  config.augment.gamma_probability = 0.3
  config.augment.noise_std_max = 0.1         # Gaussian noise std up to this fraction of 255
  config.augment.noise_probability = 0.1
  config.augment.blur_sigma_range = (0.5, 1.0)  # pixels
  config.augment.blur_probability = 0.2
  # Any set: with this probability a sample's pre-contrast, post-contrast or
  # both channels become copies of FLAIR, as the dataset fills a missing
  # sequence (15 of its 110 patients); applied after normalisation.
  config.augment.missing_sequence_probability = 0.0

  # How probabilities are made from a trained model (evaluate, predict, the
  # Segmenter and the trainer's validation all use these).
  config.inference = ml_collections.ConfigDict()
  config.inference.threshold = 0.5  # on the sigmoid probability
  config.inference.tta = "none"     # "none" | "flips" (h, v) | "dihedral" (8 flips x rot90)
  config.inference.largest_component = False  # keep each patient's largest 3-D component
  # With largest_component: also keep every component of at least this
  # fraction of the largest (multi-focal tumours); 0: the largest alone.
  config.inference.component_fraction = 0.0
  # What "largest" means: "volume" (voxels), "probability_sum" or
  # "probability_max" (the component's summed or highest probability).
  config.inference.component_rank = "volume"
  # After training, pick the threshold (grid 0.1..0.9) with the best mean
  # per-patient Dice on the validation patients; else `threshold`.
  config.inference.choose_threshold = False

  # Scoring: per-patient volumetric Dice at 256x256, slices in order; 3-D HD95.
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.slice_spacing = 1.0  # HD95 voxel spacing (slice, 1, 1), in pixels
  # HD95 of a patient with exactly one empty mask is undefined; counted, and
  # in the penalised mean it costs this (the 256x256 image diagonal, px).
  config.evaluation.hd95_penalty = 362.0

  # Loss, optimizer and schedule: `name` picks a registry entry and the block
  # of that name holds its keyword arguments (only the named block is read).
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "dice_bce"      # "dice_bce" | "dice" | "bce"
  config.loss.dice_bce = ml_collections.ConfigDict()
  config.loss.dice_bce.bce_weight = 1.0
  config.loss.dice_bce.dice_weight = 1.0
  config.loss.dice_bce.smooth = 1.0   # the soft Dice's smoothing term
  config.loss.dice = ml_collections.ConfigDict()
  config.loss.dice.smooth = 1.0
  config.loss.bce = ml_collections.ConfigDict()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"    # "adamw" | "adam" | "sgd"
  config.optimizer.learning_rate = 1e-3  # the schedule's peak
  config.optimizer.grad_clip_norm = 1.0  # 0 disables
  config.optimizer.adamw = ml_collections.ConfigDict()
  config.optimizer.adamw.b1 = 0.9
  config.optimizer.adamw.b2 = 0.999
  config.optimizer.adamw.weight_decay = 1e-4
  config.optimizer.adam = ml_collections.ConfigDict()
  config.optimizer.adam.b1 = 0.9
  config.optimizer.adam.b2 = 0.999
  config.optimizer.sgd = ml_collections.ConfigDict()
  config.optimizer.sgd.momentum = 0.9
  config.optimizer.sgd.nesterov = True

  # Linear warm-up from 0 to config.optimizer.learning_rate, then the named shape.
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"    # "cosine" | "constant"
  config.schedule.warmup_steps = 100
  config.schedule.cosine = ml_collections.ConfigDict()
  config.schedule.cosine.final_lr_fraction = 0.01  # of the peak, at step total_steps (one past the last)
  config.schedule.constant = ml_collections.ConfigDict()
  return config


def renamed(key: str) -> tuple[str, ...] | None:
  """Today's keys for a dotted key of an older layout; None for a current key."""
  for old, new in RENAMED.items():
    if key == old or key.startswith(old + "."):
      return tuple(n + key[len(old):] for n in new)
  return None


def flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def migrate(flat: dict) -> dict:
  """Dotted keys of any layout to today's (the one migration, for runs,
  exports and the shipped ensemble alike)."""
  return {new: value for key, value in flat.items() if key not in REMOVED for new in (renamed(key) or (key,))}


def from_saved(saved: dict, source: str = "saved config") -> ml_collections.ConfigDict:
  """A config written by any version: renamed to today's layout, over today's
  defaults (settings added since it was written keep the behaviour runs had
  before). A key no version had is an error naming `source`."""
  config = get_config()
  config.lock()
  try:
    config.update_from_flattened_dict(migrate(flatten(saved)))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{source}: {e}") from None
  config.unlock()
  return config


# Settings that change neither what a run trains nor how it is scored: where
# files sit, and how fast or how often things happen.
OPERATIONAL = ("data.data_dir", "data.manual_dir", "data.num_workers", "distributed.", "eval_batch_size",
               "keep_checkpoints", "log_every_steps", "preemption_check_every_steps", "write_report",
               "checkpoint_every_epochs", "model.conv_impl", "model.pretrained_path")
_NAMED_BLOCKS = ("model", "loss", "optimizer", "schedule")  # one block each is in use: the one `name` names


def differences(saved: dict, config, source: str = "saved config") -> list[str]:
  """The settings in which `config` differs from `saved` (a config of any
  version, as written to config.json), leaving out the operational ones and
  the blocks of the models, losses, optimizers and schedules not in use."""
  before, now = flatten(from_saved(saved, source).to_dict()), flatten(config.to_dict())

  def read(key):
    parts = key.split(".")
    if parts[0] in _NAMED_BLOCKS and len(parts) > 2 and parts[1] != now.get(f"{parts[0]}.name"):
      return False
    return not key.startswith(OPERATIONAL)

  return [f"config.{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(before) | set(now))
          if read(key) and before.get(key) != now.get(key)]
