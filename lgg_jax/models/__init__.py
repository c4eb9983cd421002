"""Models chosen by name: `create(config.model, rngs=...)`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lgg_jax.models import fpn, resnext, unet

# The mesh axis the trainer averages over; BatchNorm syncs its statistics on it.
DATA_AXIS = "data"


def _unet(cfg, dtype, rngs):
  return unet.UNet(base_width=cfg.base_width, depth=cfg.depth, align_corners=cfg.align_corners,
                   conv_impl=cfg.conv_impl, dtype=dtype, rngs=rngs)


def _fpn(cfg, dtype, rngs):
  return fpn.FPN(base_width=cfg.base_width, pyramid_channels=cfg.fpn.pyramid_channels,
                 segmentation_channels=cfg.fpn.segmentation_channels,
                 group_norm_groups=cfg.fpn.group_norm_groups, align_corners=cfg.align_corners,
                 conv_impl=cfg.conv_impl, dtype=dtype, rngs=rngs)


def _resnext(cfg, dtype, rngs):
  r = cfg.resnext
  return resnext.ResNeXtUNet(stem_width=r.stem_width, blocks=tuple(r.blocks), groups=r.groups,
                             width_per_group=r.width_per_group, conv_impl=cfg.conv_impl,
                             axis_name=DATA_AXIS if r.sync_batch_norm else None, dtype=dtype, rngs=rngs)


REGISTRY = {"unet": _unet, "fpn": _fpn, "resnext_unet": _resnext}


def create(model_config, *, compute_dtype: str = "float32", rngs: nnx.Rngs) -> nnx.Module:
  if model_config.name not in REGISTRY:
    raise ValueError(f"config.model.name: unknown model {model_config.name!r} "
                     f"(known: {', '.join(sorted(REGISTRY))})")
  if compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
  return REGISTRY[model_config.name](model_config, jnp.dtype(compute_dtype), rngs)


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
