"""Numerical equivalence with torchvision / torch (optional `torch` extra; CI installs it)."""

import numpy as np
import pytest

from conftest import IN_CI, import_or_skip

torch = import_or_skip("torch", "the optional `torch` extra; CI installs it")


def _import_torchvision():
  # torchvision's PyPI wheel beside a CPU torch build fails on import until its
  # operator schemas exist; define them (we never call these operators).
  try:
    import torchvision
    return torchvision
  except RuntimeError:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_torchvision.lib = lib  # keep the definitions alive
    import torchvision
    return torchvision



import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lgg_jax.models import resnext, weights  # noqa: E402


@pytest.fixture(scope="module")
def tv_model():
  try:
    tv = _import_torchvision()
  except ImportError as e:
    if IN_CI:
      pytest.fail(f"torchvision is not installed ({e}); CI=true needs it", pytrace=False)
    pytest.skip(f"torchvision is not installed ({e})")
  torch.manual_seed(0)
  model = tv.models.resnext50_32x4d(weights=None)
  # Random BatchNorm statistics and affine terms, so BN is really tested.
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.normal_(1, 0.1)
        m.bias.normal_(0, 0.1)
  return model.eval()


def _rel(a, b):
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("conv_impl", ["cpu", "xla"])
def test_encoder_matches_torchvision_layer_by_layer(tv_model, conv_impl):
  encoder = resnext.ResNeXtEncoder(conv_impl=conv_impl, rngs=nnx.Rngs(0))
  state = {k: v.detach().numpy() for k, v in tv_model.state_dict().items()}
  weights.load_encoder(encoder, state)
  encoder = nnx.view(encoder, use_running_average=True)
  x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    t = tv_model.relu(tv_model.bn1(tv_model.conv1(torch.from_numpy(x))))
    expected = [t.numpy()]
    for layer in (tv_model.layer1, tv_model.layer2, tv_model.layer3, tv_model.layer4):
      t = layer(t)
      expected.append(t.numpy())
  ours = jnp.asarray(x.transpose(0, 2, 3, 1))
  stem = nnx.relu(encoder.bn1(encoder.conv1(ours)))
  got = [np.asarray(stem)] + [np.asarray(f) for f in encoder(ours)]
  for name, g, e in zip(["stem", "layer1", "layer2", "layer3", "layer4"], got, expected):
    assert g.shape == e.transpose(0, 2, 3, 1).shape, name
    assert _rel(g, e.transpose(0, 2, 3, 1)) <= 1e-4, name


def test_pth_and_safetensors_files_load_and_bad_files_are_named(tv_model, tmp_path):
  state = tv_model.state_dict()
  pth = tmp_path / "resnext50_32x4d.pth"
  torch.save(state, pth)
  loaded = weights.read_state_dict(pth)
  assert set(loaded) == set(state)
  from safetensors.numpy import save_file
  st = tmp_path / "resnext50_32x4d.safetensors"
  save_file({k: np.ascontiguousarray(v.detach().numpy()) for k, v in state.items()}, str(st))
  from_st = weights.read_state_dict(st)
  for k in state:
    np.testing.assert_array_equal(from_st[k], loaded[k])
  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(st.read_bytes()[:len(st.read_bytes()) // 2])
  with pytest.raises(ValueError, match="truncated.safetensors: not a readable safetensors file"):
    weights.read_state_dict(truncated)

  encoder = resnext.ResNeXtEncoder(rngs=nnx.Rngs(0))
  broken = dict(loaded)
  del broken["layer2.0.conv1.weight"]
  broken["layer9.0.conv1.weight"] = np.zeros(3)
  broken["layer1.0.bn1.weight"] = np.zeros(7, np.float32)
  broken["layer1.0.conv2.weight"] = np.zeros((128, 4), np.float32)  # the wrong rank failed inside the transpose
  broken["conv1.weight"] = np.zeros(64, np.float32)
  with pytest.raises(ValueError) as err:
    weights.load_encoder(encoder, broken, source=str(pth))
  msg = str(err.value)
  assert str(pth) in msg and "layer2.0.conv1.weight" in msg and "layer9.0.conv1.weight" in msg
  assert "layer1.0.bn1.weight: file (7,)" in msg
  assert "layer1.0.conv2.weight: file (128, 4) (2-D) vs model 4-D" in msg and "conv1.weight: file (64,) (1-D)" in msg


@pytest.mark.parametrize("conv_impl", ["xla", "cpu"])
def test_decoder_block_matches_torch(tv_model, conv_impl):
  # The seed decoder: 1x1 conv, ReLU, ConvTranspose2d(k=4, s=2, p=1), 1x1 conv, ReLU.
  torch.manual_seed(1)
  cin, cout = 64, 16
  ref = torch.nn.Sequential(torch.nn.Conv2d(cin, cin // 4, 1), torch.nn.ReLU(),
                            torch.nn.ConvTranspose2d(cin // 4, cin // 4, 4, 2, 1),
                            torch.nn.Conv2d(cin // 4, cout, 1), torch.nn.ReLU()).eval()
  block = resnext.DecoderBlock(cin, cout, conv_impl=conv_impl, dtype=jnp.float32, rngs=nnx.Rngs(0))
  c1, dc, c2 = ref[0], ref[2], ref[3]
  block.conv1.kernel[...] = jnp.asarray(c1.weight.detach().numpy().transpose(2, 3, 1, 0))
  block.conv1.bias[...] = jnp.asarray(c1.bias.detach().numpy())
  block.deconv.kernel[...] = jnp.asarray(dc.weight.detach().numpy().transpose(2, 3, 1, 0))
  block.deconv.bias[...] = jnp.asarray(dc.bias.detach().numpy())
  block.conv2.kernel[...] = jnp.asarray(c2.weight.detach().numpy().transpose(2, 3, 1, 0))
  block.conv2.bias[...] = jnp.asarray(c2.bias.detach().numpy())
  x = np.random.default_rng(0).standard_normal((2, cin, 8, 8)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(block(jnp.asarray(x.transpose(0, 2, 3, 1))))
  assert got.shape == expected.shape == (2, 16, 16, cout)
  assert _rel(got, expected) <= 1e-4
