"""Models built by name: `create(config.model, in_channels=..., rngs=...)`.

`config.model.name` picks the registry entry (lgg_jax/registry.py) and the
block `config.model.<name>` is passed to its constructor as keyword
arguments; the settings every model shares (in_channels, conv_impl, dtype,
the batch axis) are set here. Each model class says how its input must
divide (`input_divisor(**block)`) and may check its block's values at
config time (`check_settings(**block)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lgg_jax import choices, parallel, registry
from lgg_jax.models import layers

COMPUTE_DTYPES = ("float32", "bfloat16")


def block(model_config) -> dict:
  """The named model's own settings, as constructor keyword arguments."""
  return registry.block(model_config, model_config.name)


def _fixed(model_class, model_config, in_channels: int, compute_dtype: str, rngs) -> dict:
  fixed = {"in_channels": in_channels, "conv_impl": model_config.conv_impl, "dtype": jnp.dtype(compute_dtype),
           "rngs": rngs}
  if "axis_name" in registry.signature(model_class).parameters:
    fixed["axis_name"] = parallel.AXIS  # BatchNorm statistics over the data-parallel batch
  return fixed


def input_divisor(model_config) -> int:
  """Image sides must be multiples of this (the model's total down-sampling)."""
  return registry.get("model", model_config.name).input_divisor(**block(model_config))


def check(model_config, image_size: int, compute_dtype: str = "float32") -> None:
  """Every model setting that would fail later, checked once, up front."""
  model_class = registry.get("model", model_config.name)
  choices.check("config.compute_dtype", compute_dtype, COMPUTE_DTYPES)
  choices.check("config.model.conv_impl", model_config.conv_impl, layers.CONV_IMPLS)
  registry.check_arguments(model_class, block(model_config), f"config.model.{model_config.name}",
                           fixed=_fixed(model_class, model_config, 3, compute_dtype, None))
  if hasattr(model_class, "check_settings"):  # optional: config-time checks of the block's values
    model_class.check_settings(**block(model_config))
  divisor = input_divisor(model_config)
  if image_size % divisor:
    raise ValueError(f"config.data.image_size={image_size} must be divisible by {divisor} for model "
                     f"{model_config.name}")


def create(model_config, *, in_channels: int = 3, compute_dtype: str = "float32", rngs: nnx.Rngs) -> nnx.Module:
  model_class = registry.get("model", model_config.name)
  choices.check("config.compute_dtype", compute_dtype, COMPUTE_DTYPES)
  return registry.build("model", model_config.name, block(model_config), f"config.model.{model_config.name}",
                        **_fixed(model_class, model_config, in_channels, compute_dtype, rngs))


def deep_supervision(model_config) -> bool:
  """Whether the model trains with auxiliary heads (a setting of its block)."""
  return bool(block(model_config).get("deep_supervision", False))


def for_inference(config):
  """The config that inference, exports and the shipped weights build: without
  the training-only auxiliary heads of deep supervision."""
  if not deep_supervision(config.model):
    return config
  config = config.copy_and_resolve_references()
  config.model[config.model.name].deep_supervision = False
  return config


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
