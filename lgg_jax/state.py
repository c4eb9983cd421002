"""Model, optimizer and train state as plain pytrees; restoring a run for inference.

The train state is a dict of arrays (step, params, model_state, opt_state):
what shard_map, Orbax and weight import see. Modules are rebuilt from a
graphdef inside each trace (`merge`). Inference needs only `variables`
(params and BatchNorm statistics), restored without the optimizer's state.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import ml_collections
import optax
import orbax.checkpoint as ocp
from flax import nnx

from lgg_jax import choices, config_defaults, models, parallel
from lgg_jax.models import weights

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
CHECKPOINT_FOLDERS = {"best": "best", "latest": "checkpoints"}
ENCODER, REST = "encoder", "rest"  # the optimizer's partitions while an encoder may be frozen


def make_optimizer(config, total_steps: int, *, encoder_frozen: bool = False):
  """(optax transformation, learning-rate schedule).

  With config.model.freeze_encoder_epochs the parameters are partitioned
  (encoder, rest) and the learning rate applied after: the encoder's
  optimizer state can start fresh when it unfreezes (`unfreeze_encoder`)
  while the schedule follows the run's step. `encoder_frozen` gives the
  frozen epochs' transformation: the encoder's updates are zero and it has no
  optimizer state.
  """
  opt = config.optimizer
  choices.check("config.optimizer.name", opt.name, OPTIMIZERS)
  choices.check("config.optimizer.schedule", opt.schedule, SCHEDULES)
  warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
  if opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup, max(total_steps, 1),
                                                  end_value=opt.learning_rate * opt.final_lr_fraction)
  else:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup),
                                     optax.constant_schedule(opt.learning_rate)], [warmup])
  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if config.model.freeze_encoder_epochs:
    encoder = optax.set_to_zero() if encoder_frozen else _before_learning_rate(opt)
    parts = optax.partition({ENCODER: encoder, REST: _before_learning_rate(opt)}, _encoder_labels)
    return optax.chain(*clip, parts, optax.scale_by_learning_rate(schedule)), schedule
  if opt.name == "adamw":
    base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  elif opt.name == "adam":
    base = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  else:
    base = optax.sgd(schedule, momentum=opt.momentum, nesterov=True)
  return optax.chain(*clip, base), schedule


def _before_learning_rate(opt):
  """config.optimizer's transformation up to its learning rate (optax's
  adamw, adam and sgd are these followed by scale_by_learning_rate)."""
  if opt.name == "adamw":
    return optax.chain(optax.scale_by_adam(b1=opt.b1, b2=opt.b2), optax.add_decayed_weights(opt.weight_decay))
  if opt.name == "adam":
    return optax.scale_by_adam(b1=opt.b1, b2=opt.b2)
  return optax.trace(decay=opt.momentum, nesterov=True)


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


def in_channels(config) -> int:
  """3 MRI channels per slice, times the slice and its neighbours (2.5-D)."""
  return 3 * (2 * config.data.neighbours + 1)


def create_model(config, *, load_pretrained: bool = True) -> nnx.Module:
  model = models.create(config.model, in_channels=in_channels(config), compute_dtype=config.compute_dtype,
                        rngs=nnx.Rngs(config.seed))
  if load_pretrained and config.model.pretrained_path:
    if not hasattr(model, "encoder"):
      raise ValueError(f"config.model.pretrained_path is set but model {config.model.name!r} has no "
                       "pretrained encoder (only resnext_unet)")
    weights.load_encoder(model.encoder, weights.read_state_dict(config.model.pretrained_path),
                         source=config.model.pretrained_path)
    logging.info("encoder weights loaded from %s", config.model.pretrained_path)
  return model


def split_model(model: nnx.Module):
  """(graphdefs, params, model_state) with plain-dict state.

  graphdefs: "train"; "train_frozen_bn" (encoder BatchNorm on running
  statistics, for config.model.freeze_encoder_bn_epochs); "eval".
  """
  train_view = nnx.view(model, use_running_average=False, deterministic=False, raise_if_not_found=False)
  frozen_bn_view = nnx.view(train_view, only=nnx.PathContains("encoder"), use_running_average=True,
                            raise_if_not_found=False)
  eval_view = nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
  train_graphdef, params, model_state = nnx.split(train_view, nnx.Param, ...)
  graphdefs = {"train": train_graphdef, "train_frozen_bn": nnx.graphdef(frozen_bn_view),
               "eval": nnx.graphdef(eval_view)}
  return graphdefs, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


def create_state(config, tx):
  """(graphdefs, state): state is a plain pytree of arrays."""
  graphdefs, params, model_state = split_model(create_model(config))
  state = {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params, "model_state": model_state,
           "opt_state": tx.init(params)}
  return graphdefs, state


def merge(graphdef, params: dict, model_state: dict) -> nnx.Module:
  """A module from plain dicts, made inside the current trace (so BatchNorm
  may update its statistics there)."""
  return nnx.merge(graphdef, nnx.State(params), nnx.State(model_state))


def abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# --------------------------------------------------------------------------- restoring a run

def _merge_into(base: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and key in base and isinstance(base[key], ml_collections.ConfigDict):
      _merge_into(base[key], value)
    else:
      base[key] = tuple(value) if isinstance(value, list) else value


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A saved config over today's defaults: settings added since the run was
  written take their defaults, which keep the behaviour runs had before."""
  config = config_defaults.get_config()
  _merge_into(config, saved)
  return config


def load_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{pathlib.Path(workdir)} is not a run folder: no config.json")
  return config_from_dict(json.loads(path.read_text()))


def checkpoint_path(workdir, checkpoint: str = "best") -> tuple[pathlib.Path, int]:
  """The state item of a run's checkpoint: 'best', 'latest' or a step number."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if checkpoint not in CHECKPOINT_FOLDERS and not str(checkpoint).isdigit():
    raise ValueError(f"checkpoint: want 'best', 'latest' or a step number, got {checkpoint!r}")
  folder = workdir / CHECKPOINT_FOLDERS.get(checkpoint, "checkpoints")
  steps = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "state").is_dir()) \
      if folder.is_dir() else []
  step = (steps[-1] if steps else None) if checkpoint in CHECKPOINT_FOLDERS else int(checkpoint)
  if step is None or step not in steps:
    raise FileNotFoundError(f"no checkpoint {checkpoint!r} in {folder}")
  return folder / str(step) / "state", step


def abstract_variables(config):
  """Shapes of (graphdef, variables) of the inference model (no training-only
  heads) without computing any weights."""
  graphdefs, params, model_state = nnx.eval_shape(
      lambda: split_model(create_model(models.for_inference(config), load_pretrained=False)))
  return graphdefs["eval"], {"params": params, "model_state": model_state}


def restore_variables(workdir, checkpoint: str = "best", mesh=None):
  """(config, eval graphdef, variables, step) of a run: parameters and
  BatchNorm statistics only, replicated over `mesh`; no optimizer is built."""
  config = load_config(workdir)
  path, step = checkpoint_path(workdir, checkpoint)
  graphdef, shapes = abstract_variables(config)
  sharding = jax.sharding.NamedSharding(mesh or parallel.make_mesh(), jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    variables = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return config, graphdef, variables, step
