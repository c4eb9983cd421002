"""Model and train state as plain pytrees; restoring a run for inference.

The train state is a dict of arrays (step, params, model_state, opt_state):
what shard_map, Orbax and weight import see. Modules are rebuilt from a
graphdef inside each trace (`merge`). Inference needs only `variables`
(params and BatchNorm statistics), restored without the optimizer's state.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from lgg_jax import config_defaults, models, parallel
from lgg_jax.models import weights

CHECKPOINTS = "checkpoints"  # the run's one checkpoint manager: the latest saves and the best
OLD_BEST = "best"  # runs written before one manager kept both had the best here, beside checkpoints/
CHECKPOINT_CHOICES = ("best", "latest")


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
  model = create_model(config)
  frozen = [f"config.model.{k}={config.model[k]}" for k in ("freeze_encoder_epochs", "freeze_encoder_bn_epochs")
            if config.model.get(k, 0)]
  if frozen and not hasattr(model, "encoder"):  # it would train unfrozen, silently
    raise ValueError(f"{', '.join(frozen)}: model {config.model.name!r} has no encoder to freeze (only "
                     "resnext_unet)")
  graphdefs, params, model_state = split_model(model)
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

def config_from_dict(saved: dict, source: str = "saved config") -> ml_collections.ConfigDict:
  """A saved config in today's layout (config_defaults.from_saved)."""
  return config_defaults.from_saved(saved, source)


def read_json(path) -> dict:
  """A JSON file this project wrote; cut short or edited by hand, an error naming it."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not readable JSON ({e}); it may have been cut short or edited") from e


def load_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{pathlib.Path(workdir)} is not a run folder: no config.json")
  return config_from_dict(read_json(path), str(path))


def improved_dice(metrics) -> float:
  """What ranks a save for "best": the validation Dice of a save that beat every
  earlier one; any other save ranks below all (so a later epoch that only ties
  the best, or a mid-epoch preemption save, is never the best)."""
  if not metrics or not metrics.get("improved", True):  # an old best/ folder's saves all improved
    return -math.inf
  return float(metrics["val_dice"])


def checkpoint_manager(folder, keep: int | None = None) -> ocp.CheckpointManager:
  """The run's one manager: it keeps the `keep` latest saves and the best
  (Orbax preservation policies); saves carry metrics {"val_dice", "improved"};
  items "state" (`save_args`, `restore_args`) and "data" (JSON). Without
  `keep` it only reads (and creates nothing). Opening one is a collective call
  when several processes run: every process must."""
  handlers = {"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_STATE_TYPES),
              "data": ocp.JsonCheckpointHandler()}
  if keep is None:  # (read_only=True would say so in two warnings on every command)
    return ocp.CheckpointManager(folder, item_handlers=handlers, options=ocp.CheckpointManagerOptions(
        create=False, best_fn=improved_dice, best_mode="max"))
  policies = [ocp.checkpoint_managers.LatestN(keep),
              ocp.checkpoint_managers.BestN(get_metric_fn=improved_dice, n=1, keep_checkpoints_without_metrics=False)]
  return ocp.CheckpointManager(folder, item_handlers=handlers, options=ocp.CheckpointManagerOptions(
      create=True, best_fn=improved_dice, best_mode="max",
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies)))


# Orbax's replica-parallel saving (its default except on GPU) cuts each replicated array into one
# slice per device, each slice a dispatched jax op: about 1 s a save for a tiny model on 8 CPU
# devices, and nothing gained for a data-parallel state that every device holds whole. Replica 0
# writes each array, as in Orbax's own emergency checkpoint manager.
_STATE_TYPES = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))


def save_args(train_state) -> ocp.args.PyTreeSave:
  return ocp.args.PyTreeSave(train_state)


def restore_args(abstract_state) -> ocp.args.PyTreeRestore:
  """Restores onto `abstract_state`'s shapes, dtypes and shardings."""
  return ocp.args.PyTreeRestore(item=abstract_state,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))


def best_of(manager: ocp.CheckpointManager) -> tuple[int, float] | None:
  """(step, validation Dice) of the best save a manager holds, or None."""
  step = manager.best_step()
  dice = -math.inf if step is None else improved_dice(manager.metrics(step))
  return None if dice == -math.inf else (step, dice)


def best_folder(workdir) -> pathlib.Path:
  """Where a run's best checkpoint lies: best/ in runs written before the one manager."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  return workdir / (OLD_BEST if (workdir / OLD_BEST).is_dir() else CHECKPOINTS)


def best_checkpoint(workdir) -> tuple[pathlib.Path, int, float] | None:
  """(folder, step, validation Dice) of a run's best checkpoint, in either layout, or None."""
  folder = best_folder(workdir)
  if not folder.is_dir():
    return None
  with checkpoint_manager(folder) as manager:
    best = best_of(manager)
  return None if best is None else (folder, *best)


def checkpoint_path(workdir, checkpoint: str = "best") -> tuple[pathlib.Path, int]:
  """The state item of a run's checkpoint: 'best', 'latest' or a step number."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if checkpoint not in CHECKPOINT_CHOICES and not str(checkpoint).isdigit():
    raise ValueError(f"checkpoint: want 'best', 'latest' or a step number, got {checkpoint!r}")
  if checkpoint == "best":
    best = best_checkpoint(workdir)
    if best is None:
      raise FileNotFoundError(f"no checkpoint 'best' in {best_folder(workdir)}")
    return best[0] / str(best[1]) / "state", best[1]
  folder = workdir / CHECKPOINTS
  steps = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "state").is_dir()) \
      if folder.is_dir() else []
  step = (steps[-1] if steps else None) if checkpoint == "latest" else int(checkpoint)
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
