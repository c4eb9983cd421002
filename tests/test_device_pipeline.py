"""The on-device input path: the same examples as the host path's building
blocks, a pure function of (seed, position), and 1 device equal to 8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgg_jax import optimizers, parallel, state, steps, train
from lgg_jax.data import device_pipeline, pipeline, preprocess
from conftest import tiny_config


@pytest.fixture(scope="module")
def resident(tmp_path_factory, tiny_dataset):
  config = tiny_config(tmp_path_factory.mktemp("device"), manual_dir=tiny_dataset.parent)
  config.data.neighbours = 1
  config.data.normalization = "patient"
  config.data.tumour_fraction = 0.33  # the recipe's sampling, 2.5-D and normalisation
  data = pipeline.load(config)
  return config, pipeline.resident(data, data.split.train, config.data)


@pytest.mark.parametrize("mode", preprocess.NORMALIZATIONS)
def test_normalisation_equals_the_host_form(mode):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 16, 16, 9)).astype(np.float32)
  stats = np.stack([preprocess.patient_statistics(rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8))
                    for _ in range(3)])
  host = np.stack([preprocess.normalise(im, mode, s) for im, s in zip(images, stats)])
  device = jax.jit(lambda im, s: preprocess.normalise(im, mode, s, xp=jnp))(images, stats)
  np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-5)


def test_missing_sequences_copy_flair_into_pre_and_post_channels():
  images = np.random.default_rng(0).standard_normal((64, 4, 4, 9)).astype(np.float32)
  key = jax.random.key(0)
  assert np.array_equal(device_pipeline.missing_sequences(key, images, np.arange(64), 0.0), images)
  out = np.asarray(device_pipeline.missing_sequences(key, images, np.arange(64), 1.0))
  for sample, original in zip(out, images):
    np.testing.assert_array_equal(sample[..., 1::3], original[..., 1::3])  # FLAIR untouched
    pre = np.array_equal(sample[..., 0::3], original[..., 1::3])
    post = np.array_equal(sample[..., 2::3], original[..., 1::3])
    assert pre or post
    if not pre:
      np.testing.assert_array_equal(sample[..., 0::3], original[..., 0::3])
    if not post:
      np.testing.assert_array_equal(sample[..., 2::3], original[..., 2::3])
  host = pipeline._MissingSequences(1.0)({"image": images[0]}, np.random.default_rng(0))["image"]
  assert any(np.array_equal(host[..., c::3], images[0][..., 1::3]) for c in (0, 2))


def test_without_augmentation_the_device_batch_is_the_host_batch(resident):
  config, res = resident
  config = config.copy_and_resolve_references()
  config.augment.name = "none"
  mesh = parallel.make_mesh()
  data = device_pipeline.put_on_devices(res, mesh)
  order = pipeline.train_order(res, config)
  batch = next(device_pipeline.HostBatches(order))
  made = jax.jit(device_pipeline.make_prepare(config))(data, batch)
  host = next(pipeline.train_dataset(res, config))
  np.testing.assert_allclose(made["image"], host["image"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(made["mask"], host["mask"])
  np.testing.assert_array_equal(res.records[batch["row"]], host["index"])


def test_augmented_batches_are_a_function_of_seed_and_position_and_augment_the_batch(resident):
  """(Alignment of masks with images: test_device_augment's blob tests.)"""
  config, res = resident
  config = config.copy_and_resolve_references()
  config.augment.name = "nnunet"
  config.augment.missing_sequence_probability = 0.5
  data = device_pipeline.put_on_devices(res, parallel.make_mesh())
  prepare = jax.jit(device_pipeline.make_prepare(config))
  batches = device_pipeline.HostBatches(pipeline.train_order(res, config))
  first = [prepare(data, next(batches)) for _ in range(2)]
  again = device_pipeline.HostBatches(pipeline.train_order(res, config))
  again.set_state({"step": 1})
  np.testing.assert_array_equal(prepare(data, next(again))["image"], first[1]["image"])
  masks = np.asarray(first[0]["mask"])
  assert set(np.unique(masks)) <= {0.0, 1.0}
  # Against the same rows unaugmented: with augment "none" every assertion above held too.
  plain_config = config.copy_and_resolve_references()
  plain_config.augment.name, plain_config.augment.missing_sequence_probability = "none", 0.0
  plain = jax.jit(device_pipeline.make_prepare(plain_config))(
      data, next(device_pipeline.HostBatches(pipeline.train_order(res, config))))
  changed = [not np.allclose(a, b) for a, b in zip(np.asarray(first[0]["image"]), np.asarray(plain["image"]))]
  moved = [not np.array_equal(a, b) for a, b in zip(masks, np.asarray(plain["mask"]))]
  assert sum(changed) >= len(changed) // 2 and any(moved)


def test_on_device_step_on_one_device_equals_eight(resident, tmp_path):
  config, res = resident
  config = config.copy_and_resolve_references()
  config.augment.name = "nnunet"
  config.optimizer.name, config.optimizer.grad_clip_norm = "sgd", 0.0
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    tx, _ = optimizers.make_optimizer(config, total_steps=10)
    graphdefs, train_state = state.create_state(config, tx)
    train_state = parallel.replicate(train_state, mesh)
    data = device_pipeline.put_on_devices(res, mesh)
    step = steps.make_train_step(graphdefs["train"], tx, config, mesh, prepare=device_pipeline.make_prepare(config))
    batches = device_pipeline.HostBatches(pipeline.train_order(res, config))
    for _ in range(2):
      train_state, stats = step(train_state, parallel.global_batch(next(batches), mesh), data)
    results.append((jax.device_get(train_state["params"]), float(stats["loss"])))
  (p1, l1), (p8, l8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_on_device_training_resumes_exactly(tmp_path, resident):
  import json
  import shutil
  config = tiny_config(tmp_path)
  config.data.on_device = True
  config.augment.name = "seed"
  config.num_epochs = 2
  full = tmp_path / "full"
  train.train_and_evaluate(config, full)
  interrupted = tmp_path / "interrupted"
  shutil.copytree(full, interrupted)
  steps_saved = sorted(int(p.name) for p in (interrupted / "checkpoints").iterdir() if p.name.isdigit())
  shutil.rmtree(interrupted / "checkpoints" / str(steps_saved[-1]))
  records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
  (interrupted / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:1]))
  train.train_and_evaluate(config, interrupted)
  again = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
  assert again == records
