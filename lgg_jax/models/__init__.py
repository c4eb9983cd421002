"""Models chosen by name: `create(config.model, in_channels=..., rngs=...)`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lgg_jax import choices, parallel
from lgg_jax.models import fpn, layers, resnext, unet


def _unet(cfg, in_channels, dtype, rngs):
  return unet.UNet(in_channels=in_channels, base_width=cfg.base_width, depth=cfg.depth,
                   align_corners=cfg.align_corners, norm=cfg.norm, axis_name=parallel.AXIS,
                   conv_impl=cfg.conv_impl, deep_supervision=bool(cfg.get("deep_supervision", False)),
                   dtype=dtype, rngs=rngs)


def _fpn(cfg, in_channels, dtype, rngs):
  return fpn.FPN(in_channels=in_channels, base_width=cfg.base_width, pyramid_channels=cfg.fpn.pyramid_channels,
                 segmentation_channels=cfg.fpn.segmentation_channels,
                 group_norm_groups=cfg.fpn.group_norm_groups, align_corners=cfg.align_corners,
                 conv_impl=cfg.conv_impl, dtype=dtype, rngs=rngs)


def _resnext(cfg, in_channels, dtype, rngs):
  r = cfg.resnext
  return resnext.ResNeXtUNet(in_channels=in_channels, stem_width=r.stem_width, blocks=tuple(r.blocks),
                             groups=r.groups, width_per_group=r.width_per_group, conv_impl=cfg.conv_impl,
                             axis_name=parallel.AXIS if r.sync_batch_norm else None, dtype=dtype, rngs=rngs)


REGISTRY = {"unet": _unet, "fpn": _fpn, "resnext_unet": _resnext}
DEEP_SUPERVISION = ("unet",)  # models with decoder levels to supervise
COMPUTE_DTYPES = ("float32", "bfloat16")


def input_divisor(model_config) -> int:
  """Image sides must be multiples of this (the model's total down-sampling)."""
  return {"unet": 2 ** (model_config.depth - 1), "fpn": 32, "resnext_unet": 32}[model_config.name]


def check(model_config, image_size: int, compute_dtype: str = "float32") -> None:
  """Every model setting that would fail later, checked once, up front."""
  choices.check("config.model.name", model_config.name, sorted(REGISTRY))
  choices.check("config.compute_dtype", compute_dtype, COMPUTE_DTYPES)
  choices.check("config.model.conv_impl", model_config.conv_impl, layers.CONV_IMPLS)
  choices.check("config.model.norm", model_config.norm, layers.NORMS)
  if model_config.get("deep_supervision", False):
    if model_config.name not in DEEP_SUPERVISION:
      raise ValueError(f"config.model.deep_supervision is for {', '.join(DEEP_SUPERVISION)} only; model "
                       f"{model_config.name!r} has no auxiliary outputs")
    if model_config.depth < 3:
      raise ValueError(f"config.model.deep_supervision needs config.model.depth >= 3 (a decoder level below "
                       f"full resolution), got {model_config.depth}")
  divisor = input_divisor(model_config)
  if image_size % divisor:
    raise ValueError(f"config.data.image_size={image_size} must be divisible by {divisor} for model "
                     f"{model_config.name}")


def create(model_config, *, in_channels: int = 3, compute_dtype: str = "float32", rngs: nnx.Rngs) -> nnx.Module:
  choices.check("config.model.name", model_config.name, sorted(REGISTRY))
  choices.check("config.compute_dtype", compute_dtype, COMPUTE_DTYPES)
  return REGISTRY[model_config.name](model_config, in_channels, jnp.dtype(compute_dtype), rngs)


def for_inference(config):
  """The config that inference, exports and the shipped weights build: without
  the training-only auxiliary heads of deep supervision."""
  if not config.model.get("deep_supervision", False):
    return config
  config = config.copy_and_resolve_references()
  config.model.deep_supervision = False
  return config


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
