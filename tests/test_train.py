import gc
import json
import pathlib
import shutil
import weakref

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lgg_jax import cli, inference, loading, losses, optimizers, parallel, provenance, state, steps, train
from lgg_jax.data import pipeline
from conftest import tiny_config


def _batch(config, n, seed=0):
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  images = rng.standard_normal((n, size, size, 3)).astype(np.float32)
  masks = (rng.random((n, size, size, 1)) < 0.2).astype(np.float32)
  return {"image": images, "mask": masks, "index": np.arange(n, dtype=np.int32)}


def test_train_step_on_one_device_equals_eight_devices(tmp_path):
  """The step applies the gradient of the global-batch mean loss, whatever the
  device count. SGD without clipping, so a gradient off by a factor shows."""
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  config = tiny_config(tmp_path)
  config.optimizer.name = "sgd"
  config.optimizer.grad_clip_norm = 0.0
  batch = _batch(config, config.global_batch_size)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    tx, _ = optimizers.make_optimizer(config, total_steps=10)
    graphdefs, train_state = state.create_state(config, tx)
    initial_params = jax.device_get(train_state["params"])
    train_state = parallel.replicate(train_state, mesh)
    step = steps.make_train_step(graphdefs["train"], tx, config, mesh)
    all_stats = []
    for _ in range(2):
      train_state, stats = step(train_state, parallel.global_batch(batch, mesh))
      all_stats.append(jax.device_get(stats))
    results.append((jax.device_get(train_state["params"]), all_stats))
  (p1, s1), (p8, s8) = results
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s1[-1]["loss"], s8[-1]["loss"], rtol=1e-5)

  # The first step's gradient norm equals that of a plain jax.grad of the mean
  # loss over the whole batch, outside any mesh.
  def mean_loss(params):
    model = state.merge(graphdefs["train"], params, jax.device_get(train_state["model_state"]))
    return losses.per_sample_loss(model(batch["image"]), batch["mask"], config.loss).mean()
  direct = optax.tree.norm(jax.jit(jax.grad(mean_loss))(initial_params))
  np.testing.assert_allclose(s8[0]["grad_norm"], direct, rtol=1e-4)
  np.testing.assert_allclose(s1[0]["grad_norm"], direct, rtol=1e-4)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  return restored["params"]


def test_training_lowers_loss_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
  config = tiny_config(tmp_path)
  config.num_epochs = 4
  config.optimizer.learning_rate = 3e-3
  full = tmp_path / "full"
  summary = train.train_and_evaluate(config, full)
  records = _records(full)
  assert [r["epoch"] for r in records] == [1, 2, 3, 4]
  assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
  assert summary["step"] == records[-1]["step"]
  assert set(summary) >= {"val_dice", "best_val_dice", "test_dice", "provenance"}
  assert summary["provenance"]["dataset"]["fingerprint"]
  assert summary["provenance"]["devices"]["host_cpu"] not in ("", "unknown")  # reruns match on one kind of CPU

  # One manager keeps the 2 latest saves (keep_checkpoints) and the best.
  steps = sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit())
  per_epoch = records[0]["step"]
  assert steps == sorted({3 * per_epoch, 4 * per_epoch, summary["best_step"]})
  # Same run "killed" after its epoch-3 checkpoint: drop what came later, rerun.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(full, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / str(steps[-1]))
  resumed_from = 3 * per_epoch
  lines = [r for r in _records(interrupted) if r["step"] <= resumed_from]
  # Killed while appending the next record: its line cut short is dropped, not a failed resume.
  (interrupted / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 4, "st')
  train.train_and_evaluate(config, interrupted)
  assert _records(interrupted) == records  # same data order, same numbers
  for a, b in zip(jax.tree.leaves(_params(full, steps[-1])), jax.tree.leaves(_params(interrupted, steps[-1]))):
    np.testing.assert_array_equal(a, b)
  # The best checkpoint is the same step, whether it was kept or written again.
  best = [state.best_checkpoint(run)[1:] for run in (full, interrupted)]
  assert best[0] == best[1] == (summary["best_step"], summary["best_val_dice"])
  # A finished run summarised again (a sweep taking it up) keeps the commit that trained it.
  written = json.loads((full / "summary.json").read_text())
  written["provenance"]["git_commit"] = "0" * 40
  (full / "summary.json").write_text(json.dumps(written))
  again = train.train_and_evaluate(config, full)
  assert again["provenance"]["git_commit"] == "0" * 40
  assert again["provenance"]["summarised_git_commit"] == provenance.git_commit()
  assert again["test_per_patient_dice"] == summary["test_per_patient_dice"]


def test_the_best_checkpoint_is_the_best_epoch_whatever_checkpoint_every_epochs(tmp_path):
  """The best epoch may fall between checkpoint epochs: its weights are still
  the best checkpoint, and the summary's best step and Dice are theirs."""
  config = tiny_config(tmp_path)
  config.num_epochs = 3
  config.checkpoint_every_epochs = 2
  config.inference.threshold = 0.3  # non-empty predictions, so this tiny run's validation Dice moves between epochs
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, workdir)
  records = _records(workdir)
  best = max(records, key=lambda r: r["val_dice"])
  assert best["epoch"] == 1 and best["val_dice"] > 0, records  # the case: the best epoch is no checkpoint epoch
  assert (summary["best_step"], summary["best_val_dice"]) == (best["step"], best["val_dice"])
  member = loading.member_from_run(workdir, "best")
  assert member.step == best["step"]
  data = pipeline.load(config)
  val, _ = train.validate(inference.Predictor(member, settings=inference.validation_settings(config)), data,
                          data.split.val, config)
  assert val["patient_dice"] == pytest.approx(summary["best_val_dice"], abs=1e-6)


def _resident(config):
  data = pipeline.load(config)
  return data, pipeline.resident(data, data.split.train, config.data)


def test_train_data_order_is_a_function_of_seed_and_step(tmp_path, tiny_dataset):
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  _, res = _resident(config)
  it = pipeline.train_dataset(res, config)
  first = [next(it)["index"] for _ in range(6)]
  it = pipeline.train_dataset(res, config)
  for _ in range(3):
    next(it)
  saved = it.get_state()
  again = pipeline.train_dataset(res, config)
  again.set_state(saved)
  np.testing.assert_array_equal(next(again)["index"], first[3])
  # Two processes reading their halves make up the same global batches, row for row.
  halves = [pipeline.train_dataset(res, config, p, 2) for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([next(h)["index"] for h in halves]), first[step])


def test_slice_protocol_trains_only_on_its_train_slices(tmp_path, tiny_dataset):
  """Under the slice protocol every patient is resident (for its neighbours),
  so the stream once drew their val and test slices too."""
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  config.split.protocol = "slice"
  data, res = _resident(config)
  assert len(res.records) > len(data.split.train)  # held-out slices are resident
  np.testing.assert_array_equal(np.sort(res.trainable_records), np.sort(data.split.train))
  order = pipeline.train_order(res, config)
  passes = 2 * len(data.split.train) // config.global_batch_size + 1
  drawn = res.records[np.concatenate([order.rows(step) for step in range(passes)])]
  np.testing.assert_array_equal(np.unique(drawn), np.sort(data.split.train))
  it = pipeline.train_dataset(res, config)
  streamed = np.concatenate([next(it)["index"] for _ in range(passes)])
  assert np.isin(streamed, data.split.train).all()


@pytest.mark.parametrize("key,value,message", [
    ("global_batch_size", 12, "multiple of the device count"),
    ("data.image_size", 30, "divisible"),
    ("data.manual_dir", "/nonexistent/lgg", "does not exist"),
    ("model.name", "vnet", "config.model.name: unknown value 'vnet'"),
    ("loss.name", "focal", "config.loss.name: unknown value 'focal'"),
    ("augment.name", "mixup", "config.augment.name: unknown value 'mixup'"),
    ("inference.tta", "d8", "config.inference.tta: unknown value 'd8'"),
    ("data.normalization", "volume", "config.data.normalization: unknown value 'volume'"),
    ("data.tumour_fraction", 1.5, "tumour_fraction"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 must be at least 1"),
    ("schedule.name", "step", "config.schedule.name: unknown value 'step'"),
    ("checkpoint_every_epochs", 0, "config.checkpoint_every_epochs must be positive"),
    ("log_every_steps", 0, "config.log_every_steps must be positive"),
    ("split.fold", 9, r"config.split.fold must be in \[0, 4\)"),
    # A negative clip norm flipped every gradient (training climbed the loss); these all ran.
    ("optimizer.grad_clip_norm", -1.0, r"config.optimizer.grad_clip_norm=-1.0 must be in \[0, inf\]"),
    ("optimizer.learning_rate", -0.001, r"config.optimizer.learning_rate=-0.001 must be in \(0, inf\]"),
    ("schedule.warmup_steps", -5, r"config.schedule.warmup_steps=-5 must be in \[0, inf\]"),
    ("schedule.cosine.final_lr_fraction", 5.0, r"final_lr_fraction=5.0 must be in \[0, 1\]"),
    ("model.freeze_encoder_epochs", 10, r"config.model.freeze_encoder_epochs=10 is more than the run's "
                                        r"config.num_epochs"),
    ("model.freeze_encoder_bn_epochs", -2, r"freeze_encoder_bn_epochs=-2 must be in \[0, inf\]"),
    ("inference.threshold", 1.0, r"config.inference.threshold=1.0 must be in \(0, 1\)"),
    ("inference.component_fraction", 2.0, r"component_fraction=2.0 must be in \[0, 1\]"),
    ("preemption_check_every_steps", 0, "config.preemption_check_every_steps must be positive"),
    ("data.num_workers", -1, r"config.data.num_workers=-1 must be in \[0, inf\]"),
    ("data.crop_context", -8, r"config.data.crop_context=-8 must be in \[0, inf\]"),
    ("evaluation.slice_spacing", -1.0, r"config.evaluation.slice_spacing=-1.0 must be in \(0, inf\]"),
])
def test_bad_config_fails_before_work(tmp_path, key, value, message):
  config = cli.override(tiny_config(tmp_path), {key: value})
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def _tiny_model(config, model):
  config.model.name = model
  config.model.unet.base_width = 4
  config.model.fpn.update(base_width=4, pyramid_channels=8, segmentation_channels=8, group_norm_groups=4)
  config.model.resnext_unet.update(stem_width=8, blocks=(1, 1, 1, 1), groups=4, width_per_group=16)
  return config


def _learnable_batch(n=8):
  """A target learnable from the input at every model's resolution: 4x4 blocks."""
  local = _batch(tiny_config_defaults(), n, seed=1)
  coarse = np.random.default_rng(2).standard_normal((n, 8, 8, 3)).astype(np.float32)
  local["image"] = coarse.repeat(4, axis=1).repeat(4, axis=2)
  local["mask"] = (local["image"][..., 1:2] > 0.5).astype(np.float32)
  return local


def tiny_config_defaults():
  import tiny_config
  return tiny_config.get_config()


def _run_steps(config, local, count, mesh=None, freeze_encoder=False, compute_dtype="float32"):
  config.compute_dtype = compute_dtype
  mesh = mesh or parallel.make_mesh()
  config.model.freeze_encoder_epochs = int(freeze_encoder)
  tx, _ = optimizers.make_optimizer(config, total_steps=count, frozen_steps=count if freeze_encoder else 0)
  graphdefs, train_state = state.create_state(config, tx)
  initial = jax.device_get(train_state)
  train_state = parallel.replicate(train_state, mesh)
  step = steps.make_train_step(graphdefs["train"], tx, config, mesh, freeze_encoder=freeze_encoder)
  batch = parallel.global_batch(local, mesh)
  history = []
  for _ in range(count):
    train_state, stats = step(train_state, batch)
    history.append(jax.device_get(stats))
  return initial, jax.device_get(train_state), history


@pytest.mark.parametrize("model", ["fpn", "resnext_unet"])
def test_each_model_trains_a_few_steps_and_lowers_the_loss(tmp_path, model):
  config = _tiny_model(tiny_config(tmp_path), model)
  config.optimizer.learning_rate = 1e-3
  initial, final, history = _run_steps(config, _learnable_batch(), 80)
  assert history[-1]["loss"] < 0.85 * history[0]["loss"]
  if model == "resnext_unet":  # BatchNorm running statistics moved away from their start (mean 0, var 1)
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(initial["model_state"]),
                                                  jax.tree.leaves(final["model_state"]))]
    assert min(moved) > 1e-3


def test_resnext_on_one_device_equals_eight_devices_with_synced_batchnorm(tmp_path):
  """BatchNorm statistics over the global batch (sync_batch_norm): 8 devices
  of 1 row each give one device's 8-row step."""
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  config.optimizer.name, config.optimizer.grad_clip_norm = "sgd", 0.0
  local = _learnable_batch()
  results = [_run_steps(config, local, 2, mesh=parallel.make_mesh(d))[1:]
             for d in (jax.devices()[:1], jax.devices())]
  (s1, h1), (s8, h8) = results
  for a, b in zip(jax.tree.leaves((s1["params"], s1["model_state"])), jax.tree.leaves((s8["params"], s8["model_state"]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(h1[-1]["loss"], h8[-1]["loss"], rtol=1e-5)
  # Without the sync each device normalises its own row: the step differs.
  config.model.resnext_unet.sync_batch_norm = False
  _, unsynced, _ = _run_steps(config, local, 2, mesh=parallel.make_mesh())
  assert not np.allclose(unsynced["params"]["head2"]["kernel"], s1["params"]["head2"]["kernel"], rtol=1e-4)


def test_frozen_encoder_does_not_move_while_the_decoder_does(tmp_path):
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  initial, final, _ = _run_steps(config, _learnable_batch(), 3, freeze_encoder=True)
  for a, b in zip(jax.tree.leaves(initial["params"]["encoder"]), jax.tree.leaves(final["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(initial["params"]["decoder1"]["conv1"]["kernel"],
                            final["params"]["decoder1"]["conv1"]["kernel"])


def test_the_encoder_unfreezes_with_a_fresh_optimizer(tmp_path):
  """The first update of an encoder after its frozen epochs is a new
  optimizer's on the same parameters and gradients: Adam's step count did not
  run on while it was frozen (here that would scale the update by about 0.55,
  after long freezes by up to 3). The rest's statistics carry on."""
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  config.model.resnext_unet.sync_batch_norm = False  # one device; the reference gradient is taken outside the mesh
  config.model.freeze_encoder_epochs = 1
  config.schedule.name, config.schedule.warmup_steps = "constant", 0
  mesh = parallel.make_mesh(jax.devices()[:1])
  run = train._set_up(config, mesh)
  local = _learnable_batch()
  batch = parallel.global_batch(local, mesh)
  train_state = parallel.replicate(run.train_state, mesh)
  for step in range(run.steps_per_epoch + 1):  # the frozen epoch, then the first step of the next
    if step == run.steps_per_epoch:
      before = jax.device_get(train_state)
    train_state, _ = run.step_for_epoch(step // run.steps_per_epoch)(train_state, batch)
  moved = jax.tree.map(np.subtract, jax.device_get(train_state["params"]), before["params"])

  def mean_loss(params):
    model = state.merge(run.graphdefs["train"], params, jax.tree.map(jax.numpy.asarray, before["model_state"]))
    return losses.per_sample_loss(model(local["image"]), local["mask"], config.loss).mean()
  grads = jax.jit(jax.grad(mean_loss))(before["params"])  # jitted: eager op-by-op costs a minute
  config.model.freeze_encoder_epochs = 0
  fresh, _ = optimizers.make_optimizer(config, run.total_steps)
  first, _ = jax.jit(lambda g, p: fresh.update(g, fresh.init(p), p))(grads, before["params"])
  lr = config.optimizer.learning_rate
  for a, b in zip(jax.tree.leaves(moved["encoder"]), jax.tree.leaves(first["encoder"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-2 * lr)  # loose where a gradient is near Adam's eps
  assert not np.allclose(moved["head2"]["kernel"], first["head2"]["kernel"], rtol=1e-2, atol=1e-2 * lr)


def test_a_mid_epoch_preemption_save_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
  """A SIGTERM in the middle of an epoch saves that step and exits cleanly;
  the rerun finishes the epoch from there (its statistics included) and
  ends where an uninterrupted run ends, bit for bit."""
  config = tiny_config(tmp_path)
  config.num_epochs = 2
  full, preempted = tmp_path / "full", tmp_path / "preempted"
  train.train_and_evaluate(config, full)
  per_epoch = _records(full)[0]["step"]
  stop_after = per_epoch + 2
  assert stop_after < 2 * per_epoch
  with monkeypatch.context() as patch:
    patch.setattr(train._Preemption, "requested", lambda self, step: step + 1 == stop_after)
    summary = train.train_and_evaluate(config, preempted)
  assert summary == {"preempted": True, "step": stop_after}
  saved = sorted(int(p.name) for p in (preempted / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [per_epoch, stop_after]
  assert [r["epoch"] for r in _records(preempted)] == [1]  # the part-done epoch is not logged as done
  train.train_and_evaluate(config, preempted)
  assert _records(preempted) == _records(full)
  last = 2 * per_epoch
  for a, b in zip(jax.tree.leaves(_params(full, last)), jax.tree.leaves(_params(preempted, last))):
    np.testing.assert_array_equal(a, b)


def test_a_run_resumes_after_its_encoder_unfroze(tmp_path):
  """After unfreezing, checkpoints hold the encoder's optimizer state too:
  resuming from one gives the uninterrupted run."""
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  config.model.freeze_encoder_epochs = 1
  config.num_epochs = 3
  full, interrupted = tmp_path / "full", tmp_path / "interrupted"
  train.train_and_evaluate(config, full)
  shutil.copytree(full, interrupted)
  steps = sorted(int(p.name) for p in (interrupted / "checkpoints").iterdir() if p.name.isdigit())
  shutil.rmtree(interrupted / "checkpoints" / str(steps[-1]))  # resumes from epoch 2's, after the unfreezing
  train.train_and_evaluate(config, interrupted)
  assert _records(interrupted) == _records(full)
  for a, b in zip(jax.tree.leaves(_params(full, steps[-1])), jax.tree.leaves(_params(interrupted, steps[-1]))):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_step_keeps_float32_parameters_and_tracks_float32(tmp_path):
  config = _tiny_model(tiny_config(tmp_path), "unet")
  initial, f32, h32 = _run_steps(config, _learnable_batch(), 3)
  _, bf16, h16 = _run_steps(config, _learnable_batch(), 3, compute_dtype="bfloat16")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16["params"]))
  assert np.isfinite(h16[-1]["loss"])
  np.testing.assert_allclose(h16[0]["loss"], h32[0]["loss"], rtol=3e-2)  # the forward pass
  # The bfloat16 gradients and updates, not only the first forward pass, track float32's.
  np.testing.assert_allclose(h16[0]["grad_norm"], h32[0]["grad_norm"], rtol=5e-2)
  np.testing.assert_allclose(h16[-1]["loss"], h32[-1]["loss"], rtol=5e-2)
  steps_f32 = [b - a for a, b in zip(jax.tree.leaves(initial["params"]), jax.tree.leaves(f32["params"]))]
  steps_bf16 = [b - a for a, b in zip(jax.tree.leaves(initial["params"]), jax.tree.leaves(bf16["params"]))]
  moved = np.concatenate([d.ravel() for d in steps_f32])
  both = np.concatenate([d.ravel() for d in steps_bf16])
  assert np.abs(moved).max() > 0 and np.corrcoef(moved, both)[0, 1] > 0.9


def test_pretrained_encoder_weights_reach_the_model(tmp_path):
  """config.model.pretrained_path goes through model creation: the encoder
  holds the file's weights (torchvision names, OIHW kernels)."""
  from safetensors.numpy import save_file
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  reference = state.create_model(config)
  from lgg_jax.models import weights
  tensors = {}
  for key, (variable, convert) in weights._encoder_targets(reference.encoder).items():
    shape = np.asarray(variable[...]).shape
    value = np.random.default_rng(len(tensors)).standard_normal(shape).astype(np.float32)
    tensors[key] = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value)
  path = tmp_path / "encoder.safetensors"
  save_file(tensors, str(path))
  config.model.pretrained_path = str(path)
  model = state.create_model(config)
  np.testing.assert_array_equal(np.asarray(model.encoder.conv1.kernel[...]),
                                np.transpose(tensors["conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(np.asarray(model.encoder.layer1[0].bn1.mean[...]), tensors["layer1.0.bn1.running_mean"])
  config.model.name = "unet"
  with pytest.raises(ValueError, match="no pretrained encoder"):
    state.create_model(config)
  config.model.pretrained_path = ""
  config.model.freeze_encoder_epochs = 2
  with pytest.raises(ValueError, match="freeze_encoder_epochs=2: model 'unet' has no encoder to freeze"):
    state.create_state(config, optax.sgd(0.1))


def test_resuming_a_run_on_other_records_stops_and_says_why(tmp_path):
  config = tiny_config(tmp_path)
  config.num_epochs = 1
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir)
  step_dir = next(p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  item = step_dir / "data" / "metadata"
  saved = json.loads(item.read_text())
  item.write_text(json.dumps({k: v for k, v in saved.items() if k != "data_order"}))  # as before 1.1.0
  with pytest.raises(ValueError, match="saved no data order.*different data order"):
    train.train_and_evaluate(config, workdir)
  item.write_text(json.dumps({**saved, "data_order": "0123456789abcdef"}))  # other records
  with pytest.raises(ValueError, match="training records differ"):
    train.train_and_evaluate(config, workdir)
  config.global_batch_size *= 2  # same records, another stream
  item.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"other settings \(config.global_batch_size: (\d+) -> (\d+)\)"):
    train.train_and_evaluate(config, workdir)
  config.global_batch_size //= 2
  assert train.train_and_evaluate(config, workdir)["step"] == saved["iterator"]["next_index"]


def test_resuming_under_other_settings_stops_naming_them_and_keeps_config_json(tmp_path):
  """Another learning rate, loss or epoch count went on silently, and the
  rewritten config.json then claimed the run had trained with it."""
  config = tiny_config(tmp_path)
  config.num_epochs = 1
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, workdir)
  saved = (workdir / "config.json").read_text()
  changed = config.copy_and_resolve_references()
  changed.num_epochs, changed.optimizer.learning_rate, changed.loss.name = 2, 0.5, "bce"
  with pytest.raises(ValueError, match=r"started with other settings \(config.loss.name: 'dice_bce' -> 'bce'; "
                     r"config.num_epochs: 1 -> 2; config.optimizer.learning_rate: 0.003 -> 0.5\)"):
    train.train_and_evaluate(changed, workdir)
  assert (workdir / "config.json").read_text() == saved
  # Where files sit and how often it logs are not how it trained.
  moved = config.copy_and_resolve_references()
  moved.log_every_steps, moved.keep_checkpoints = 1, 5
  assert train.train_and_evaluate(moved, workdir)["test_per_patient_dice"] == summary["test_per_patient_dice"]


def test_pretrained_stem_expands_to_neighbouring_slices(tmp_path):
  """2.5-D: a stack of identical slices through the expanded ImageNet stem
  gives the 3-channel stem's output."""
  from safetensors.numpy import save_file
  from lgg_jax.models import weights
  config = _tiny_model(tiny_config(tmp_path), "resnext_unet")
  reference = state.create_model(config)
  tensors = {}
  for key, (variable, _) in weights._encoder_targets(reference.encoder).items():
    value = np.random.default_rng(len(tensors)).standard_normal(np.asarray(variable[...]).shape).astype(np.float32)
    tensors[key] = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value)
  path = tmp_path / "encoder.safetensors"
  save_file(tensors, str(path))
  config.model.pretrained_path = str(path)
  flat, stacked = state.create_model(config), None
  config.data.neighbours = 1
  stacked = state.create_model(config)
  assert stacked.encoder.conv1.kernel.shape[2] == 9
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(stacked.encoder.conv1(np.concatenate([x, x, x], axis=-1)), flat.encoder.conv1(x),
                             rtol=1e-5, atol=1e-5)


def test_tumour_aware_sampling_fills_its_share_and_is_a_function_of_seed_and_step():
  tumour = np.arange(0, 100, 5)  # 20 of 100 rows show tumour
  order = pipeline.TrainOrder(np.arange(100), tumour, batch=12, tumour_fraction=0.33, seed=3)
  batches = [order.rows(step) for step in range(30)]
  for rows in batches:
    assert np.isin(rows, tumour).sum() >= 4  # round(0.33 * 12) drawn from tumour rows, more by chance
  again = pipeline.TrainOrder(np.arange(100), tumour, batch=12, tumour_fraction=0.33, seed=3)
  np.testing.assert_array_equal(again.rows(17), batches[17])  # no state: step 17 alone
  uniform = pipeline.TrainOrder(np.arange(100), tumour, batch=10, tumour_fraction=0.0, seed=3)
  seen = np.concatenate([uniform.rows(step) for step in range(10)])
  np.testing.assert_array_equal(np.sort(seen), np.arange(100))  # each row once per pass
  with pytest.raises(ValueError, match="tumour_fraction"):
    pipeline.TrainOrder(np.arange(100), tumour, batch=12, tumour_fraction=1.5, seed=3)


def test_train_order_is_garbage_collected_after_use():
  """Its permutation cache once lived on the class (lru_cache on a method),
  which kept every order, and its rows, alive for the whole process."""
  order = pipeline.TrainOrder(np.arange(100), np.arange(0, 100, 5), batch=12, tumour_fraction=0.33, seed=3)
  first = order.rows(0)
  np.testing.assert_array_equal(order.rows(0), first)
  gone = weakref.ref(order)
  del order
  gc.collect()
  assert gone() is None


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="not writable"):
    train.train_and_evaluate(tiny_config(tmp_path), blocker / "run")
  with pytest.raises(ValueError, match="gs://bucket/run: URLs are not supported"):
    train.train_and_evaluate(tiny_config(tmp_path), "gs://bucket/run")
  assert not pathlib.Path("gs:").exists()


def _diverging_from(monkeypatch, first_bad_step: int):
  """The train step, with its loss non-finite from `first_bad_step` on (1-based)."""
  made, calls = steps.make_train_step, [0]

  def make(*args, **kwargs):
    step = made(*args, **kwargs)

    def diverging(*a, **k):
      train_state, stats = step(*a, **k)
      calls[0] += 1
      if calls[0] >= first_bad_step:
        stats = {**stats, "loss": stats["loss"] * np.nan}
      return train_state, stats

    return diverging

  monkeypatch.setattr(steps, "make_train_step", make)


@pytest.mark.parametrize("preempted", [False, True])
def test_non_finite_loss_stops_training_and_keeps_good_checkpoints(tmp_path, monkeypatch, preempted):
  """A run that diverges in its second epoch stops there, names the first
  epoch's checkpoint, and writes no checkpoint of the bad epoch; also when a
  SIGTERM asks for a save in the middle of that epoch (that save used to
  become the checkpoint a resume starts from)."""
  config = tiny_config(tmp_path)
  config.num_epochs = 3
  workdir = tmp_path / "run"
  per_epoch = train._set_up(config, parallel.make_mesh()).steps_per_epoch
  _diverging_from(monkeypatch, per_epoch + 1)
  if preempted:
    monkeypatch.setattr(train._Preemption, "requested", lambda self, step: step + 1 == per_epoch + 2)
  message = (r"the epoch under way \(step %d\), at preemption" % (per_epoch + 2) if preempted
             else r"epoch 2 \(step %d\)" % (2 * per_epoch))
  with pytest.raises(FloatingPointError, match=f"non-finite training loss in {message}.*step {per_epoch} in"):
    train.train_and_evaluate(config, workdir)
  after = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert after == [per_epoch]
  params = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(per_epoch) / "state")["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_grain_workers_give_the_same_batches(tmp_path, tiny_dataset):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain reads absl flags; lgg_jax.main parses them
    flags.FLAGS.mark_as_parsed()
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  config.augment.name = "distortions"
  _, res = _resident(config)
  serial = pipeline.train_dataset(res, config)
  config.data.num_workers = 2
  parallel_batches = pipeline.train_dataset(res, config)
  for _ in range(3):
    a, b = next(serial), next(parallel_batches)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_progress_figure_shows_every_epoch_once_the_log_closes(tmp_path, monkeypatch):
  """Short epochs do not redraw progress.png each time, but the figure left
  behind always holds every epoch."""
  drawn = []
  monkeypatch.setattr(train.figures, "progress", lambda records, path: drawn.append(len(records)))
  config = tiny_config(tmp_path)
  log = train.MetricsLog(tmp_path, 0, config)
  for epoch in (1, 2, 3):
    log.write({"epoch": epoch, "step": 4 * epoch, "train_loss": 1.0 / epoch})
  assert drawn == [1]  # the first epoch at once; the next two came within REDRAW_SECONDS
  log.close()
  assert drawn == [1, 3]
  resumed = train.MetricsLog(tmp_path, 8, config)  # resuming at step 8 keeps epochs 1-2
  resumed.close()
  assert drawn == [1, 3, 2]
