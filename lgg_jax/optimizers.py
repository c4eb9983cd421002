"""The optimizer and its learning-rate schedule, built by name from
`config.optimizer` (lgg_jax/registry.py), and freezing an encoder.

With `config.model.freeze_encoder_epochs` the parameters are partitioned
(encoder, rest) with `optax.partition`, and the encoder's part is masked
(`optax.transforms.conditionally_mask`) until the step it unfreezes: its
updates are zero and its optimizer state stays the initial one, so it starts
as a new optimizer would, while the rest's statistics and the schedule follow
the run's step. Adam's step count run on over the frozen epochs would instead
bias-correct its first moments as if they had history (up to 3x the learning
rate on pretrained weights after a long freeze). One optimizer, one state
layout: nothing is rebuilt when the encoder unfreezes.
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


def make_optimizer(config, total_steps: int, *, frozen_steps: int = 0):
  """(optax transformation, learning-rate schedule).

  `frozen_steps`: with config.model.freeze_encoder_epochs, the steps before
  the encoder trains. Partitioned, each part is the optimizer at learning
  rate 1 (its update with the descent sign) and the schedule scales after,
  which equals the optimizer at the scheduled rate.
  """
  opt = config.optimizer
  schedule = registry.get("schedule", opt.schedule)(opt, total_steps)
  optimizer = registry.get("optimizer", opt.name)
  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if config.model.freeze_encoder_epochs:
    encoder = optax.transforms.conditionally_mask(optimizer(opt, 1.0), lambda count: count >= frozen_steps)
    parts = optax.partition({ENCODER: encoder, REST: optimizer(opt, 1.0)}, _encoder_labels)
    return optax.chain(*clip, parts, optax.scale_by_schedule(schedule)), schedule
  return optax.chain(*clip, optimizer(opt, schedule)), schedule


def in_encoder(path) -> bool:
  return any(getattr(k, "key", None) == ENCODER for k in path)


def _encoder_labels(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: ENCODER if in_encoder(path) else REST, params)
