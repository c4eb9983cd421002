"""The jitted training step (shard_map over the mesh); the probability step
that inference uses lives in inference.py.

Steps are pure functions of plain pytrees (the `nnx.split` state); modules
are rebuilt from a graphdef inside the trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from lgg_jax import losses, metrics, models
from lgg_jax.parallel import AXIS
from lgg_jax.optimizers import in_encoder
from lgg_jax.state import merge


def make_train_step(graphdef, tx, config, mesh, freeze_encoder: bool = False, prepare=None):
  """(state, global batch) -> (state, stats), data-parallel over `mesh`.

  With `freeze_encoder` (the epochs before the encoder unfreezes; `tx`
  masks its updates then: optimizers.make_optimizer) the encoder's gradients
  are left out of the clipping and the reported norm. With `prepare` (the on-device input path) the step is
  (state, batch of rows, device data) -> (state, stats), and each device
  makes its images from the resident data first.
  """

  deep_supervision = models.deep_supervision(config.model)

  def per_device(state, batch, data=None):
    if prepare is not None:
      batch = prepare(data, batch)
    def loss_fn(params, model_state):
      model = merge(graphdef, params, model_state)
      if deep_supervision:
        logits, auxiliary = model(batch["image"], auxiliary=True)
        per_sample = losses.deep_supervision_loss(logits, auxiliary, batch["mask"], config.loss)
      else:
        logits = model(batch["image"])
        per_sample = losses.per_sample_loss(logits, batch["mask"], config.loss)
      # The global-batch mean, so the gradient of the replicated parameters is
      # that mean's: shard_map's autodiff already sums their per-device
      # cotangents, and a pmean of the gradients afterwards would not divide.
      loss = jax.lax.pmean(per_sample.mean(), AXIS)
      return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["model_state"])
    model_state = jax.lax.pmean(model_state, AXIS)
    if freeze_encoder:
      grads = jax.tree_util.tree_map_with_path(lambda path, g: jnp.zeros_like(g) if in_encoder(path) else g, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    counts = metrics.slice_counts(logits, batch["mask"], config.inference.threshold)
    dice = metrics.dice_from_counts(counts["intersection"], counts["predicted"], counts["true"], xp=jnp)
    stats = {"loss": loss,
             "dice_sum": jax.lax.psum(dice.sum(), AXIS),
             "slices": jax.lax.psum(jnp.float32(logits.shape[0]), AXIS),
             "grad_norm": optax.tree.norm(grads)}
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state,
                 "opt_state": opt_state}
    return new_state, stats

  in_specs = (P(), P(AXIS)) if prepare is None else (P(), P(AXIS), P())
  step = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))
