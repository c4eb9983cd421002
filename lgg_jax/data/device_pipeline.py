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

from lgg_jax import parallel
from lgg_jax.data import crops, device_augment, pipeline, preprocess


def put_on_devices(res: pipeline.Resident, mesh) -> dict:
  """The resident arrays, replicated over the mesh."""
  stats = res.stats if res.stats is not None else np.zeros((int(res.patient.max()) + 1, 3, 4), np.float32)
  return parallel.replicate({"images": res.images, "masks": res.masks, "neighbours": res.neighbours,
                             "patient": res.patient, "stats": stats}, mesh)


class HostBatches:
  """What the host sends per step, this process's share of it: resident rows,
  their positions in the data order and, with a crop plan, each crop's
  origin (`crops.CropPlan`, as the host path places them). Its state is the step."""

  def __init__(self, order: pipeline.TrainOrder, plan: crops.CropPlan | None = None):
    self.order, self.plan, self.step = order, plan, 0

  def __next__(self) -> dict:
    batch = self.order.batch
    rows = parallel.local_rows(batch)
    positions = np.arange(self.step * batch, (self.step + 1) * batch, dtype=np.int32)
    global_rows = self.order.rows(self.step)
    self.step += 1
    sent = {"row": global_rows[rows], "position": positions[rows]}
    if self.plan is not None:
      sent["origin"] = self.plan.origins(global_rows[rows], positions[rows])
    return sent

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, saved: dict) -> None:
    self.step = int(saved["step"])


def host_batches(res: pipeline.Resident, config) -> HostBatches:
  """The host side of the on-device path: the data order and its crop plan."""
  order = pipeline.train_order(res, config)
  return HostBatches(order, pipeline.crop_plan(res, order, config))


def missing_sequences(key, images: jax.Array, position: jax.Array, probability: float) -> jax.Array:
  """`pipeline._MissingSequences`'s draw in JAX: per sample, with `probability`,
  the pre-contrast, post-contrast or both channels become FLAIR
  (`preprocess.copy_flair`)."""
  if probability <= 0:
    return images
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, position)
  draws = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(keys)
  apply = draws[:, 0] < probability
  pattern = jnp.minimum((draws[:, 1] * len(preprocess.MISSING_PATTERNS)).astype(jnp.int32),
                        len(preprocess.MISSING_PATTERNS) - 1)
  missing = preprocess.missing_channels(pattern, xp=jnp) & apply[:, None]  # (B, 3)
  return preprocess.copy_flair(images, missing, xp=jnp)


def cut_windows(images: jax.Array, origins: jax.Array, crop: int, context: int) -> jax.Array:
  """`crops.cut_window` of each image of a (B, H, W, ...) batch at its (B, 2) origin."""
  pad = [(0, 0), (context, context), (context, context)] + [(0, 0)] * (images.ndim - 3)
  padded = jnp.pad(images, pad)
  window = crop + 2 * context

  def cut(image, origin):
    start = (origin[0], origin[1]) + (0,) * (image.ndim - 2)
    return jax.lax.dynamic_slice(image, start, (window, window) + image.shape[2:])

  return jax.vmap(cut)(padded, origins)


def make_prepare(config):
  """(device data, per-device batch of rows and positions) -> the model's batch."""
  augment = device_augment.make(config.augment)
  augment_key = jax.random.key(config.seed + 1)
  missing_key = jax.random.key(config.seed + 2)
  mode, probability = config.data.normalization, config.augment.missing_sequence_probability
  crop, context = config.data.get("crop_size", 0), config.data.get("crop_context", 0)

  def prepare(data: dict, batch: dict) -> dict:
    images = preprocess.stack_rows(data["images"], data["neighbours"][batch["row"]], xp=jnp).astype(jnp.float32)
    masks = (data["masks"][batch["row"]] > 0).astype(jnp.float32)
    if crop:
      images = cut_windows(images, batch["origin"], crop, context)
      masks = cut_windows(masks, batch["origin"], crop, context)
    images, masks = augment(augment_key, images, masks, batch["position"])
    if crop:
      images, masks = crops.centre(images, crop, context, axis=1), crops.centre(masks, crop, context, axis=1)
    images = preprocess.normalise(images, mode, data["stats"][data["patient"][batch["row"]]], xp=jnp)
    images = missing_sequences(missing_key, images, batch["position"], probability)
    return {"image": images, "mask": masks[..., None]}

  return prepare
