"""The one trainer: `train_and_evaluate(config, workdir)`.

The loop only: data-parallel steps (`steps.make_train_step`, shard_map over
a 1-D mesh of every device), a validation per epoch through the shared
inference layer, one Orbax checkpoint manager (latest and best), resumption, and at the
end the best checkpoint scored on the test patients. Everything it opens
(progress bar, SIGTERM handler, checkpoint manager, metric and text logs) is
closed by one ExitStack on every exit: done, preempted, non-finite loss or
an exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import statistics
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from jax.experimental import multihost_utils

from lgg_jax import cli, config_checks, config_defaults, evaluate, figures, inference, losses, optimizers, parallel, provenance, state, steps
from lgg_jax.data import device_pipeline, pipeline, splits

STAT_KEYS = ("loss", "dice_sum", "slices", "grad_norm")
TIMED_STEPS = 5  # steps after the compiled one that the time estimate takes


# --------------------------------------------------------------------------- setup

def initialize_distributed(config) -> None:
  """jax.distributed.initialize() when config.distributed.enabled.

  No address: JAX detects the cluster (SLURM, TPU pods, Kubernetes). With
  coordinator_address, num_processes and process_id: a manual launch.
  """
  dist = config.distributed
  if not dist.enabled:
    return
  kwargs = {}
  if not dist.coordinator_address and (dist.num_processes > 0 or dist.process_id >= 0):
    raise ValueError("config.distributed.num_processes and process_id need coordinator_address (host:port of "
                     "process 0); leave all three unset for JAX to detect the cluster")
  if dist.coordinator_address:
    if dist.num_processes <= 0 or dist.process_id < 0:
      raise ValueError("config.distributed.coordinator_address needs num_processes and process_id")
    kwargs = dict(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                  process_id=dist.process_id)
  # CPU devices of several processes need a collectives backend to talk
  # (only the CPU client reads this; accelerators use their own).
  jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _writable_workdir(workdir) -> pathlib.Path:
  if "://" in str(workdir):  # pathlib would make gs://b/x a local folder named gs:
    raise ValueError(f"workdir {workdir}: URLs are not supported; give a folder (on several hosts, one they "
                     "all see: NFS, or a gcsfuse mount of the bucket)")
  workdir = pathlib.Path(workdir).expanduser().resolve()  # Orbax wants absolute paths
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} is not writable: {e}") from e
  return workdir


# --------------------------------------------------------------------------- checkpoints and logs

def _read_records(path: pathlib.Path) -> list[dict]:
  """metrics.jsonl's records; a last line cut short (the process killed while
  appending it) is dropped: it came after the checkpoint the run resumes from."""
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if number < len(lines):
        raise ValueError(f"{path}: line {number} is not a JSON record ({e})") from e
      logging.warning("%s: dropped its last line, written in part (%d characters)", path, len(line))
  return records


class MetricsLog:
  """metrics.jsonl, TensorBoard (tensorboardX: no TensorFlow) and progress.png; process 0 only.

  TensorBoard gets the config as text, the training loss, gradient norm and
  learning rate every `config.log_every_steps` steps, the epoch records, and
  each epoch a grid of validation overlays (truth green, prediction red).
  """

  # progress.png is redrawn after an epoch at most this often, and always on closing: drawing it
  # takes about half a second, a large share of a short epoch.
  REDRAW_SECONDS = 30.0

  def __init__(self, workdir: pathlib.Path, resume_step: int, config):
    self.enabled = jax.process_index() == 0
    self.path, self.progress_path = workdir / "metrics.jsonl", workdir / "progress.png"
    self.records = []
    self._drawn, self._drawn_at = 0, -math.inf  # records in the figure, and when it was drawn
    # A resumed run drops records written after its checkpoint, so the log
    # reads like one uninterrupted run.
    if self.path.exists():
      self.records = [r for r in _read_records(self.path) if r["step"] <= resume_step]
      if self.enabled:  # whole: the other processes read this file at the same time
        cli.write_whole(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
    if not self.enabled:
      return
    import tensorboardX  # here, not at the top: it imports torch when torch is installed (1-2 s)
    self.writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)
    if resume_step == 0:
      self.writer.add_text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```", 0)

  def write_step(self, step: int, stats: dict, lr: float):
    if self.enabled:
      self.writer.add_scalar("train/step_loss", float(stats["loss"]), step)
      self.writer.add_scalar("train/step_grad_norm", float(stats["grad_norm"]), step)
      self.writer.add_scalar("train/lr", lr, step)

  def write(self, record: dict, overlays: np.ndarray | None = None):
    self.records.append(record)
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
        self.writer.add_scalar(key.replace("_", "/", 1), value, record["step"])
    if overlays is not None:
      self.writer.add_image("validation/overlays", overlays, record["step"], dataformats="HWC")
    self.writer.flush()
    if time.monotonic() - self._drawn_at >= self.REDRAW_SECONDS:
      self._draw()

  def _draw(self):
    figures.progress(self.records, self.progress_path)
    self._drawn, self._drawn_at = len(self.records), time.monotonic()

  def close(self):
    if self.enabled:
      self.writer.close()
      if self._drawn != len(self.records):
        self._draw()


class _Preemption:
  """SIGTERM asks for a checkpoint at the next step and a clean exit.

  With several processes the flag is shared every `check_every` steps, so
  all of them stop at the same step.
  """
  # Kept instead of multihost_utils.reached_preemption_sync_point: that needs
  # jax.distributed's preemption service and answers False in a single process
  # (a SIGTERM to a one-process CPU run would go unheard).

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


def stream_settings(config) -> dict:
  """The settings that, beside the records, decide what fills each position
  of the training stream: a resumed run must keep them."""
  data = config.data
  return {"seed": config.seed, "global_batch_size": config.global_batch_size, "data.image_size": data.image_size,
          "data.tumour_fraction": data.tumour_fraction, "data.crop_size": data.get("crop_size", 0),
          "data.crop_context": data.get("crop_context", 0), "data.on_device": data.get("on_device", False)}


def _check_resumed_config(workdir: pathlib.Path, config) -> None:
  """A run resumes with the settings it started with: another learning rate,
  loss or epoch count went on silently, and config.json then claimed it."""
  path = workdir / "config.json"
  if not path.exists():  # lost: the data order and stream checks still stand
    return
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: unreadable ({e}); it is the run's record of how it trained") from e
  changed = config_defaults.differences(saved, config, str(path))
  if changed:
    raise ValueError(f"{workdir}: this run started with other settings (" + "; ".join(changed) + "); resuming "
                     f"would go on under these. Give the saved values ({path}) or start a new workdir. Scoring "
                     "under other inference settings is `python -m lgg_jax.evaluate`'s.")


def _restore(checkpoints, run: _Setup, config):
  """(step, partial-epoch statistics, state) from the latest checkpoint."""
  step = checkpoints.latest_step()
  restored = checkpoints.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
  saved_order = restored["data"].get("data_order")
  if saved_order != run.order:  # None: a checkpoint that saved no data order
    raise ValueError(f"{checkpoints.directory}: the training records differ from this run's (the dataset, its "
                     "version or the split changed, or the checkpoint saved no data order); resuming would "
                     "train on a different data order. Start a new workdir or restore the original data and "
                     "config.")
  saved_stream = restored["data"].get("stream")  # None: saved before lgg_jax recorded it
  changed = [f"config.{k}: {saved_stream[k]!r} -> {v!r}" for k, v in stream_settings(config).items()
             if saved_stream is not None and saved_stream.get(k) != v]
  if changed:
    raise ValueError(f"{checkpoints.directory}: this run's data stream was made with other settings ("
                     + "; ".join(changed) + "); resuming would train on another stream. Give the saved values "
                     "(the run's config.json) or start a new workdir.")
  try:
    restored = checkpoints.restore(step, args=ocp.args.Composite(
        state=state.restore_args(state.abstract(run.train_state)), data=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:  # Orbax: the saved tree is not this run's
    raise ValueError(f"{checkpoints.directory}: the saved train state does not fit this run's model and optimizer "
                     "(a changed config, or a frozen-encoder run checkpointed before lgg_jax kept one optimizer "
                     f"state layout); resuming is impossible. Start a new workdir. ({type(e).__name__}: "
                     f"{str(e)[:300]})") from e
  run.train_iter.set_state(restored["data"]["iterator"])
  # Statistics of a part-done epoch (a preemption save), so the epoch's
  # record equals an uninterrupted run's.
  partial = restored["data"]["epoch_stats"]
  epoch_stats = [{k: np.float32(v[i]) for k, v in partial.items()} for i in range(len(partial["loss"]))]
  logging.info("resumed from %s at step %d", checkpoints.directory, step)
  return step, epoch_stats, restored["state"]


# --------------------------------------------------------------------------- validation and the end

OVERLAY_PATIENTS = 4


def validate(predictor: inference.Predictor, data, indices: np.ndarray, config) -> tuple[dict, np.ndarray]:
  """Per-patient Dice at 256x256 of the records `indices` (no HD95: it picks
  checkpoints, fast), the loss there, and overlays of the first patients'
  largest tumour slices."""
  patients = data.patients(indices)
  volumes = list(predictor.predict_patients(data, patients, cache=True))
  held_out = evaluate.held_out_slices(data, indices)
  summary, _ = evaluate.score(volumes, predictor.settings, held_out=held_out)
  summary["loss"] = float(np.mean(np.concatenate(
      [np.asarray(losses.probability_loss(p[held_out[n]], t[held_out[n]], config.loss)) for n, p, t in volumes])))
  pictures = []
  for patient, probs, truth in volumes[:OVERLAY_PATIENTS]:
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    pictures.append(figures.overlay(data.volume(patient, cache=True)[0][k], predictor.masks(probs)[k],
                                    truth=truth[k]))
  return summary, figures.overlay_grid(pictures)


def _report_step_time(seconds: float, remaining_steps: int, config) -> None:
  on_cpu = jax.default_backend() == "cpu"
  eta_min = seconds * remaining_steps / 60
  message = (f"one train step takes {seconds:.2f} s here (compilation excluded): about {eta_min:.0f} min "
             f"for the remaining {remaining_steps} steps, plus validation")
  logging.info(message)
  if on_cpu and eta_min > 30:
    larger = (config.data.image_size > 128 or config.model.name != "unet" or config.model.unet.base_width > 32)
    hint = " configs/unet_cpu.py and configs/recipe_cpu.py are sized for a CPU." if larger else ""
    tqdm.tqdm.write(f"WARNING: {message}.{hint}")


@dataclasses.dataclass
class _Setup:
  """What a run trains with: data, schedule, state, steps and input."""
  data: pipeline.Data
  steps_per_epoch: int
  total_steps: int
  schedule: object
  tx: object                 # the optimizer (the encoder's after any frozen epochs)
  unfreeze_step: int         # steps done when the encoder first trains
  graphdefs: dict
  train_state: dict          # the first step's (a frozen encoder's optimizer state while it is frozen)
  step_for_epoch: object     # epoch -> compiled train step
  train_iter: object         # grain iterator or device_pipeline.HostBatches
  device_data: dict | None   # the resident records on the devices, or None
  order: str                 # signature of the training records and their order


def _set_up(config, mesh) -> _Setup:
  data = pipeline.load(config)
  res = pipeline.resident(data, data.split.train, config.data)
  steps_per_epoch = len(res.trainable_records) // config.global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(res.trainable_records)} training slices make no batch of "
                     f"config.global_batch_size={config.global_batch_size}")
  total_steps = steps_per_epoch * config.num_epochs
  logging.info("split %s; %d steps per epoch, %d devices", data.split.summary(), steps_per_epoch,
               jax.device_count())
  unfreeze_step = steps_per_epoch * config.model.freeze_encoder_epochs
  tx, schedule = optimizers.make_optimizer(config, total_steps, frozen_steps=unfreeze_step)
  graphdefs, train_state = state.create_state(config, tx)
  logging.info("model %s: %d parameters", config.model.name,
               sum(x.size for x in jax.tree.leaves(train_state["params"])))
  prepare = device_pipeline.make_prepare(config) if config.data.on_device else None
  compiled = {}  # (freeze encoder, freeze encoder BN) -> step, built on first use

  def step_for_epoch(epoch: int):
    key = (epoch < config.model.freeze_encoder_epochs, epoch < config.model.freeze_encoder_bn_epochs)
    if key not in compiled:
      graphdef = graphdefs["train_frozen_bn" if key[1] else "train"]
      compiled[key] = steps.make_train_step(graphdef, tx, config, mesh, freeze_encoder=key[0], prepare=prepare)
    return compiled[key]

  if config.data.on_device:
    device_data = device_pipeline.put_on_devices(res, mesh)
    train_iter = device_pipeline.host_batches(res, config)
  else:
    device_data = None
    train_iter = pipeline.train_dataset(res, config, jax.process_index(), jax.process_count())
  return _Setup(data, steps_per_epoch, total_steps, schedule, tx, unfreeze_step, graphdefs, train_state, step_for_epoch, train_iter, device_data, data.order_signature(res.trainable_records))


def _stop_if_not_finite(host: dict, where: str, checkpoints) -> None:
  if not np.isfinite(host["loss"]).all():
    raise FloatingPointError(f"non-finite training loss in {where}; stopping. The last good checkpoint is step "
                             f"{checkpoints.latest_step()} in {checkpoints.directory}.")


def _epoch_stats(epoch_stats: list) -> dict:
  return jax.tree.map(lambda *xs: np.asarray(xs), *jax.device_get(epoch_stats))


def _epoch_record(epoch: int, step: int, lr: float, host: dict, val: dict) -> dict:
  return {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(host["loss"].mean()),
          "train_dice": float(host["dice_sum"].sum() / host["slices"].sum()),
          "grad_norm": float(host["grad_norm"].mean()), "val_loss": val["loss"], "val_dice": val["patient_dice"],
          "val_slice_dice": val["slice_dice"], "val_pooled_dice": val["pooled_dice"],
          "val_empty_fp_rate": val["empty_false_positive_rate"]}


def _epoch_line(record: dict) -> str:
  return (f"epoch {record['epoch']:3d} step {record['step']:6d}  train loss {record['train_loss']:.4f} "
          f"dice {record['train_dice']:.4f} | val loss {record['val_loss']:.4f} "
          f"patient dice {record['val_dice']:.4f} slice dice {record['val_slice_dice']:.4f}")


def _training_provenance(workdir: pathlib.Path, current: dict) -> dict:
  """A finished run summarised again (a sweep taking it up) keeps the commit,
  packages and devices that trained it; the summarising commit goes beside them."""
  try:
    previous = state.read_json(workdir / "summary.json")["provenance"]
  except (OSError, ValueError, KeyError, TypeError):
    return current
  kept = {k: previous[k] for k in ("git_commit", "versions", "devices") if k in previous}
  return {**current, **kept, "summarised_git_commit": current["git_commit"]}


def _summary(config, workdir: pathlib.Path, run: _Setup, records: list[dict], best_val_dice: float | None,
             mesh) -> dict:
  """The final validation is the last epoch's; the best Dice and the test
  figures are the best checkpoint's."""
  last = records[-1] if records else {}
  summary = {"val_dice": last.get("val_dice"), "best_val_dice": best_val_dice,
             "step": int(jax.device_get(run.train_state["step"])), "steps_per_epoch": run.steps_per_epoch,
             "split": run.data.split.summary(), "split_patients": run.data.split.patients}
  if best_val_dice is not None:
    summary.update(evaluate.best_checkpoint_on_test(workdir, config, run.data, mesh))
  summary["provenance"] = provenance.collect(config, run.data)
  peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  summary["peak_device_memory_gb"] = None if peak is None else peak / 2**30
  return summary


def _done_line(summary: dict, workdir: pathlib.Path) -> str:
  test = (f", best {summary['best_val_dice']:.4f} at step {summary['best_step']}, test per-patient Dice "
          f"(best checkpoint) {summary['test_dice']:.4f}" if "best_step" in summary else "")
  return f"done: val per-patient Dice {summary['val_dice']:.4f}{test}; summary in {workdir / 'summary.json'}"


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Trains, validates every epoch, checkpoints, resumes; returns the summary."""
  config_checks.validate_config(config, jax.device_count(), jax.process_count())
  workdir = _writable_workdir(workdir)
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    stack.enter_context(cli.log_to(workdir / ("log.txt" if is_main else f"log_process{jax.process_index()}.txt")))
    mesh = parallel.make_mesh()
    run = _set_up(config, mesh)
    checkpoints = state.checkpoint_manager(workdir / state.CHECKPOINTS, config.keep_checkpoints)
    stack.callback(checkpoints.close)  # waits for saves in flight
    if (workdir / state.OLD_BEST).is_dir() and (checkpoints.latest_step() or 0) < run.total_steps:
      raise ValueError(f"{workdir / state.OLD_BEST}: this run was started by an lgg_jax that kept its best "
                       "checkpoint apart; finish its training with that version (evaluate, predict and export "
                       "read it as it is) or start a new workdir.")
    start_step, epoch_stats = 0, []
    if checkpoints.latest_step() is not None:
      _check_resumed_config(workdir, config)
      start_step, epoch_stats, run.train_state = _restore(checkpoints, run, config)
    best = state.best_checkpoint(workdir)  # every save is at or before the latest: nothing to drop on resuming
    best_val_dice = None if best is None else best[2]
    train_state = parallel.replicate(run.train_state, mesh)
    log = MetricsLog(workdir, start_step, config)
    stack.callback(log.close)
    if is_main:
      (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
      (workdir / "split.json").write_text(splits.to_json(run.data.split, config.split))
    bar = stack.enter_context(cli.progress(total=run.total_steps, initial=start_step, unit="step"))
    preemption = _Preemption(config.preemption_check_every_steps)
    stack.callback(preemption.close)

    def save(step_done: int, metrics: dict):
      host = jax.device_get(epoch_stats)
      checkpoints.save(step_done, force=True, metrics=metrics, args=ocp.args.Composite(
          state=state.save_args(train_state),
          data=ocp.args.JsonSave({"iterator": run.train_iter.get_state(), "data_order": run.order,
                                  "stream": stream_settings(config),
                                  "epoch_stats": {k: [float(h[k]) for h in host] for k in STAT_KEYS}})))

    step_times = []
    for step in range(start_step, run.total_steps):
      started = time.perf_counter()
      batch = parallel.global_batch(next(run.train_iter), mesh)
      inputs = (batch,) if run.device_data is None else (batch, run.device_data)
      train_state, stats = run.step_for_epoch(step // run.steps_per_epoch)(train_state, *inputs)
      if jax.default_backend() == "cpu" or len(step_times) <= TIMED_STEPS:
        # Back-to-back collective steps on fake CPU devices can deadlock in
        # XLA:CPU's rendezvous when several steps are in flight on a small
        # thread pool; waiting for each step there costs nothing on one CPU.
        jax.block_until_ready(stats)
      step_times.append(time.perf_counter() - started)
      if len(step_times) == TIMED_STEPS + 1:  # the first one compiled
        _report_step_time(statistics.median(step_times[1:]), run.total_steps - step - 1, config)
      epoch_stats.append(stats)
      bar.update(1)
      if (step + 1) % config.log_every_steps == 0:
        log.write_step(step + 1, jax.device_get(stats), float(run.schedule(step)))
      if (step + 1) % run.steps_per_epoch == 0:
        epoch = (step + 1) // run.steps_per_epoch
        host = _epoch_stats(epoch_stats)
        epoch_stats.clear()
        _stop_if_not_finite(host, f"epoch {epoch} (step {step + 1})", checkpoints)
        member = inference.Member(config, run.graphdefs["eval"], {"params": train_state["params"],
                                                                  "model_state": train_state["model_state"]})
        val, overlays = validate(inference.Predictor(member, mesh, inference.validation_settings(config)),
                                 run.data, run.data.split.val, config)
        record = _epoch_record(epoch, step + 1, float(run.schedule(step)), host, val)
        log.write(record, overlays)
        if is_main:
          bar.write(_epoch_line(record))
        # Checkpoint epochs, and every epoch that improves: the best epoch's weights are kept.
        improved = best_val_dice is None or val["patient_dice"] > best_val_dice
        if improved:
          best_val_dice = float(val["patient_dice"])
        if improved or epoch % config.checkpoint_every_epochs == 0 or step + 1 == run.total_steps:
          save(step + 1, {"val_dice": float(val["patient_dice"]), "improved": improved})
      if preemption.requested(step) and step + 1 < run.total_steps:
        if checkpoints.latest_step() != step + 1:
          if epoch_stats:  # a state gone non-finite must not become the save a resume starts from
            _stop_if_not_finite(_epoch_stats(epoch_stats), f"the epoch under way (step {step + 1}), at "
                                "preemption", checkpoints)
          save(step + 1, {"improved": False})
        checkpoints.wait_until_finished()
        message = f"preempted (SIGTERM): saved step {step + 1}; run the same command to resume"
        logging.warning(message)
        if is_main:
          bar.write(message)
        return {"preempted": True, "step": step + 1}
    checkpoints.wait_until_finished()
    run.train_state = train_state
    summary = _summary(config, workdir, run, log.records, best_val_dice, mesh)
    if start_step == run.total_steps:  # finished earlier: summarised again, not trained here
      summary["provenance"] = _training_provenance(workdir, summary["provenance"])
    if is_main:
      cli.write_whole(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
      bar.write(_done_line(summary, workdir))
    if jax.process_count() > 1:  # the report, on every process, reads summary.json next
      multihost_utils.sync_global_devices("lgg_jax: summary written")
    return summary
