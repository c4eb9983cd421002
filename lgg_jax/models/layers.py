"""Layers shared by the models, with torch semantics where the seed used torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Linear interpolation weights with align_corners=True (torch semantics)."""
  if n_in == 1:
    return np.ones((n_out, 1), np.float32)
  position = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  low = np.clip(np.floor(position).astype(int), 0, n_in - 2)
  frac = (position - low).astype(np.float32)
  matrix = np.zeros((n_out, n_in), np.float32)
  matrix[np.arange(n_out), low] = 1 - frac
  matrix[np.arange(n_out), low + 1] += frac
  return matrix


def resize_bilinear(x: jax.Array, height: int, width: int, align_corners: bool = True) -> jax.Array:
  """Bilinear resize of NHWC. align_corners=True matches the seed's
  nn.Upsample(..., align_corners=True); False is jax.image.resize's
  half-pixel convention. Written as two small matmuls, fast on every backend."""
  b, h, w, c = x.shape
  if not align_corners:
    return jax.image.resize(x, (b, height, width, c), "bilinear")
  rows = jnp.asarray(_interpolation_matrix(h, height), x.dtype)
  cols = jnp.asarray(_interpolation_matrix(w, width), x.dtype)
  return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x)


def upsample2x(x: jax.Array, align_corners: bool = True) -> jax.Array:
  return resize_bilinear(x, 2 * x.shape[1], 2 * x.shape[2], align_corners)


class DoubleConv(nnx.Module):
  """Two 3x3 conv + ReLU, as the seed's `double_conv`."""

  def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    # He init suits ReLU stacks without normalisation.
    conv = lambda cin: nnx.Conv(cin, out_channels, (3, 3), padding=1, dtype=dtype,
                                kernel_init=nnx.initializers.kaiming_normal(), rngs=rngs)
    self.conv1 = conv(in_channels)
    self.conv2 = conv(out_channels)

  def __call__(self, x):
    return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


def max_pool2(x):
  return nnx.max_pool(x, (2, 2), strides=(2, 2))


def resolve_grouped_impl(impl: str) -> str:
  if impl == "auto":
    return "split" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("xla", "split"):
    raise ValueError(f"config.model.grouped_conv: unknown implementation {impl!r} (known: auto, xla, split)")
  return impl


class GroupedConv(nnx.Module):
  """A grouped convolution with two interchangeable implementations.

  "xla": one `feature_group_count` convolution, the fastest form on GPU/TPU.
  "split": one dense convolution per group, concatenated. XLA:CPU runs the
  grouped form's backward pass tens of times slower than the dense one, so
  on CPU the split form is much faster. Both use the same kernel layout as
  `nnx.Conv` with `feature_group_count`: (kh, kw, in / groups, out).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, groups: int,
               strides: int = 1, padding: int = 0, impl: str = "auto", dtype=jnp.float32,
               kernel_init=nnx.initializers.kaiming_normal(), rngs: nnx.Rngs):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"channels {in_channels}->{out_channels} not divisible by {groups} groups")
    self.groups, self.strides, self.padding = groups, strides, padding
    self.impl, self.dtype = resolve_grouped_impl(impl), dtype
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (kernel_size, kernel_size, in_channels // groups, out_channels), jnp.float32))

  def __call__(self, x):
    kernel = self.kernel[...].astype(self.dtype)
    x = x.astype(self.dtype)
    conv = lambda inputs, k, groups: jax.lax.conv_general_dilated(
        inputs, k, (self.strides, self.strides), [(self.padding, self.padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    if self.impl == "xla":
      return conv(x, kernel, self.groups)
    # Bundle f neighbouring groups into one dense conv with a block-diagonal
    # kernel of about 32 channels: f times the FLOPs, but XLA:CPU runs such
    # convs far more efficiently than narrow ones (measured: f=4 for 8-channel
    # groups ran fwd+bwd 1.8x faster than one conv per group).
    cin, cout = kernel.shape[2], kernel.shape[3] // self.groups
    f = _bundle(self.groups, cin)
    outs = []
    for b in range(self.groups // f):
      k = kernel[..., b * f * cout:(b + 1) * f * cout]
      if f > 1:
        kh, kw = k.shape[:2]
        k = k.reshape(kh, kw, cin, f, cout)
        k = jnp.einsum("hwiGo,gG->hwgiGo", k, jnp.eye(f, dtype=k.dtype)).reshape(kh, kw, f * cin, f * cout)
      outs.append(conv(x[..., b * f * cin:(b + 1) * f * cin], k, 1))
    return jnp.concatenate(outs, axis=-1)


def _bundle(groups: int, channels_per_group: int, target: int = 32) -> int:
  f = max(1, target // channels_per_group)
  while groups % f:
    f -= 1
  return f


# Sub-pixel taps of a 4x4 stride-2 padding-1 transposed conv: output phase a
# (row parity) at input offset d uses kernel row _TAPS[(a, d)].
_TAPS = {(0, 0): 1, (0, -1): 3, (1, 1): 0, (1, 0): 2}


class ConvTranspose2x(nnx.Module):
  """torch ConvTranspose2d(k=4, stride=2, padding=1): doubles height and width.

  Kernel layout (4, 4, out, in), i.e. torch's weight (in, out, kh, kw)
  transposed (2, 3, 1, 0). Two implementations of the same function:
  "xla": `lax.conv_transpose` (an input-dilated conv), the usual form on GPU;
  "subpixel": one 3x3 conv to the 4 output phases, then depth-to-space.
  XLA:CPU runs the dilated form's backward pass several times slower than a
  plain conv, so "auto" picks subpixel on CPU.
  """

  def __init__(self, in_channels: int, out_channels: int, *, impl: str = "auto", dtype=jnp.float32,
               rngs: nnx.Rngs):
    # LeCun-normal over the 16 * in_channels inputs of each output, as nnx.ConvTranspose.
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (4, 4, out_channels, in_channels), jnp.float32)
                            / np.sqrt(16 * in_channels))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
    # Follows config.model.resnext.grouped_conv: "split" (the CPU form) means subpixel.
    impl = {"subpixel": "split"}.get(impl, impl)
    self.impl, self.dtype = resolve_grouped_impl(impl).replace("split", "subpixel"), dtype

  def __call__(self, x):
    kernel, x = self.kernel[...].astype(self.dtype), x.astype(self.dtype)
    if self.impl == "xla":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    else:
      b, h, w, _ = x.shape
      out = kernel.shape[2]
      zero = jnp.zeros((kernel.shape[3], out), kernel.dtype)
      phases = []
      for a in (0, 1):
        for c in (0, 1):
          rows = []
          for di in (-1, 0, 1):
            rows.append(jnp.stack([
                kernel[_TAPS[(a, di)], _TAPS[(c, dj)]].T if (a, di) in _TAPS and (c, dj) in _TAPS else zero
                for dj in (-1, 0, 1)]))
          phases.append(jnp.stack(rows))  # (3, 3, in, out)
      y = jax.lax.conv_general_dilated(x, jnp.concatenate(phases, axis=-1), (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      y = y.reshape(b, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, out)
    return y + self.bias[...].astype(self.dtype)
