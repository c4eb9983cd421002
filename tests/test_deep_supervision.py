"""Deep supervision (config.model.unet.deep_supervision): the U-Net's auxiliary
outputs, their loss, other models rejecting it, and inference and exports
without the auxiliary heads."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file

from configs import default
from lgg_jax import Segmenter, export, losses, models, train
from conftest import tiny_config


def _model_config(**kw):
  """A model block: `kw` are the U-Net's settings."""
  return ml_collections.ConfigDict({"name": "unet", "conv_impl": "auto", "unet": {
      **dict(base_width=4, depth=4, align_corners=True, norm="none", deep_supervision=False), **kw}})


def _loss_config():
  return default.get_config().loss


def test_auxiliary_outputs_at_each_lower_decoder_level_and_the_rest_initialised_as_without():
  plain = models.create(_model_config(), rngs=nnx.Rngs(0))
  supervised = models.create(_model_config(deep_supervision=True), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  logits, auxiliary = supervised(x, auxiliary=True)
  assert logits.shape == (2, 32, 32, 1)
  assert [a.shape for a in auxiliary] == [(2, 16, 16, 1), (2, 8, 8, 1)]
  # Two 1x1 heads (width 8 and 16, one logit each) and nothing else added.
  assert models.count_params(supervised) - models.count_params(plain) == (8 + 1) + (16 + 1)
  plain_params = nnx.to_pure_dict(nnx.state(plain, nnx.Param))
  supervised_params = nnx.to_pure_dict(nnx.state(supervised, nnx.Param))
  del supervised_params["auxiliary_heads"]
  jax.tree.map(np.testing.assert_array_equal, plain_params, supervised_params)
  np.testing.assert_array_equal(supervised(x), plain(x))
  np.testing.assert_array_equal(logits, plain(x))
  with pytest.raises(ValueError, match="without deep supervision"):
    plain(x, auxiliary=True)


def test_deep_supervision_loss_weights_halve_per_level_and_targets_are_downsampled():
  np.testing.assert_allclose(losses.deep_supervision_weights(2), np.array([4, 2, 1]) / 7, rtol=1e-6)
  rng = np.random.default_rng(0)
  masks = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
  logits = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
  auxiliary = [jnp.asarray(rng.standard_normal((2, 4, 4, 1)), jnp.float32),
               jnp.asarray(rng.standard_normal((2, 2, 2, 1)), jnp.float32)]
  cfg = _loss_config()
  got = losses.deep_supervision_loss(logits, auxiliary, jnp.asarray(masks), cfg)
  # Nearest-neighbour targets: every 2nd (4th) pixel, at offset 1 (2) for the half-pixel centres.
  targets = [masks[:, 1::2, 1::2], masks[:, 2::4, 2::4]]
  expected = (4 * losses.per_sample_loss(logits, masks, cfg)
              + 2 * losses.per_sample_loss(auxiliary[0], targets[0], cfg)
              + losses.per_sample_loss(auxiliary[1], targets[1], cfg)) / 7
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert set(np.unique(np.asarray(jax.image.resize(masks, (2, 4, 4, 1), "nearest")))) <= {0.0, 1.0}
  np.testing.assert_allclose(losses.deep_supervision_loss(logits, [], jnp.asarray(masks), cfg),
                             losses.per_sample_loss(logits, masks, cfg), rtol=1e-6)


@pytest.mark.parametrize("name,model_class", [("fpn", "FPN"), ("resnext_unet", "ResNeXtUNet")])
def test_other_models_reject_deep_supervision_by_name(name, model_class):
  config = default.get_config().model
  config.name = name
  config[name].deep_supervision = True
  with pytest.raises(ValueError, match=f"config.model.{name}: deep_supervision is not a setting of {model_class} "):
    models.check(config, 64)


def test_auxiliary_heads_train_and_stay_out_of_inference_and_exports(tmp_path):
  config = tiny_config(tmp_path)
  config.model.unet.deep_supervision = True
  config.model.unet.depth = 4
  config.data.image_size = 32
  config.write_report = False
  summary = train.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(summary["test_dice"])
  from lgg_jax import state
  restored = state.restore_variables(tmp_path / "run")[2]
  assert "auxiliary_heads" not in restored["params"]
  out = export.export_run(tmp_path / "run", tmp_path / "export", forward=False)
  tensors = load_file(str(out / "weights.safetensors"))
  assert tensors and not any("auxiliary" in key for key in tensors)
  # The heads did train: the checkpoint holds them, moved from their initial values.
  import orbax.checkpoint as ocp
  path, step = state.checkpoint_path(tmp_path / "run", "best")
  assert step == summary["best_step"]
  saved = ocp.StandardCheckpointer().restore(path)
  initial = nnx.to_pure_dict(nnx.state(state.create_model(config), nnx.Param))["auxiliary_heads"]
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(saved["params"]["auxiliary_heads"]),
                                                    jax.tree.leaves(initial)))
  rng = np.random.default_rng(0)
  volume = rng.integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
  np.testing.assert_allclose(Segmenter.load(out).predict(volume), Segmenter.load(tmp_path / "run").predict(volume),
                             atol=1e-6)


def test_deep_supervision_changes_the_gradient_only_through_the_auxiliary_loss():
  """With the auxiliary weights' share, the main head's gradient is the plain loss's times its weight."""
  config = _model_config(deep_supervision=True, norm="none")
  model = models.create(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  masks = (jax.random.uniform(jax.random.key(2), (2, 16, 16, 1)) > 0.7).astype(jnp.float32)

  def loss(p, supervised):
    m = nnx.merge(graphdef, p)
    if supervised:
      logits, aux = m(x, auxiliary=True)
      return losses.deep_supervision_loss(logits, aux, masks, _loss_config()).mean()
    return losses.per_sample_loss(m(x), masks, _loss_config()).mean()

  gradient = jax.jit(jax.grad(loss), static_argnums=1)  # eager, each op would compile on its own
  with_aux = gradient(params, True)
  plain = gradient(params, False)
  np.testing.assert_allclose(with_aux["head"]["kernel"].value, 4 / 7 * plain["head"]["kernel"].value,
                             rtol=1e-4, atol=1e-7)
  assert optax.tree.norm(with_aux["auxiliary_heads"]) > 0
