"""The config's layout: parts built by name from their own blocks, and configs
written in an older layout (runs, exports, the shipped ensemble) still load."""

import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from ml_collections.config_flags import config_path

from configs import default
from lgg_jax import cli, config_checks, config_defaults, models, optimizers, registry

REPO = pathlib.Path(__file__).resolve().parents[1]
# config.json of the shipped ensemble's fold 0, as written before the model
# blocks and inference.threshold (layout 1: model.base_width, model.resnext, threshold).
LAYOUT_1 = pathlib.Path(__file__).parent / "data" / "config_layout_1.json"


def test_a_config_of_the_old_layout_loads_with_every_value_in_its_new_place():
  saved = json.loads(LAYOUT_1.read_text())
  config = config_defaults.from_saved(saved, str(LAYOUT_1))
  flat = config_defaults.flatten(saved)
  assert "model.base_width" in flat and "threshold" in flat and "model.resnext.blocks" in flat
  for old_key, value in flat.items():
    for new_key in config_defaults.renamed(old_key) or (old_key,):
      assert config_path.get_value(new_key, config) == value, (old_key, new_key)
  assert config.model.unet.base_width == 16 and config.model.unet.norm == "batch"
  assert config.model.resnext_unet.blocks == (3, 4, 6, 3) and config.inference.threshold == 0.5
  # Settings added since the file was written take the defaults that keep its behaviour.
  assert config.model.unet.deep_supervision is False and config.data.crop_size == 0
  assert config.inference.component_rank == "volume"
  # Nothing of the old layout is left over.
  assert "base_width" not in config.model and "resnext" not in config.model and "threshold" not in config
  assert config.optimizer.adamw.weight_decay == flat["optimizer.weight_decay"]
  assert config.schedule.name == flat["optimizer.schedule"] and config.loss.dice_bce.smooth == flat["loss.smooth"]
  assert not {"b1", "b2", "weight_decay", "momentum", "schedule", "warmup_steps"} & set(config.optimizer)
  assert not {"bce_weight", "dice_weight", "smooth"} & set(config.loss)


def test_a_key_older_versions_wrote_and_none_reads_is_dropped():
  saved = json.loads(LAYOUT_1.read_text())
  saved["model"]["resnext"]["grouped_conv"] = "bundled"  # written by versions before the conv_impl setting
  config = config_defaults.from_saved(saved, str(LAYOUT_1))
  assert "grouped_conv" not in config.model.resnext_unet


def test_a_saved_key_no_version_had_is_an_error_naming_the_file():
  saved = json.loads(LAYOUT_1.read_text())
  saved["model"]["dept"] = 3
  with pytest.raises(ValueError, match=r"config_layout_1.json.*dept"):
    config_defaults.from_saved(saved, str(LAYOUT_1))


def test_overrides_are_checked_and_renamed_keys_name_their_replacement():
  config = cli.override(default.get_config(), {"model.unet.depth": 3, "data.crop_size": 64})
  assert config.model.unet.depth == 3 and config.data.crop_size == 64 and not config.is_locked
  with pytest.raises(KeyError, match="model.unet.dept"):
    cli.override(default.get_config(), {"model.unet.dept": 3})
  with pytest.raises(KeyError, match=r"'model.depth': renamed; use model.unet.depth"):
    cli.override(default.get_config(), {"model.depth": 3})
  with pytest.raises(KeyError, match="use model.resnext_unet.groups"):
    cli.override(default.get_config(), {"model.resnext.groups": 8})
  with pytest.raises(ValueError, match=r"'model.unet.depth'='3'"):  # a value of another type
    cli.override(default.get_config(), {"model.unet.depth": "3"})


def test_the_command_line_names_the_replacement_of_a_renamed_flag(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lgg_jax.main", "--config=configs/unet.py",
                           f"--workdir={tmp_path}", "--config.model.base_width=8"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "--config.model.base_width was renamed: use --config.model.unet.base_width and/or " \
         "--config.model.fpn.base_width" in result.stderr
  assert not any(tmp_path.iterdir())


def test_an_unknown_name_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"config.model.name: unknown value 'vnet' \(known: unet, fpn, resnext_unet\)"):
    registry.get("model", "vnet")
  with pytest.raises(ValueError, match=r"config.schedule.name: unknown value 'step' \(known: cosine, constant\)"):
    registry.check("schedule", "step")


def test_a_misspelt_model_setting_is_named_at_construction_and_at_config_time():
  config = default.get_config().model
  config.unet.dept = 3
  with pytest.raises(ValueError, match=r"config.model.unet: dept is not a setting of UNet \(its settings: base_width"):
    models.create(config, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="config.model.unet: dept is not a setting of UNet"):
    models.check(config, 256)


@pytest.mark.parametrize("name", registry.names("model"))
def test_each_model_block_holds_exactly_its_constructors_settings_with_its_defaults(name):
  block = default.get_config().model[name]
  parameters = registry.signature(registry.get("model", name)).parameters
  assert {key: parameters[key].default for key in block} == dict(block)
  shared = {"self", "in_channels", "conv_impl", "dtype", "rngs", "axis_name"}
  assert set(parameters) - shared == set(block)


# Parts other than models: (registry part, the config block holding the named blocks, the
# arguments the builder sets itself).
BLOCK_PARTS = (("loss", "loss", ()), ("optimizer", "optimizer", ("learning_rate",)),
               ("schedule", "schedule", ("learning_rate", "total_steps", "warmup_steps")))


@pytest.mark.parametrize("part,parent,fixed", BLOCK_PARTS)
def test_each_loss_optimizer_and_schedule_block_holds_exactly_its_builders_settings(part, parent, fixed):
  config = default.get_config()[parent]
  for name in registry.names(part):
    parameters = registry.signature(registry.get(part, name)).parameters
    assert {key: parameters[key].default for key in config[name]} == dict(config[name]), name
    assert set(parameters) - set(fixed) == set(config[name]), name


@pytest.mark.parametrize("block,key", [("loss.dice_bce", "smoth"), ("optimizer.adamw", "momentum"),
                                       ("schedule.cosine", "final_lr")])
def test_a_misspelt_or_foreign_part_setting_is_named_when_the_run_is_checked(block, key):
  config = default.get_config()
  parent, name = block.split(".")
  config[parent][name][key] = 0.1
  with pytest.raises(ValueError, match=rf"config.{block}: {key} is not a setting of {name} \(its settings: "):
    config_checks.validate_config(config, device_count=1, process_count=1)


def test_only_the_named_parts_block_is_read():
  config = default.get_config()
  config.optimizer.name, config.optimizer.grad_clip_norm, config.optimizer.learning_rate = "sgd", 0.0, 0.1
  config.schedule.name, config.schedule.warmup_steps = "constant", 0
  config.optimizer.adamw.b1 = 0.5  # another optimizer's block: ignored, as model blocks are
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.full(3, 2.0)}
  steps = {}
  for momentum in (0.9, 0.0):
    config.optimizer.sgd.momentum = momentum
    tx, _ = optimizers.make_optimizer(config, total_steps=10)
    steps[momentum] = tx.update(grads, tx.init(params), params)[0]["w"]
  np.testing.assert_allclose(steps[0.0], -0.1 * 2.0 * np.ones(3), rtol=1e-6)  # plain SGD
  np.testing.assert_allclose(steps[0.9], -0.1 * 2.0 * 1.9 * np.ones(3), rtol=1e-6)  # Nesterov: g + 0.9 g


class TinyNet(nnx.Module):
  """The README's example of adding a model: one class, one registry line."""

  @staticmethod
  def input_divisor(**_):
    return 1

  def __init__(self, *, in_channels=3, width=4, conv_impl="auto", dtype=jnp.float32, rngs):
    del conv_impl
    self.conv = nnx.Conv(in_channels, width, (3, 3), dtype=dtype, rngs=rngs)
    self.head = nnx.Conv(width, 1, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.conv(x)))


def test_a_model_added_by_one_registry_line_and_its_block_is_built(monkeypatch):
  monkeypatch.setitem(registry.PARTS["model"], "tiny_net", f"{__name__}:TinyNet")
  config = default.get_config()
  config.model.name = "tiny_net"
  config.model.tiny_net = ml_collections.ConfigDict({"width": 2})
  models.check(config.model, 32)
  model = models.create(config.model, in_channels=9, rngs=nnx.Rngs(0))
  assert model(jnp.ones((1, 8, 8, 9))).shape == (1, 8, 8, 1) and model.conv.out_features == 2


def test_the_command_line_and_data_layers_load_no_model_optimizer_or_trainer():
  code = ("import sys, lgg_jax.cli, lgg_jax.registry, lgg_jax.data.builder, lgg_jax.data.pipeline\n"
          "loaded = [m for m in ('lgg_jax.steps', 'lgg_jax.state', 'lgg_jax.models', 'lgg_jax.train', "
          "'lgg_jax.optimizers', 'lgg_jax.inference', 'optax', 'flax') if m in sys.modules]\n"  # grain loads orbax
          "print('loaded', loaded)")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "loaded []"
