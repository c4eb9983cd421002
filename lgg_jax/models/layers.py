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
