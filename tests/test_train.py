import json
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lgg_jax import losses, train
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
    mesh = jax.sharding.Mesh(np.array(devices), (train.AXIS,))
    tx, _ = train.make_optimizer(config, total_steps=10)
    graphdefs, state = train.create_state(config, tx)
    initial_params = jax.device_get(state["params"])
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    step = train.make_train_step(graphdefs["train"], tx, config, mesh)
    all_stats = []
    for _ in range(2):
      state, stats = step(state, train.global_batch(batch, mesh))
      all_stats.append(jax.device_get(stats))
    results.append((jax.device_get(state["params"]), all_stats))
  (p1, s1), (p8, s8) = results
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s1[-1]["loss"], s8[-1]["loss"], rtol=1e-5)

  # The first step's gradient norm equals that of a plain jax.grad of the mean
  # loss over the whole batch, outside any mesh.
  def mean_loss(params):
    model = train.merge(graphdefs["train"], params, jax.device_get(state["model_state"]))
    return losses.per_sample_loss(model(batch["image"]), batch["mask"], config.loss).mean()
  direct = optax.tree.norm(jax.grad(mean_loss)(initial_params))
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

  # Same run "killed" after its epoch-2 checkpoint: drop what came later, rerun.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(full, interrupted)
  steps = sorted(int(p.name) for p in (interrupted / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) == 2  # keep_checkpoints
  shutil.rmtree(interrupted / "checkpoints" / str(steps[-1]))
  resumed_from = steps[0]
  lines = [r for r in _records(interrupted) if r["step"] <= resumed_from]
  (interrupted / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  train.train_and_evaluate(config, interrupted)
  assert _records(interrupted) == records  # same data order, same numbers
  for a, b in zip(jax.tree.leaves(_params(full, steps[-1])), jax.tree.leaves(_params(interrupted, steps[-1]))):
    np.testing.assert_array_equal(a, b)


def test_train_data_order_is_a_function_of_seed_and_step(tmp_path, tiny_dataset):
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  data = pipeline.load(config)
  it = pipeline.train_dataset(data, config)
  first = [next(it)["index"] for _ in range(6)]
  it = pipeline.train_dataset(data, config)
  for _ in range(3):
    next(it)
  state = it.get_state()
  again = pipeline.train_dataset(data, config)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["index"], first[3])
  # Two processes reading their halves make up the same global batches.
  halves = [pipeline.train_dataset(data, config, p, 2) for p in range(2)]
  for step in range(3):
    rows = np.concatenate([next(h)["index"] for h in halves])
    assert sorted(rows) == sorted(first[step])


@pytest.mark.parametrize("key,value,message", [
    ("global_batch_size", 12, "multiple of the device count"),
    ("data.image_size", 30, "divisible"),
    ("data.manual_dir", "/nonexistent/lgg", "does not exist"),
    ("model.name", "vnet", "unknown model 'vnet'"),
    ("loss.name", "focal", "config.loss.name: unknown value 'focal'"),
    ("augment.name", "mixup", "config.augment.name: unknown value 'mixup'"),
])
def test_bad_config_fails_before_work(tmp_path, key, value, message):
  config = tiny_config(tmp_path)
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("model", ["fpn", "resnext_unet"])
def test_each_model_trains_a_few_steps_and_lowers_the_loss(tmp_path, model):
  config = tiny_config(tmp_path)
  config.model.name = model
  config.model.base_width = 4
  config.model.fpn.update(pyramid_channels=8, segmentation_channels=8, group_norm_groups=4)
  config.model.resnext.update(stem_width=8, blocks=(1, 1, 1, 1), groups=4, width_per_group=16)
  config.optimizer.learning_rate = 1e-3
  mesh = train.make_mesh()
  tx, _ = train.make_optimizer(config, total_steps=80)
  graphdefs, state = train.create_state(config, tx)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = train.make_train_step(graphdefs["train"], tx, config, mesh)
  local = _batch(config, 8, seed=1)
  # A target learnable from the input at every model's resolution: 4x4 blocks.
  coarse = np.random.default_rng(2).standard_normal((8, 8, 8, 3)).astype(np.float32)
  local["image"] = coarse.repeat(4, axis=1).repeat(4, axis=2)
  local["mask"] = (local["image"][..., 1:2] > 0.5).astype(np.float32)
  batch = train.global_batch(local, mesh)
  losses = []
  for _ in range(80):
    state, stats = step(state, batch)
    losses.append(float(stats["loss"]))
  assert losses[-1] < 0.85 * losses[0]
  if model == "resnext_unet":  # BatchNorm running statistics moved
    assert any(float(abs(x).sum()) > 0 for x in jax.tree.leaves(state["model_state"]))


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="not writable"):
    train.train_and_evaluate(tiny_config(tmp_path), blocker / "run")


def test_non_finite_loss_stops_training_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config(tmp_path)
  config.num_epochs = 4
  config.optimizer.name = "sgd"
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.learning_rate = 1e12  # diverges within a few steps
  config.optimizer.warmup_steps = 0
  with pytest.raises(FloatingPointError, match="non-finite training loss") as err:
    train.train_and_evaluate(config, tmp_path / "run")
  assert "last good checkpoint" in str(err.value)
  checkpoints = tmp_path / "run" / "checkpoints"
  for step_dir in (p for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.exists() else []:
    params = ocp.StandardCheckpointer().restore(step_dir / "state")["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_grain_workers_give_the_same_batches(tmp_path, tiny_dataset):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain reads absl flags; lgg_jax.main parses them
    flags.FLAGS.mark_as_parsed()
  config = tiny_config(tmp_path, manual_dir=tiny_dataset.parent)
  config.augment.name = "distortions"
  data = pipeline.load(config)
  serial = pipeline.train_dataset(data, config)
  config.data.num_workers = 2
  parallel = pipeline.train_dataset(data, config)
  for _ in range(3):
    a, b = next(serial), next(parallel)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
