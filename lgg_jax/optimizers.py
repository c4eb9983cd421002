"""The optimizer and its learning-rate schedule, built by name from
`config.optimizer` (lgg_jax/registry.py), and freezing an encoder.

While `config.model.freeze_encoder_epochs` lasts, the parameters are
partitioned (encoder, rest) with `optax.partition` and the learning rate is
applied after: the encoder's optimizer state can start fresh when it
unfreezes (`unfreeze_encoder`) while the schedule follows the run's step.
"""

from __future__ import annotations

import jax
import optax

from lgg_jax import registry

ENCODER, REST = "encoder", "rest"  # the optimizer's partitions while an encoder may be frozen


def adamw(opt, learning_rate):
  return optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)


def adam(opt, learning_rate):
  return optax.adam(learning_rate, b1=opt.b1, b2=opt.b2)


def sgd(opt, learning_rate):
  return optax.sgd(learning_rate, momentum=opt.momentum, nesterov=True)


def _warmup(opt, total_steps: int) -> int:
  return min(opt.warmup_steps, max(total_steps - 1, 0))


def cosine(opt, total_steps: int):
  return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, _warmup(opt, total_steps), max(total_steps, 1),
                                            end_value=opt.learning_rate * opt.final_lr_fraction)


def constant(opt, total_steps: int):
  warmup = _warmup(opt, total_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup),
                               optax.constant_schedule(opt.learning_rate)], [warmup])


def make_optimizer(config, total_steps: int, *, encoder_frozen: bool = False):
  """(optax transformation, learning-rate schedule).

  `encoder_frozen` gives the frozen epochs' transformation: the encoder's
  updates are zero and it has no optimizer state. Partitioned, each part is
  the optimizer at learning rate 1 (its update with the descent sign) and
  the schedule scales after, which equals the optimizer at the scheduled rate.
  """
  opt = config.optimizer
  schedule = registry.get("schedule", opt.schedule)(opt, total_steps)
  optimizer = registry.get("optimizer", opt.name)
  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if config.model.freeze_encoder_epochs:
    encoder = optax.set_to_zero() if encoder_frozen else optimizer(opt, 1.0)
    parts = optax.partition({ENCODER: encoder, REST: optimizer(opt, 1.0)}, _encoder_labels)
    return optax.chain(*clip, parts, optax.scale_by_schedule(schedule)), schedule
  return optax.chain(*clip, optimizer(opt, schedule)), schedule


def in_encoder(path) -> bool:
  return any(getattr(k, "key", None) == ENCODER for k in path)


def _encoder_labels(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: ENCODER if in_encoder(path) else REST, params)


def encoder_frozen(opt_state) -> bool:
  """Whether `opt_state` is a frozen-encoder one (no encoder state)."""
  return any(isinstance(s, optax.transforms.PartitionState) and not jax.tree.leaves(s.inner_states[ENCODER])
             for s in opt_state)


def unfreeze_encoder(tx, opt_state, params):
  """`tx`'s state from a frozen-encoder one: the rest's statistics and the
  schedule's step carried over, the encoder's those of a new optimizer.
  Adam's step count run on over the frozen epochs would instead bias-correct
  its first moments as if they had history (up to 3x the learning rate on
  pretrained weights after a long freeze)."""
  fresh = tx.init(params)
  return tuple(optax.transforms.PartitionState({**old.inner_states, ENCODER: new.inner_states[ENCODER]})
               if isinstance(old, optax.transforms.PartitionState) else old
               for old, new in zip(opt_state, fresh, strict=True))
