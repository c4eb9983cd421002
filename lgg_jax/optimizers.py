"""The optimizer and its learning-rate schedule, each built by name from its
own block (`config.optimizer.<name>`, `config.schedule.<name>`;
lgg_jax/registry.py), and freezing an encoder.

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


def adamw(learning_rate, *, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 1e-4):
  return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def adam(learning_rate, *, b1: float = 0.9, b2: float = 0.999):
  return optax.adam(learning_rate, b1=b1, b2=b2)


def sgd(learning_rate, *, momentum: float = 0.9, nesterov: bool = True):
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def cosine(learning_rate: float, total_steps: int, warmup_steps: int, *, final_lr_fraction: float = 0.01):
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, max(total_steps, 1),
                                            end_value=learning_rate * final_lr_fraction)


def constant(learning_rate: float, total_steps: int, warmup_steps: int):
  del total_steps
  return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                               optax.constant_schedule(learning_rate)], [warmup_steps])


def make_schedule(config, total_steps: int):
  """The named schedule from `config.schedule`: warm-up to config.optimizer.learning_rate over
  `warmup_steps` (at most all steps but one), then the schedule's own shape."""
  name = config.schedule.name
  warmup = min(config.schedule.warmup_steps, max(total_steps - 1, 0))
  return registry.build("schedule", name, registry.block(config.schedule, name), f"config.schedule.{name}",
                        learning_rate=config.optimizer.learning_rate, total_steps=total_steps, warmup_steps=warmup)


def make_optimizer(config, total_steps: int, *, frozen_steps: int = 0):
  """(optax transformation, learning-rate schedule), each built by name from its own block.

  `frozen_steps`: with config.model.freeze_encoder_epochs, the steps before
  the encoder trains. Partitioned, each part is the optimizer at learning
  rate 1 (its update with the descent sign) and the schedule scales after,
  which equals the optimizer at the scheduled rate.
  """
  opt = config.optimizer
  schedule = make_schedule(config, total_steps)

  def optimizer(learning_rate):
    return registry.build("optimizer", opt.name, registry.block(opt, opt.name), f"config.optimizer.{opt.name}",
                          learning_rate=learning_rate)

  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if config.model.freeze_encoder_epochs:
    encoder = optax.transforms.conditionally_mask(optimizer(1.0), lambda count: count >= frozen_steps)
    parts = optax.partition({ENCODER: encoder, REST: optimizer(1.0)}, _encoder_labels)
    return optax.chain(*clip, parts, optax.scale_by_schedule(schedule)), schedule
  return optax.chain(*clip, optimizer(schedule)), schedule


def in_encoder(path) -> bool:
  return any(getattr(k, "key", None) == ENCODER for k in path)


def _encoder_labels(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: ENCODER if in_encoder(path) else REST, params)
