"""Training losses on logits, chosen by `config.loss.name`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


NAMES = ("dice_bce", "bce", "dice")


def soft_dice(logits: jax.Array, masks: jax.Array, smooth: float) -> jax.Array:
  """Per-sample soft Dice over (H, W, C): (2|P.Y| + s) / (|P| + |Y| + s).

  The smoothing term makes an empty truth score 1 only when the predicted
  probabilities are all near 0, so tumour-free slices still teach the model
  to predict nothing.
  """
  probs = jax.nn.sigmoid(logits)
  inter = jnp.sum(probs * masks, axis=(1, 2, 3))
  total = jnp.sum(probs, axis=(1, 2, 3)) + jnp.sum(masks, axis=(1, 2, 3))
  return (2 * inter + smooth) / (total + smooth)


def per_sample_loss(logits: jax.Array, masks: jax.Array, loss_config) -> jax.Array:
  """Loss of each sample, so callers can weight (and mask padding) as needed."""
  name = loss_config.name
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, masks), axis=(1, 2, 3))
  dice = 1.0 - soft_dice(logits, masks, loss_config.smooth)
  if name == "dice_bce":
    return loss_config.bce_weight * bce + loss_config.dice_weight * dice
  if name == "bce":
    return bce
  if name == "dice":
    return dice
  raise ValueError(f"config.loss.name: unknown loss {name!r} (known: {', '.join(NAMES)})")
