"""The jitted steps: training (shard_map over the mesh) and probabilities.

Steps are pure functions of plain pytrees (the `nnx.split` state); modules
are rebuilt from a graphdef inside the trace.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from lgg_jax import choices, losses, metrics
from lgg_jax.parallel import AXIS
from lgg_jax.state import encoder_frozen, in_encoder, merge, unfreeze_encoder

TTA_MODES = choices.TTA_MODES


def make_train_step(graphdef, tx, config, mesh, freeze_encoder: bool = False, prepare=None):
  """(state, global batch) -> (state, stats), data-parallel over `mesh`.

  With `freeze_encoder`, `tx` is the frozen-encoder optimizer
  (state.make_optimizer(..., encoder_frozen=True)) and the encoder's
  gradients are left out of the clipping and the reported norm. Without it,
  a state from the frozen epochs is unfrozen first: the encoder's optimizer
  state starts fresh. With `prepare` (the on-device input path) the step is
  (state, batch of rows, device data) -> (state, stats), and each device
  makes its images from the resident data first.
  """

  deep_supervision = bool(config.model.get("deep_supervision", False))

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
    opt_state = state["opt_state"]
    if freeze_encoder:
      if not encoder_frozen(opt_state):
        raise ValueError("freeze_encoder needs the frozen-encoder optimizer: state.make_optimizer(config, "
                         "total_steps, encoder_frozen=True) with config.model.freeze_encoder_epochs set")
      grads = jax.tree_util.tree_map_with_path(lambda path, g: jnp.zeros_like(g) if in_encoder(path) else g, grads)
    elif encoder_frozen(opt_state):  # the first step after the frozen epochs (a compile of its own)
      opt_state = unfreeze_encoder(tx, opt_state, state["params"])
    updates, opt_state = tx.update(grads, opt_state, state["params"])
    params = optax.apply_updates(state["params"], updates)
    counts = metrics.slice_counts(logits, batch["mask"], config.threshold)
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


def upsample_probabilities(probs: jax.Array, size: int) -> jax.Array:
  """(N, h, w) -> (N, size, size), bilinear (half-pixel centres, as
  cv2.INTER_LINEAR): how every score reaches the dataset's 256x256."""
  if probs.shape[1:] == (size, size):
    return probs
  return jax.image.resize(probs, (probs.shape[0], size, size), "linear")


@functools.lru_cache(maxsize=8)
def upsample_matrix(size: int, out_size: int) -> jax.Array:
  """(out_size, size) matrix M with M @ p @ M.T = upsample_probabilities(p):
  column j is the resize of the j-th unit vector. The ONNX graph upsamples
  this way (jax.image.resize does not convert with a symbolic batch)."""
  basis = jnp.eye(size, dtype=jnp.float32)[None]
  return jax.image.resize(basis, (1, out_size, size), "linear")[0]


def _dihedral_views(tta: str):
  """(forward, inverse) pairs on the spatial axes of NHWC arrays."""
  choices.check("config.inference.tta", tta, TTA_MODES)
  identity = (lambda x: x, lambda x: x)
  if tta == "none":
    return [identity]
  hflip = lambda x: jnp.flip(x, axis=2)
  vflip = lambda x: jnp.flip(x, axis=1)
  if tta == "flips":
    return [identity, (hflip, hflip), (vflip, vflip)]
  transpose = lambda x: jnp.swapaxes(x, 1, 2)
  views = []
  for k in range(4):
    rot = functools.partial(jnp.rot90, k=k, axes=(1, 2))
    unrot = functools.partial(jnp.rot90, k=-k, axes=(1, 2))
    views.append((rot, unrot))
    views.append((lambda x, rot=rot: rot(transpose(x)), lambda y, unrot=unrot: transpose(unrot(y))))
  return views


@functools.lru_cache(maxsize=32)
def make_probability_step(graphdef, tta: str = "none", out_size: int = 256):
  """jit(variables, images) -> sigmoid probabilities (N, out_size, out_size),
  averaged over the TTA views (each mapped back before averaging), then
  upsampled. Built once per (graphdef, tta, size)."""
  views = _dihedral_views(tta)

  @jax.jit
  def probabilities(variables, images):
    model = merge(graphdef, variables["params"], variables["model_state"])
    total = 0.0
    for forward, inverse in views:
      total = total + inverse(jax.nn.sigmoid(model(forward(images))))
    return upsample_probabilities(total[..., 0] / len(views), out_size)

  return probabilities
