"""Training losses on logits, chosen by `config.loss.name` (lgg_jax/registry.py).

Each registered loss is built from its own block (`config.loss.<name>`) into
a `Loss`: how it combines the per-sample binary cross-entropy and soft Dice
score, and the Dice smoothing. `per_sample_loss` (logits) and
`probability_loss` (probabilities) compute those two once and hand them to it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgg_jax import registry


def soft_dice(logits: jax.Array, masks: jax.Array, smooth: float) -> jax.Array:
  """Per-sample soft Dice over (H, W, C): (2|P.Y| + s) / (|P| + |Y| + s).

  The smoothing term makes an empty truth score 1 only when the predicted
  probabilities are all near 0, so tumour-free slices still teach the model
  to predict nothing.
  """
  return _dice_score(jax.nn.sigmoid(logits), masks, smooth, axes=(1, 2, 3))


def _dice_score(probs, masks, smooth: float, axes) -> jax.Array:
  """(2|P.Y| + s) / (|P| + |Y| + s) over `axes`: the one soft-Dice formula."""
  inter = jnp.sum(probs * masks, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(masks, axis=axes)
  return (2 * inter + smooth) / (total + smooth)


class Loss(NamedTuple):
  combine: Callable[[jax.Array, jax.Array], jax.Array]  # (per-sample BCE, soft Dice score) -> loss
  smooth: float  # the soft Dice's smoothing term


def dice_bce(*, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> Loss:
  return Loss(lambda bce, dice_score: bce_weight * bce + dice_weight * (1.0 - dice_score), smooth)


def bce() -> Loss:
  return Loss(lambda bce, dice_score: bce, smooth=1.0)  # the Dice score is not used


def dice(*, smooth: float = 1.0) -> Loss:
  return Loss(lambda bce, dice_score: 1.0 - dice_score, smooth)


def make_loss(loss_config) -> Loss:
  """The named loss built from its block; a misspelt or foreign key is an error naming it."""
  name = loss_config.name
  return registry.build("loss", name, registry.block(loss_config, name), f"config.loss.{name}")


def per_sample_loss(logits: jax.Array, masks: jax.Array, loss_config) -> jax.Array:
  """Loss of each sample, so callers can weight (and mask padding) as needed."""
  loss = make_loss(loss_config)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, masks), axis=(1, 2, 3))
  return loss.combine(bce, soft_dice(logits, masks, loss.smooth))


def deep_supervision_weights(auxiliary_levels: int) -> jax.Array:
  """nnU-Net's: 1, 1/2, 1/4, ... from full resolution down, normalised to sum to 1."""
  weights = 0.5 ** jnp.arange(auxiliary_levels + 1, dtype=jnp.float32)
  return weights / weights.sum()


def deep_supervision_loss(logits: jax.Array, auxiliary: list[jax.Array], masks: jax.Array,
                          loss_config) -> jax.Array:
  """Per-sample loss of the full-resolution logits and of each auxiliary
  level's against the mask downsampled to it (nearest neighbour, so targets
  stay binary, as nnU-Net's), weighted by `deep_supervision_weights`."""
  weights = deep_supervision_weights(len(auxiliary))
  total = weights[0] * per_sample_loss(logits, masks, loss_config)
  for weight, level in zip(weights[1:], auxiliary):
    target = jax.image.resize(masks, masks.shape[:1] + level.shape[1:], "nearest")
    total = total + weight * per_sample_loss(level, target, loss_config)
  return total


def probability_loss(probs, masks, loss_config) -> jax.Array:
  """The same loss per slice of probabilities (N, H, W) against masks: the
  validation loss at the scoring resolution, where only probabilities exist."""
  loss = make_loss(loss_config)
  probs = jnp.clip(jnp.asarray(probs, jnp.float32), 1e-7, 1 - 1e-7)
  masks = jnp.asarray(masks, jnp.float32)
  bce = -jnp.mean(masks * jnp.log(probs) + (1 - masks) * jnp.log1p(-probs), axis=(1, 2))
  return loss.combine(bce, _dice_score(probs, masks, loss.smooth, axes=(1, 2)))
