import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lgg_jax import models
from lgg_jax.models import unet


def _config(**kw):
  return ml_collections.ConfigDict({**dict(name="unet", base_width=64, depth=4, align_corners=True), **kw})


def test_unet_full_size_parameter_count():
  model = models.create(_config(), rngs=nnx.Rngs(0))
  assert models.count_params(model) == 7_782_913  # the seed's nn.Module, counted
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
  assert len(convs) == 15


@pytest.mark.parametrize("depth,size", [(2, 16), (3, 32), (4, 24)])
def test_unet_output_shape(depth, size):
  model = models.create(_config(base_width=4, depth=depth), rngs=nnx.Rngs(0))
  out = model(jnp.ones((2, size, size, 3)))
  assert out.shape == (2, size, size, 1) and out.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params():
  model = models.create(_config(base_width=4, depth=2), compute_dtype="bfloat16", rngs=nnx.Rngs(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert model(jnp.ones((1, 8, 8, 3))).dtype == jnp.float32


def test_unknown_model_is_named():
  with pytest.raises(ValueError, match="unknown model 'vnet'"):
    models.create(_config(name="vnet"), rngs=nnx.Rngs(0))


def test_upsample_align_corners_matches_torch_semantics():
  # torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True) on
  # [[0, 1]] gives [0, 1/3, 2/3, 1] along that axis: the corners stay put.
  x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  y = unet.upsample2x(x)[0, 0, :, 0]
  np.testing.assert_allclose(y, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
  # Half-pixel convention differs (what jax.image.resize does).
  assert not np.allclose(unet.upsample2x(x, align_corners=False)[0, 0, :, 0], y)
