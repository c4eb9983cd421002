"""The one trainer: `train_and_evaluate(config, workdir)`.

Steps are pure jax functions over the `nnx.split` state (a plain pytree), run
data-parallel with pmap semantics through `jax.shard_map` over a 1-D mesh of
every device: each device takes its rows of the global batch, and gradients,
metrics and BatchNorm statistics are averaged over the `data` axis.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgg_jax import losses, metrics, models, provenance, report
from lgg_jax.data import pipeline, splits
from lgg_jax.models import layers, weights

AXIS = "data"


# --------------------------------------------------------------------------- setup

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


def validate_config(config, device_count: int, process_count: int) -> None:
  """Fails before any work on settings that would fail (or mislead) later."""
  for name in ("global_batch_size", "eval_batch_size"):
    value = config[name]
    if value <= 0 or value % device_count:
      raise ValueError(f"config.{name}={value} must be a positive multiple of the "
                       f"device count ({device_count})")
    if value % process_count:
      raise ValueError(f"config.{name}={value} must divide among {process_count} processes")
  from lgg_jax.data import augment
  known = {"config.loss.name": (config.loss.name, losses.NAMES),
           "config.augment.name": (config.augment.name, augment.NAMES),
           "config.optimizer.name": (config.optimizer.name, OPTIMIZERS),
           "config.optimizer.schedule": (config.optimizer.schedule, SCHEDULES),
           "config.data.normalization": (config.data.normalization, pipeline.NORMALIZATIONS),
           "config.split.protocol": (config.split.protocol, splits.PROTOCOLS),
           "config.compute_dtype": (config.compute_dtype, ("float32", "bfloat16")),
           "config.model.conv_impl": (config.model.conv_impl, layers.CONV_IMPLS)}
  for key, (value, allowed) in known.items():
    if value not in allowed:
      raise ValueError(f"{key}: unknown value {value!r} (known: {', '.join(allowed)})")
  if config.model.name not in models.REGISTRY:
    raise ValueError(f"config.model.name: unknown model {config.model.name!r} "
                     f"(known: {', '.join(sorted(models.REGISTRY))})")
  divisor = {"unet": 2 ** (config.model.depth - 1), "fpn": 32, "resnext_unet": 32}[config.model.name]
  if config.data.image_size % divisor:
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by "
                     f"{divisor} for model {config.model.name}")
  if config.model.pretrained_path and not pathlib.Path(config.model.pretrained_path).expanduser().is_file():
    raise ValueError(f"config.model.pretrained_path={config.model.pretrained_path} is not a file")
  if config.num_epochs <= 0:
    raise ValueError(f"config.num_epochs must be positive, got {config.num_epochs}")
  if config.data.manual_dir and not pathlib.Path(config.data.manual_dir).expanduser().exists():
    raise ValueError(f"config.data.manual_dir={config.data.manual_dir} does not exist")


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() when config.distributed.enabled.

  No address: JAX detects the cluster (SLURM, TPU pods, Kubernetes). With
  coordinator_address, num_processes and process_id: a manual launch.
  """
  dist = config.distributed
  if not dist.enabled:
    return
  # CPU devices of several processes need a collectives backend to talk
  # (only the CPU client reads this; accelerators use their own).
  jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
  kwargs = {}
  if dist.coordinator_address:
    if dist.num_processes <= 0 or dist.process_id < 0:
      raise ValueError("config.distributed.coordinator_address needs num_processes and process_id")
    kwargs = dict(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                  process_id=dist.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.devices()), (AXIS,))


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  opt = config.optimizer
  warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
  if opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup, max(total_steps, 1),
                                                  end_value=opt.learning_rate * opt.final_lr_fraction)
  elif opt.schedule == "constant":
    schedule = optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup),
                                     optax.constant_schedule(opt.learning_rate)], [warmup])
  else:
    raise ValueError(f"config.optimizer.schedule: unknown schedule {opt.schedule!r} (known: cosine, constant)")
  if opt.name == "adamw":
    base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  elif opt.name == "adam":
    base = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  elif opt.name == "sgd":
    base = optax.sgd(schedule, momentum=opt.momentum, nesterov=True)
  else:
    raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (known: adamw, adam, sgd)")
  chain = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  return optax.chain(*chain, base), schedule


def create_model(config) -> nnx.Module:
  model = models.create(config.model, compute_dtype=config.compute_dtype, rngs=nnx.Rngs(config.seed))
  if config.model.pretrained_path:
    if not hasattr(model, "encoder"):
      raise ValueError(f"config.model.pretrained_path is set but model {config.model.name!r} has no "
                       "pretrained encoder (only resnext_unet)")
    weights.load_encoder(model.encoder, weights.read_state_dict(config.model.pretrained_path),
                         source=config.model.pretrained_path)
    logging.info("encoder weights loaded from %s", config.model.pretrained_path)
  return model


def create_state(config, tx):
  """Returns (graphdefs, state): state is a plain pytree of arrays.

  graphdefs: "train"; "train_frozen_bn" (encoder BatchNorm on running
  statistics, for config.model.freeze_encoder_bn_epochs); "eval".
  """
  model = create_model(config)
  train_view = nnx.view(model, use_running_average=False, deterministic=False, raise_if_not_found=False)
  frozen_bn_view = nnx.view(train_view, only=nnx.PathContains("encoder"), use_running_average=True,
                            raise_if_not_found=False)
  eval_view = nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
  train_graphdef, params, model_state = nnx.split(train_view, nnx.Param, ...)
  graphdefs = {"train": train_graphdef, "train_frozen_bn": nnx.graphdef(frozen_bn_view),
               "eval": nnx.graphdef(eval_view)}
  # Plain nested dicts of arrays: what shard_map, Orbax and weight import see.
  params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
           "opt_state": tx.init(params)}
  return graphdefs, state


# --------------------------------------------------------------------------- steps

def merge(graphdef, params: dict, model_state: dict) -> nnx.Module:
  """A module from plain dicts, made inside the current trace (so BatchNorm
  may update its statistics there)."""
  return nnx.merge(graphdef, nnx.State(params), nnx.State(model_state))


def _slice_dice(counts):
  total = counts["predicted"] + counts["true"]
  return jnp.where(total == 0, 1.0, 2.0 * counts["intersection"] / jnp.maximum(total, 1))


def _in_encoder(path) -> bool:
  return any(getattr(k, "key", None) == "encoder" for k in path)


def make_train_step(graphdef, tx, config, mesh, freeze_encoder: bool = False):
  def per_device(state, batch):
    def loss_fn(params, model_state):
      model = merge(graphdef, params, model_state)
      logits = model(batch["image"])
      # The global-batch mean, so the gradient of the replicated parameters is
      # that mean's: shard_map's autodiff already sums their per-device
      # cotangents, and a pmean of the gradients afterwards would not divide.
      loss = jax.lax.pmean(losses.per_sample_loss(logits, batch["mask"], config.loss).mean(), AXIS)
      return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["model_state"])
    model_state = jax.lax.pmean(model_state, AXIS)
    if freeze_encoder:
      grads = jax.tree_util.tree_map_with_path(
          lambda path, g: jnp.zeros_like(g) if _in_encoder(path) else g, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    if freeze_encoder:  # also stops weight decay and momentum from moving it
      updates = jax.tree_util.tree_map_with_path(
          lambda path, u: jnp.zeros_like(u) if _in_encoder(path) else u, updates)
    params = optax.apply_updates(state["params"], updates)
    counts = metrics.slice_counts(logits, batch["mask"], config.threshold)
    stats = {"loss": loss,
             "dice_sum": jax.lax.psum(_slice_dice(counts).sum(), AXIS),
             "slices": jax.lax.psum(jnp.float32(logits.shape[0]), AXIS),
             "grad_norm": optax.tree.norm(grads)}
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state,
                 "opt_state": opt_state}
    return new_state, stats

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))


def make_eval_step(graphdef, config):
  @jax.jit
  def eval_step(params, model_state, batch):
    model = merge(graphdef, params, model_state)
    logits = model(batch["image"])
    counts = metrics.slice_counts(logits, batch["mask"], config.threshold)
    return {**counts, "loss": losses.per_sample_loss(logits, batch["mask"], config.loss),
            "index": batch["index"]}
  return eval_step


def global_batch(local: dict, mesh) -> dict:
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def evaluate(eval_step, state, data, indices, config, mesh) -> tuple[dict, dict]:
  """Metrics of `indices` (a split) and the per-slice counts behind them."""
  outputs = []
  for local in pipeline.eval_batches(data, indices, config, jax.process_index(), jax.process_count()):
    out = eval_step(state["params"], state["model_state"], global_batch(local, mesh))
    outputs.append(jax.tree.map(np.asarray, multihost_utils.process_allgather(out, tiled=True)))
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  keep = merged.pop("index") >= 0
  merged = {k: v[keep] for k, v in merged.items()}
  merged["index"] = np.concatenate([o["index"] for o in outputs])[keep]
  patient_ids = data.patient_ids[merged["index"]]
  summary = metrics.summarise(patient_ids, merged)
  summary["loss"] = float(merged["loss"].mean())
  return summary, merged


# --------------------------------------------------------------------------- checkpoints

def _checkpoint_managers(workdir: pathlib.Path, config):
  latest = ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.keep_checkpoints, create=True,
          # Two managers save side by side: their multi-host barriers need distinct names.
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="latest")),
      item_names=("state", "data"))
  best = ocp.CheckpointManager(
      workdir / "best",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["val_dice"], best_mode="max", create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")),
      item_names=("state",))
  return latest, best


def _abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


# --------------------------------------------------------------------------- logging

class MetricsLog:
  """metrics.jsonl + TensorBoard (tensorboardX: no TensorFlow); process 0 only."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    if not self.enabled:
      return
    # A resumed run drops records written after its checkpoint, so the log
    # reads like one uninterrupted run.
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, record: dict):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
        self.writer.add_scalar(key.replace("_", "/", 1), value, record["step"])
    self.writer.flush()

  def close(self):
    if self.enabled:
      self.writer.close()


# --------------------------------------------------------------------------- loop

STAT_KEYS = ("loss", "dice_sum", "slices", "grad_norm")


class _Preemption:
  """SIGTERM asks for a checkpoint at the next step and a clean exit.

  With several processes the flag is shared every `check_every` steps, so
  all of them stop at the same step.
  """

  def __init__(self, check_every: int):
    self.flag = False
    self.check_every = max(1, check_every)
    self.previous = None
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.flag = True

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.flag
    if (step + 1) % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.array([self.flag]))
    return bool(np.any(flags))

  def close(self):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Trains, evaluates every epoch, checkpoints, resumes; returns the summary."""
  workdir = pathlib.Path(workdir).expanduser().resolve()  # Orbax wants absolute paths
  validate_config(config, jax.device_count(), jax.process_count())
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} is not writable: {e}") from e

  is_main = jax.process_index() == 0
  mesh = make_mesh()
  data = pipeline.load(config)
  steps_per_epoch = len(data.split.train) // config.global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(data.split.train)} training slices make no batch of "
                     f"config.global_batch_size={config.global_batch_size}")
  total_steps = steps_per_epoch * config.num_epochs
  logging.info("split %s; %d steps per epoch, %d devices", data.split.summary(), steps_per_epoch,
               jax.device_count())

  tx, schedule = make_optimizer(config, total_steps)
  graphdefs, state = create_state(config, tx)
  logging.info("model %s: %d parameters", config.model.name,
               sum(x.size for x in jax.tree.leaves(state["params"])))
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  train_steps = {}  # (freeze encoder, freeze encoder BN) -> compiled step, built on first use

  def train_step_for(epoch: int):
    key = (epoch < config.model.freeze_encoder_epochs, epoch < config.model.freeze_encoder_bn_epochs)
    if key not in train_steps:
      graphdef = graphdefs["train_frozen_bn" if key[1] else "train"]
      train_steps[key] = make_train_step(graphdef, tx, config, mesh, freeze_encoder=key[0])
    return train_steps[key]

  eval_step = make_eval_step(graphdefs["eval"], config)

  train_iter = pipeline.train_dataset(data, config, jax.process_index(), jax.process_count())
  latest, best = _checkpoint_managers(workdir, config)
  start_step, epoch_stats = 0, []
  if latest.latest_step() is not None:
    start_step = latest.latest_step()
    restored = latest.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state)), data=ocp.args.JsonRestore()))
    state = jax.device_put(restored["state"], replicated)
    train_iter.set_state(restored["data"]["iterator"])
    # Statistics of a part-done epoch (a preemption save), so the epoch's
    # record equals an uninterrupted run's.
    partial = restored["data"]["epoch_stats"]
    epoch_stats = [{k: np.float32(v[i]) for k, v in partial.items()} for i in range(len(partial["loss"]))]
    logging.info("resumed from %s at step %d", latest.directory, start_step)
  log = MetricsLog(workdir, start_step)
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  on_cpu = jax.default_backend() == "cpu"
  bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not is_main, unit="step",
                  dynamic_ncols=True)
  step_started = None

  def save_latest(step_done: int):
    host = jax.device_get(epoch_stats)
    latest.save(step_done, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": train_iter.get_state(),
                                "epoch_stats": {k: [float(h[k]) for h in host] for k in STAT_KEYS}})))

  preemption = _Preemption(config.preemption_check_every_steps)
  for step in range(start_step, total_steps):
    batch = global_batch(next(train_iter), mesh)
    state, stats = train_step_for(step // steps_per_epoch)(state, batch)
    if on_cpu:
      # Back-to-back collective steps on fake CPU devices can deadlock in
      # XLA:CPU's rendezvous when several steps are in flight on a small
      # thread pool; waiting for each step there costs nothing on one CPU.
      jax.block_until_ready(stats)
    epoch_stats.append(stats)
    bar.update(1)
    if step == start_step + 1:
      jax.block_until_ready(stats)
      _report_step_time(time.perf_counter() - step_started, total_steps - step - 1, on_cpu)
    step_started = time.perf_counter()
    if (step + 1) % steps_per_epoch == 0:
      epoch = (step + 1) // steps_per_epoch
      host = jax.tree.map(lambda *xs: np.asarray(xs), *jax.device_get(epoch_stats))
      epoch_stats.clear()
      train_loss = float(host["loss"].mean())
      if not np.isfinite(host["loss"]).all():
        last = latest.latest_step()
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch} (step {step + 1}); stopping. "
            f"The last good checkpoint is step {last} in {workdir / 'checkpoints'}.")
      val, _ = evaluate(eval_step, state, data, data.split.val, config, mesh)
      record = {"epoch": epoch, "step": step + 1, "lr": float(schedule(step)),
                "train_loss": train_loss, "train_dice": float(host["dice_sum"].sum() / host["slices"].sum()),
                "val_loss": val["loss"], "val_dice": val["patient_dice"],
                "val_slice_dice": val["slice_dice"], "val_pooled_dice": val["pooled_dice"]}
      log.write(record)
      if is_main:
        bar.write(f"epoch {epoch:3d} step {step + 1:6d}  train loss {record['train_loss']:.4f} "
                  f"dice {record['train_dice']:.4f} | val loss {val['loss']:.4f} "
                  f"patient dice {val['patient_dice']:.4f} slice dice {val['slice_dice']:.4f}")
      if epoch % config.checkpoint_every_epochs == 0 or step + 1 == total_steps:
        save_latest(step + 1)
        best.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                  metrics={"val_dice": val["patient_dice"]})
    if preemption.requested(step) and step + 1 < total_steps:
      if latest.latest_step() != step + 1:
        save_latest(step + 1)
      for closable in (bar, preemption, latest, best, log):
        closable.close()  # CheckpointManager.close waits for saves in flight
      message = f"preempted (SIGTERM): saved step {step + 1}; run the same command to resume"
      logging.warning(message)
      if is_main:
        print(message)
      return {"preempted": True, "step": step + 1}
  bar.close()
  preemption.close()
  latest.wait_until_finished()
  best.wait_until_finished()

  final_val, _ = evaluate(eval_step, state, data, data.split.val, config, mesh)
  summary = {"val_dice": final_val["patient_dice"], "val": final_val, "step": int(state["step"]),
             "steps_per_epoch": steps_per_epoch, "split": data.split.summary(),
             "split_patients": data.split.patients}
  best_step = best.best_step()
  if best_step is not None:
    restored = best.restore(best_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state))))
    best_state = jax.device_put(restored["state"], replicated)
    best_val, _ = evaluate(eval_step, best_state, data, data.split.val, config, mesh)
    test, test_counts = evaluate(eval_step, best_state, data, data.split.test, config, mesh)
    summary.update(best_step=int(best_step), best_val_dice=best_val["patient_dice"],
                   test_dice=test["patient_dice"], test=test,
                   test_per_patient_dice=metrics.per_patient_dice(data.patient_ids[test_counts["index"]],
                                                                  test_counts))
  summary["provenance"] = provenance.collect(config, data)
  if best_step is not None and config.write_report:
    report.write(workdir, config, data, graphdefs["eval"], best_state, mesh, summary)
  if is_main:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"done: val per-patient Dice {summary['val_dice']:.4f}"
          + (f", best {summary['best_val_dice']:.4f} at step {summary['best_step']}, "
             f"test per-patient Dice (best checkpoint) {summary['test_dice']:.4f}" if best_step else "")
          + f"; summary in {workdir / 'summary.json'}")
  log.close()
  latest.close()
  best.close()
  return summary


def _report_step_time(seconds: float, remaining_steps: int, on_cpu: bool) -> None:
  eta_min = seconds * remaining_steps / 60
  message = f"one train step takes {seconds:.2f} s here; about {eta_min:.0f} min to go"
  logging.info(message)
  if on_cpu and eta_min > 30:
    tqdm.tqdm.write(f"WARNING: {message} on the CPU. For a run sized for a CPU use "
                    f"configs/unet_cpu.py (128x128, narrow U-Net, ~10 min on 2 cores).")
