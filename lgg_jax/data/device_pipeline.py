"""The training data resident on the accelerator (`config.data.on_device=True`).

The training records at the model's size (uint8, `pipeline.Resident`) are
put on every device once (per process in multi-host runs: each process
holds them all). The host sends only the rows of each global batch (from
the same `pipeline.TrainOrder` as the grain path) and their positions in the
data order; inside the jitted step each device gathers its rows with their
2.5-D neighbours, augments them in JAX (`device_augment`), normalises them
with their patient's statistics and simulates missing sequences. All of it
is a pure function of (seed, position), so runs resume exactly and one
device equals eight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lgg_jax import choices, parallel
from lgg_jax.data import device_augment, pipeline, preprocess


def put_on_devices(res: pipeline.Resident, mesh) -> dict:
  """The resident arrays, replicated over the mesh."""
  stats = res.stats if res.stats is not None else np.zeros((int(res.patient.max()) + 1, 3, 4), np.float32)
  return parallel.replicate({"images": res.images, "masks": res.masks, "neighbours": res.neighbours,
                             "patient": res.patient, "stats": stats}, mesh)


class HostBatches:
  """What the host sends per step, this process's share of it: resident rows
  and their positions in the data order. Its state is the step."""

  def __init__(self, order: pipeline.TrainOrder):
    self.order, self.step = order, 0

  def __next__(self) -> dict:
    batch = self.order.batch
    rows = parallel.local_rows(batch)
    positions = np.arange(self.step * batch, (self.step + 1) * batch, dtype=np.int32)
    self.step += 1
    return {"row": self.order.rows(self.step - 1)[rows], "position": positions[rows]}

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, saved: dict) -> None:
    self.step = int(saved["step"])


def normalise(images: jax.Array, mode: str, stats: jax.Array) -> jax.Array:
  """`preprocess.normalise` in JAX; `stats` (B, 3, 4) per sample."""
  choices.check("config.data.normalization", mode, preprocess.NORMALIZATIONS)
  if mode == "unit":
    return images / 255.0
  if mode == "slice":
    mean = images.mean(axis=(1, 2), keepdims=True)
    std = images.std(axis=(1, 2), keepdims=True)
    return (images - mean) / (std + 1.0)
  stats = jnp.tile(stats, (1, images.shape[-1] // 3, 1))[:, None, None]  # (B, 1, 1, C, 4)
  return (jnp.clip(images, stats[..., 0], stats[..., 1]) - stats[..., 2]) / stats[..., 3]


def missing_sequences(key, images: jax.Array, position: jax.Array, probability: float) -> jax.Array:
  """`pipeline._MissingSequences` in JAX: per sample, with `probability`, the
  pre-contrast, post-contrast or both channels become FLAIR."""
  if probability <= 0:
    return images
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, position)
  draws = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(keys)
  apply = draws[:, 0] < probability
  pattern = jnp.minimum((draws[:, 1] * len(preprocess.MISSING_PATTERNS)).astype(jnp.int32),
                        len(preprocess.MISSING_PATTERNS) - 1)
  copy_pre = apply & (pattern != 1)    # patterns: 0 pre, 1 post, 2 both
  copy_post = apply & (pattern != 0)
  channels = images.shape[-1]
  role = jnp.arange(channels) % 3
  flair = jnp.repeat(images[..., 1::3], 3, axis=-1)  # each slice's FLAIR in all three of its channels
  replace = ((role == 0)[None] & copy_pre[:, None]) | ((role == 2)[None] & copy_post[:, None])  # (B, C)
  return jnp.where(replace[:, None, None, :], flair, images)


def make_prepare(config):
  """(device data, per-device batch of rows and positions) -> the model's batch."""
  augment = device_augment.make(config.augment)
  augment_key = jax.random.key(config.seed + 1)
  missing_key = jax.random.key(config.seed + 2)
  mode, probability = config.data.normalization, config.augment.missing_sequence_probability

  def prepare(data: dict, batch: dict) -> dict:
    stack = data["images"][data["neighbours"][batch["row"]]]  # (b, 2k+1, s, s, 3)
    b, depth, size = stack.shape[0], stack.shape[1], stack.shape[2]
    images = jnp.moveaxis(stack, 1, 3).reshape(b, size, size, depth * 3).astype(jnp.float32)
    masks = (data["masks"][batch["row"]] > 0).astype(jnp.float32)
    images, masks = augment(augment_key, images, masks, batch["position"])
    images = normalise(images, mode, data["stats"][data["patient"][batch["row"]]])
    images = missing_sequences(missing_key, images, batch["position"], probability)
    return {"image": images, "mask": masks[..., None]}

  return prepare
