"""Training on crops of the full-resolution slices: where crops sit, both input
paths giving the same batches, config-time errors, and a model trained on
crops segmenting whole 256x256 slices."""

import jax
import numpy as np
import pytest

from lgg_jax import baselines, cli, config_checks, inference, loading, models, parallel, registry, train
from lgg_jax.data import crops, device_pipeline, pipeline
from conftest import tiny_config

CROP, CONTEXT = 32, 8


def crop_config(tmp_path, manual_dir):
  config = tiny_config(tmp_path, manual_dir=manual_dir)
  config.data.image_size = 256
  config.data.crop_size = CROP
  config.data.crop_context = CONTEXT
  config.data.normalization = "patient"
  config.data.neighbours = 1
  config.data.tumour_fraction = 0.5
  return config


@pytest.fixture(scope="module")
def resident(tmp_path_factory, tiny_dataset):
  config = crop_config(tmp_path_factory.mktemp("crops"), tiny_dataset.parent)
  data = pipeline.load(config)
  return config, pipeline.resident(data, data.split.train, config.data)


def test_tumour_positions_get_crops_holding_tumour_and_the_rest_lie_anywhere(resident):
  config, res = resident
  order = pipeline.train_order(res, config)
  plan = pipeline.crop_plan(res, order, config)
  positions = np.arange(40 * config.global_batch_size)
  rows = np.array([order.row(p) for p in positions])
  origins = plan.origins(rows, positions)
  assert origins.min() >= 0 and origins.max() <= 256 - CROP
  tumour = np.array([order.is_tumour_position(p) for p in positions])
  assert tumour.mean() == pytest.approx(0.5)
  for row, (y, x) in zip(rows[tumour], origins[tumour]):
    assert res.masks[row][y:y + CROP, x:x + CROP].any()
  # Uniform crops spread over the slice: both halves of the range are used on each axis.
  free = origins[~tumour]
  assert (free < (256 - CROP) // 2).any(axis=0).all() and (free >= (256 - CROP) // 2).any(axis=0).all()
  # A pure function of (seed, position): a fresh plan places every crop again the same.
  again = pipeline.crop_plan(res, pipeline.train_order(res, config), config)
  np.testing.assert_array_equal(again.origins(rows, positions), origins)
  config.seed += 1
  other = pipeline.crop_plan(res, pipeline.train_order(res, config), config)
  config.seed -= 1
  assert not np.array_equal(other.origins(rows, positions), origins)


def test_cut_window_pads_with_zeros_beyond_the_slice():
  image = np.arange(10 * 10 * 2).reshape(10, 10, 2) + 1
  window = crops.cut_window(image, (0, 6), 4, 2)
  assert window.shape == (8, 8, 2)
  assert (window[:2] == 0).all() and (window[:, 6:] == 0).all()
  np.testing.assert_array_equal(crops.centre(window, 4, 2), image[0:4, 6:10])


def test_without_augmentation_the_device_crops_are_the_host_crops(resident):
  config, res = resident
  config = config.copy_and_resolve_references()
  config.augment.name = "none"
  mesh = parallel.make_mesh()
  data = device_pipeline.put_on_devices(res, mesh)
  batches = device_pipeline.host_batches(res, config)
  host = pipeline.train_dataset(res, config)
  prepare = jax.jit(device_pipeline.make_prepare(config))
  for _ in range(2):
    batch = next(batches)
    made, expected = prepare(data, batch), next(host)
    assert made["image"].shape == (config.global_batch_size, CROP, CROP, 9)
    np.testing.assert_allclose(made["image"], expected["image"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(made["mask"], expected["mask"])
    np.testing.assert_array_equal(res.records[batch["row"]], expected["index"])


def test_the_first_crop_is_its_slices_pixels_at_its_origin(resident):
  config, res = resident
  config = config.copy_and_resolve_references()
  config.augment.name = "none"
  order = pipeline.train_order(res, config)
  plan = pipeline.crop_plan(res, order, config)
  first = next(pipeline.train_dataset(res, config))
  for r in range(config.global_batch_size):
    row = order.row(r)
    y, x = plan.origin(row, r)
    np.testing.assert_array_equal(first["mask"][r, ..., 0], res.masks[row][y:y + CROP, x:x + CROP] > 0)


@pytest.mark.parametrize("change, message", [
    ({"data.image_size": 128}, "needs config.data.image_size=256"),
    ({"data.crop_size": 300}, "larger than"),
    ({"data.crop_size": 34}, "divisible by 4"),
    ({"data.normalization": "slice"}, "normalization"),
    ({"data.crop_context": -1}, "crop_context"),
])
def test_bad_crop_settings_fail_at_config_time_naming_the_setting(tmp_path, change, message):
  config = cli.override(crop_config(tmp_path, ""), change)
  with pytest.raises(ValueError, match=message):
    config_checks.validate_config(config, 1, 1)


def test_every_model_takes_whole_slices_and_crops_of_its_divisor(tmp_path):
  for name in registry.names("model"):
    config = crop_config(tmp_path, "")
    config.model.name = name
    divisor = models.input_divisor(config.model)
    assert 256 % divisor == 0
    config.data.crop_size = divisor * 2
    config_checks.validate_config(config, 1, 1)


def test_a_model_trained_on_crops_beats_the_flair_threshold_on_whole_held_out_slices(tmp_path):
  config = crop_config(tmp_path, "")
  config.data.synthetic.update(num_patients=16, min_slices=10, max_slices=12)
  config.data.crop_size, config.data.crop_context = 64, 16
  config.model.unet.base_width, config.model.unet.depth = 8, 4
  config.data.neighbours = 0
  config.augment.name = "none"
  config.num_epochs = 5
  config.optimizer.learning_rate = 3e-3
  config.split.num_folds = 5
  config.write_report = False
  summary = train.train_and_evaluate(config, tmp_path / "run")
  member = loading.member_from_run(tmp_path / "run")
  assert member.config.data.crop_size == 64
  data = pipeline.load(config)
  volume, truth = data.volume(data.patients(data.split.test)[0])
  assert inference.Predictor(member).predict_volume(volume).shape == truth.shape == (len(volume), 256, 256)
  train_vols = [data.volume(p) for p in data.patients(data.split.train)]
  threshold, _ = baselines.fit_threshold([v for v, _ in train_vols], [m for _, m in train_vols])
  test_vols = [data.volume(p) for p in data.patients(data.split.test)]
  baseline = baselines.patient_dice([v for v, _ in test_vols], [m for _, m in test_vols], threshold).mean()
  assert summary["test_dice"] > baseline + 0.2, (summary["test_dice"], baseline)
