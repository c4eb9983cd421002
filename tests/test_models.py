import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import default
from lgg_jax import models
from lgg_jax.models import layers


def _config(name="unet", **kw):
  """A model block: `kw` are the U-Net's settings."""
  return ml_collections.ConfigDict(
      {"name": name, "conv_impl": "auto",
       "unet": {**dict(base_width=64, depth=4, align_corners=True, norm="none"), **kw}})


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
  with pytest.raises(ValueError, match="config.model.name: unknown value 'vnet'"):
    models.create(_config(name="vnet"), rngs=nnx.Rngs(0))


def test_upsample_align_corners_matches_torch_semantics():
  # torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True) on
  # [[0, 1]] gives [0, 1/3, 2/3, 1] along that axis: the corners stay put.
  x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  y = layers.upsample2x(x)[0, 0, :, 0]
  np.testing.assert_allclose(y, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
  # Half-pixel convention differs (what jax.image.resize does).
  assert not np.allclose(layers.upsample2x(x, align_corners=False)[0, 0, :, 0], y)


def _full_config(name):
  config = default.get_config().model
  config.name = name
  return config


@pytest.mark.parametrize("name,count", [("unet", 7_782_913), ("fpn", 25_238_593),
                                        ("resnext_unet", 30_947_777)])
def test_full_size_parameter_counts(name, count):
  # unet and fpn: the seed notebook's modules; resnext_unet: the PyTorch peer
  # in ../shared/peers/ (torchvision resnext50_32x4d encoder + seed decoder).
  model = nnx.eval_shape(lambda: models.create(_full_config(name), rngs=nnx.Rngs(0)))
  assert models.count_params(model) == count


def _tiny(name):
  config = _full_config(name)
  config.unet.base_width = 4
  config.fpn.update(base_width=4, pyramid_channels=8, segmentation_channels=8, group_norm_groups=4)
  config.resnext_unet.update(stem_width=8, blocks=(1, 2, 1, 1), groups=4, width_per_group=16)
  return config


@pytest.mark.parametrize("name", ["unet", "fpn", "resnext_unet"])
def test_tiny_models_map_images_to_one_logit_per_pixel(name):
  model = models.create(_tiny(name), rngs=nnx.Rngs(0))
  model = nnx.view(model, use_running_average=True, raise_if_not_found=False)
  out = model(jnp.ones((2, 64, 64, 3)))
  assert out.shape == (2, 64, 64, 1) and out.dtype == jnp.float32
  assert bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("name", ["unet", "fpn", "resnext_unet"])
def test_each_model_takes_exactly_the_sides_its_divisor_admits(name):
  """Three times the divisor maps to itself; the divisor is no larger than
  the model needs (ResNeXt-UNet's said 32 and refused 48, which it takes)."""
  config = _tiny(name)
  divisor = models.input_divisor(config)
  model = nnx.view(models.create(config, rngs=nnx.Rngs(0)), use_running_average=True, raise_if_not_found=False)
  assert model(jnp.ones((1, 3 * divisor, 3 * divisor, 3))).shape == (1, 3 * divisor, 3 * divisor, 1)
  models.check(config, 3 * divisor)
  with pytest.raises(ValueError, match=f"must be divisible by {divisor}"):
    models.check(config, 3 * divisor + divisor // 2)
  try:  # half the divisor's multiple fails inside the model (or gives another size)
    half = model(jnp.ones((1, 3 * divisor // 2, 3 * divisor // 2, 3))).shape[1]
  except (TypeError, ValueError):
    half = None
  assert half != 3 * divisor // 2


@pytest.mark.parametrize("name,change,message", [
    ("unet", {"depth": 0}, "config.model.unet.depth=0: at least 1"),
    ("resnext_unet", {"blocks": (1, 1, 1)}, r"config.model.resnext_unet.blocks=\(1, 1, 1\): four layers"),
    ("resnext_unet", {"blocks": (1, 0, 1, 1)}, "four layers of at least one block"),
    ("resnext_unet", {"width_per_group": 3}, "stem_width x width_per_group .* multiple of 64"),
])
def test_bad_model_shapes_are_refused_at_config_time_naming_the_setting(name, change, message):
  config = _tiny(name)
  config[name].update(change)
  with pytest.raises(ValueError, match=message):
    models.check(config, 64)


@pytest.mark.parametrize("groups,channels,stride", [(4, 32, 1), (8, 32, 2), (32, 256, 1)])
def test_grouped_conv_cpu_form_equals_feature_group_count(groups, channels, stride):
  rngs = nnx.Rngs(0)
  ref = layers.GroupedConv(channels, channels, 3, groups=groups, strides=stride, padding=1, impl="xla",
                           rngs=rngs)
  split = layers.GroupedConv(channels, channels, 3, groups=groups, strides=stride, padding=1,
                             impl="cpu", rngs=nnx.Rngs(1))
  split.kernel[...] = ref.kernel[...]
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, channels))

  def loss(module, x):
    return jnp.sum(jnp.sin(module(x)))

  np.testing.assert_allclose(split(x), ref(x), rtol=1e-5, atol=1e-5)
  g_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
  g_split = nnx.grad(loss, argnums=(0, 1))(split, x)
  np.testing.assert_allclose(g_split[0].kernel[...], g_ref[0].kernel[...], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_split[1], g_ref[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,cin,cout,strides,padding,size", [
    (1, 16, 32, (1, 1), ((0, 0), (0, 0)), (11, 13)),   # a dot
    (3, 16, 16, (1, 1), ((1, 1), (1, 1)), (96, 96)),   # kernel gradient over 6 bands of rows
    (3, 16, 16, (2, 2), ((1, 1), (1, 1)), (192, 191)),  # the same, strided
    (1, 32, 16, (2, 2), ((0, 0), (0, 0)), (11, 13)),   # strided dot (projection shortcut)
    (3, 16, 24, (1, 1), ((1, 1), (1, 1)), (11, 13)),
    (3, 24, 16, (2, 2), ((1, 1), (1, 1)), (11, 13)),
    (3, 16, 16, (2, 1), ((0, 2), (1, 0)), (11, 13)),   # uneven strides and padding
    (2, 16, 64, (1, 1), ((1, 1), (1, 1)), (11, 13)),   # the sub-pixel deconv's form
    (3, 16, 16, (1, 1), "SAME", (11, 13)),
    (7, 3, 16, (2, 2), ((3, 3), (3, 3)), (11, 13)),    # the stem
    (3, 16, 1, (1, 1), ((1, 1), (1, 1)), (11, 13)),    # a 1-channel head
])
def test_cpu_conv_equals_lax_conv_in_value_and_gradient(kernel, cin, cout, strides, padding, size):
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (1 if size[0] > 64 else 2, *size, cin))
  k = jax.random.normal(kk, (kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin)
  dims = ("NHWC", "HWIO", "NHWC")
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dims)
  ours = lambda x, k: layers.cpu_conv_general_dilated(x, k, strides, padding, dimension_numbers=dims)
  y = ref(x, k)
  np.testing.assert_allclose(ours(x, k), y, rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(kd, y.shape)
  g_ref = jax.vjp(ref, x, k)[1](dy)
  g_ours = jax.vjp(ours, x, k)[1](dy)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_conv_gradient_under_shard_map_equals_the_unsharded_one():
  """Data-parallel: replicated kernel, batch split over 8 devices, kernel
  gradient summed over them (the banded path, 96x96 images)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (8, 96, 96, 16))
  k = jax.random.normal(kk, (3, 3, 16, 8)) / 12
  dims = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, k, f: f(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
  loss = lambda k, x, f: jnp.sum(jnp.sin(conv(x, k, f)))

  def per_device(k, x):
    return jax.grad(lambda k: jax.lax.psum(loss(k, x, layers.cpu_conv_general_dilated), "data"))(k)
  P = jax.sharding.PartitionSpec
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
  x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
  expected = jax.grad(loss)(k, x, jax.lax.conv_general_dilated)
  # Sums of 8 x 96 x 96 float32 terms in another order: absolute error scales
  # with the gradient (entries up to ~500; jax 0.12 lands 1.8e-4 off on one).
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(sharded(k, x_sharded), expected, rtol=1e-4, atol=1e-6 * scale)


def test_transposed_conv_cpu_form_equals_xla_form():
  xla = layers.ConvTranspose2x(16, 24, impl="xla", rngs=nnx.Rngs(0))
  cpu = layers.ConvTranspose2x(16, 24, impl="cpu", rngs=nnx.Rngs(1))
  cpu.kernel[...], cpu.bias[...] = xla.kernel[...], jax.random.normal(jax.random.key(2), (24,))
  xla.bias[...] = cpu.bias[...]
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 16))
  np.testing.assert_allclose(cpu(x), xla(x), rtol=1e-5, atol=1e-5)
  assert cpu(x).shape == (2, 10, 14, 24)
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))
  g_xla, g_cpu = (nnx.grad(loss, argnums=(0, 1))(m, x) for m in (xla, cpu))
  np.testing.assert_allclose(g_cpu[0].kernel[...], g_xla[0].kernel[...], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_cpu[1], g_xla[1], rtol=1e-4, atol=1e-5)


def test_unknown_conv_impl_is_named():
  with pytest.raises(ValueError, match="config.model.conv_impl.*'gpu'"):
    layers.Conv(16, 16, 3, impl="gpu", rngs=nnx.Rngs(0))


def test_cpu_conv_bfloat16_gradient_matches_xla():
  x = jax.random.normal(jax.random.key(0), (2, 96, 96, 16))
  grads = []
  for impl in ("cpu", "xla"):
    conv = layers.Conv(16, 16, 3, impl=impl, padding=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    grads.append(nnx.grad(lambda m, x: jnp.sum(m(x).astype(jnp.float32) ** 2))(conv, x).kernel[...])
  assert grads[0].dtype == jnp.float32
  np.testing.assert_allclose(grads[0], grads[1], rtol=2e-2, atol=2e-2 * float(jnp.abs(grads[1]).max()))


@pytest.mark.parametrize("name", ["unet", "fpn", "resnext_unet"])
def test_eval_graphdefs_hash_so_probability_steps_compile_once(name):
  """Two members of one architecture (other weights; one built abstractly, as
  a checkpoint restore does) share one probability step, traced once."""
  from lgg_jax import inference, state
  built = [state.split_model(models.create(_tiny(name), rngs=nnx.Rngs(seed))) for seed in (0, 1)]
  abstract, _, _ = nnx.eval_shape(lambda: state.split_model(models.create(_tiny(name), rngs=nnx.Rngs(2))))
  graphdefs = [built[0][0]["eval"], built[1][0]["eval"], abstract["eval"]]
  assert graphdefs[1] == graphdefs[0] and graphdefs[2] == graphdefs[0]
  assert hash(graphdefs[1]) == hash(graphdefs[0]) and hash(graphdefs[2]) == hash(graphdefs[0])
  step = inference.make_probability_step(graphdefs[0], "none", 32)
  assert all(inference.make_probability_step(g, "none", 32) is step for g in graphdefs[1:])
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  out = [step({"params": params, "model_state": model_state}, images) for _, params, model_state in built]
  assert step._cache_size() == 1
  assert not np.allclose(out[0], out[1])  # the two members' own weights were used


@pytest.mark.parametrize("name", ["unet", "fpn", "resnext_unet"])
def test_models_take_neighbouring_slices_as_channels(name):
  """2.5-D: 3 * (2k + 1) input channels; only the first convolution grows."""
  base = models.count_params(models.create(_tiny(name), rngs=nnx.Rngs(0)))
  model = models.create(_tiny(name), in_channels=9, rngs=nnx.Rngs(0))
  model = nnx.view(model, use_running_average=True, raise_if_not_found=False)
  assert model(jnp.ones((2, 64, 64, 9))).shape == (2, 64, 64, 1)
  first = {"unet": 3 * 3 * 4, "fpn": 3 * 3 * 4, "resnext_unet": 7 * 7 * 8}[name]  # kernel taps x width
  assert models.count_params(model) - base == 6 * first


def test_recipe_configs_parameter_counts():
  """The recipes' U-Nets: 9 input channels (2.5-D) and BatchNorm after every conv; the README's
  command 1 (3 channels, no norm); the crop recipe's deep-supervision heads, (32 + 1) + (64 + 1)."""
  from configs import recipe, recipe_cpu, recipe_crops_cpu, unet_cpu
  from lgg_jax import state
  for get_config, count in ((recipe_cpu.get_config, 488_865), (recipe.get_config, 7_789_185),
                            (unet_cpu.get_config, 487_297), (recipe_crops_cpu.get_config, 488_963)):
    model = nnx.eval_shape(lambda: state.create_model(get_config()))
    assert models.count_params(model) == count
