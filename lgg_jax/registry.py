"""Every part chosen by a name in the config, as big_vision and scenic do.

A leaf: it imports only `choices` (itself a leaf), so command-line flags, configs and
the data layer can list the names without loading models or optimizers.
Entries are "module:attribute" strings imported on first use. Each part is
built from its own config block (`config.model.<name>`, `config.loss.<name>`,
`config.optimizer.<name>`, `config.schedule.<name>`) passed as keyword
arguments; the constructor's signature decides which keys are allowed.
Adding a model is one file plus one line in MODELS (README: "How the code
is laid out").
"""

from __future__ import annotations

import importlib
import inspect

from lgg_jax import choices

PARTS = {
    "model": {
        "unet": "lgg_jax.models.unet:UNet",
        "fpn": "lgg_jax.models.fpn:FPN",
        "resnext_unet": "lgg_jax.models.resnext:ResNeXtUNet",
    },
    "loss": {  # config.loss.<name> -> losses.Loss
        "dice_bce": "lgg_jax.losses:dice_bce",
        "bce": "lgg_jax.losses:bce",
        "dice": "lgg_jax.losses:dice",
    },
    "optimizer": {  # (learning rate, **config.optimizer.<name>) -> optax transformation
        "adamw": "lgg_jax.optimizers:adamw",
        "adam": "lgg_jax.optimizers:adam",
        "sgd": "lgg_jax.optimizers:sgd",
    },
    "schedule": {  # (peak rate, total and warm-up steps, **config.schedule.<name>) -> optax schedule
        "cosine": "lgg_jax.optimizers:cosine",
        "constant": "lgg_jax.optimizers:constant",
    },
    "augmentation": {  # config.augment -> fn(example, rng) -> example (data/device_augment.py has each in JAX)
        "none": "lgg_jax.data.augment:no_augmentation",
        "flips": "lgg_jax.data.augment:flips",
        "seed": "lgg_jax.data.albumentations_sets:Albumentations",
        "distortions": "lgg_jax.data.albumentations_sets:Albumentations",
        "nnunet": "lgg_jax.data.albumentations_sets:Albumentations",
    },
    "tta": {  # -> the test-time views, each a (forward, inverse) pair of array maps
        "none": "lgg_jax.inference:no_views",
        "flips": "lgg_jax.inference:flip_views",
        "dihedral": "lgg_jax.inference:dihedral_views",
    },
}

# The config setting each part's name is read from, for error messages.
SETTINGS = {"model": "config.model.name", "loss": "config.loss.name", "optimizer": "config.optimizer.name",
            "schedule": "config.schedule.name", "augmentation": "config.augment.name",
            "tta": "config.inference.tta"}


def names(part: str) -> tuple[str, ...]:
  return tuple(PARTS[part])


def check(part: str, name) -> None:
  """Raises ValueError naming the setting, the bad name and the known names."""
  choices.check(SETTINGS[part], name, names(part))


def block(parent, name: str) -> dict:
  """The settings of the part called `name`: the block of that name under its
  config block (`block(config.model, "unet")` is config.model.unet); {} if absent."""
  return dict(parent[name]) if name in parent else {}


def get(part: str, name):
  """The registered object (imported now)."""
  check(part, name)
  module, _, attribute = PARTS[part][name].partition(":")
  return getattr(importlib.import_module(module), attribute)


def signature(function) -> inspect.Signature:
  """A function's or a class constructor's signature (flax modules hide the
  constructor's behind their metaclass)."""
  return inspect.signature(function.__init__ if inspect.isclass(function) else function)


def check_arguments(function, block: dict, setting: str, fixed=()) -> None:
  """Every key of `block` must be a keyword argument of `function` that the
  caller does not set itself (`fixed`)."""
  parameters = signature(function).parameters
  allowed = [p for p in parameters if p not in fixed and p != "self"
             and parameters[p].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  unknown = sorted(set(block) - set(allowed))
  if unknown:
    raise ValueError(f"{setting}: {', '.join(unknown)} {'is not a setting' if len(unknown) == 1 else 'are not settings'}"
                     f" of {getattr(function, '__qualname__', function)} (its settings: {', '.join(allowed)})")


def build(part: str, name: str, block: dict, setting: str, **fixed):
  """`get(part, name)(**block, **fixed)`, with block keys checked first."""
  function = get(part, name)
  check_arguments(function, block, setting, fixed)
  return function(**block, **fixed)
