"""Layers shared by the models, with torch semantics where the seed used torch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lgg_jax import choices


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


NORMS = ("none", "batch")


class DoubleConv(nnx.Module):
  """Two 3x3 conv + ReLU, as the seed's `double_conv`; with norm="batch" each
  conv is followed by BatchNorm (Buda et al.'s U-Net block), its statistics
  averaged over `axis_name` when data-parallel."""

  def __init__(self, in_channels: int, out_channels: int, *, conv_impl: str = "auto", norm: str = "none",
               axis_name=None, dtype, rngs: nnx.Rngs):
    choices.check("norm", norm, NORMS)
    # He init suits ReLU stacks without normalisation.
    conv = lambda cin: Conv(cin, out_channels, 3, impl=conv_impl, padding=1, dtype=dtype, use_bias=norm == "none",
                            kernel_init=nnx.initializers.kaiming_normal(), rngs=rngs)
    bn = lambda: (nnx.BatchNorm(out_channels, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype,
                                rngs=rngs) if norm == "batch" else None)
    self.conv1, self.norm1 = conv(in_channels), bn()
    self.conv2, self.norm2 = conv(out_channels), bn()

  def __call__(self, x):
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
      x = conv(x)
      x = nnx.relu(x if norm is None else norm(x))
    return x


def max_pool2(x):
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))  # keywords: jax2onnx patches it so


CONV_IMPLS = ("auto", "xla", "cpu")


def resolve_conv_impl(impl: str) -> str:
  """"auto" is "cpu" on the CPU backend and "xla" on GPU/TPU."""
  choices.check("config.model.conv_impl", impl, CONV_IMPLS)
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


_NHWC = ("NHWC", "HWIO", "NHWC")


def _dense_conv(x, kernel, strides, padding, precision):
  if kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    # A 1x1 conv is a matmul; XLA:CPU runs the dot form faster in both directions.
    return jnp.einsum("nhwi,io->nhwo", x[:, ::strides[0], ::strides[1]], kernel[0, 0], precision=precision)
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_with_dot_kernel_grad(x, kernel, strides, padding, precision):
  return _dense_conv(x, kernel, strides, padding, precision)


def _conv_fwd(x, kernel, strides, padding, precision):
  return _dense_conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv_bwd(strides, padding, precision, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _dense_conv(x, kernel, strides, padding, precision), x)[1](dy)[0]
  return dx, _kernel_grad(x, dy, kernel.shape, strides, padding, precision).astype(kernel.dtype)


_conv_with_dot_kernel_grad.defvjp(_conv_fwd, _conv_bwd)


def _kernel_grad(x, dy, kernel_shape, strides, padding, precision, tile_pixels: int = 2048):
  """The kernel gradient as matmuls: for each tap, the input window at that
  tap (pixels x in) contracted with dy (pixels x out) over the pixels.

  XLA:CPU's own weight-gradient conv is several times slower than this at
  ResNeXt widths (benchmarks/RESULTS.md). The pixels are taken a band of
  output rows at a time (a scan), so each tap's window copy stays in cache;
  whole-image windows were slower for the full-resolution head.
  """
  kh, kw, cin, cout = kernel_shape
  (sh, sw), (n, ho, wo) = strides, dy.shape[:3]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  contract_pixels = (((0,), (0,)), ((), ()))

  def taps(x_band, dy_band, rows):
    dy_rows = dy_band.reshape(-1, cout)
    out = []
    for i in range(kh):
      for j in range(kw):
        window = jax.lax.slice(x_band, (0, i, j, 0), (n, i + sh * (rows - 1) + 1, j + sw * (wo - 1) + 1, cin),
                               (1, sh, sw, 1))
        out.append(jax.lax.dot_general(window.reshape(-1, cin), dy_rows, contract_pixels, precision=precision,
                                       preferred_element_type=jnp.float32))
    return jnp.stack(out)

  rows = max(1, min(ho, tile_pixels // (n * wo)))
  while ho % rows:
    rows -= 1
  if rows == ho or kh * kw == 1:
    return taps(xp, dy, ho).reshape(kernel_shape)

  def band(total, r):
    x_band = jax.lax.dynamic_slice_in_dim(xp, r * rows * sh, sh * (rows - 1) + kh, axis=1)
    dy_band = jax.lax.dynamic_slice_in_dim(dy, r * rows, rows, axis=1)
    return total + taps(x_band, dy_band, rows), None

  zeros = _vary_like(jnp.zeros((kh * kw, cin, cout), jnp.float32), dy)  # a scan carry has dy's type
  total, _ = jax.lax.scan(band, zeros, jnp.arange(ho // rows))
  return total.reshape(kernel_shape)


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` with the same value and a faster gradient on XLA:CPU.

  A drop-in for nnx.Conv's `conv_general_dilated` hook. Dense NHWC/HWIO convs
  (no dilation, no groups) take the dot-based forms above; anything else
  goes to lax unchanged.
  """
  dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (
      lhs.ndim == 4 and dims == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      and feature_group_count == 1
      and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and all(v is None for v in kwargs.values()))
  if plain:
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    plain = all(p >= 0 for pair in padding for p in pair)
  if not plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
  return _conv_with_dot_kernel_grad(lhs, _vary_like(rhs, lhs), strides, padding, precision)


def _varying_axes(x) -> frozenset:
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # JAX 0.10's name; other releases have .vma
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _vary_like(kernel, x):
  """Inside shard_map the kernel is replicated while x varies over the data
  axis; a custom_vjp must return a cotangent of its input's type, so the
  kernel is cast to varying first. The cast's transpose sums the per-device
  kernel gradients, as JAX's own conv gradient does."""
  missing = tuple(sorted(_varying_axes(x) - _varying_axes(kernel)))
  return jax.lax.pcast(kernel, missing, to="varying") if missing else kernel


def conv_function(impl: str):
  return cpu_conv_general_dilated if resolve_conv_impl(impl) == "cpu" else jax.lax.conv_general_dilated


def Conv(in_channels: int, out_channels: int, kernel_size: int, *, impl: str = "auto", **kwargs) -> nnx.Conv:
  """nnx.Conv (same parameters, same function) with the conv form chosen by `impl`."""
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size),
                  conv_general_dilated=conv_function(impl), **kwargs)


class GroupedConv(nnx.Module):
  """A grouped convolution with two interchangeable implementations.

  "xla": one `feature_group_count` convolution, the fastest form on GPU/TPU.
  "cpu": neighbouring groups bundled into block-diagonal dense convolutions,
  concatenated. XLA:CPU runs the grouped form's backward pass over 100x
  slower than that. Both use the same kernel layout as `nnx.Conv` with
  `feature_group_count`: (kh, kw, in / groups, out).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, groups: int,
               strides: int = 1, padding: int = 0, impl: str = "auto", dtype=jnp.float32,
               kernel_init=nnx.initializers.kaiming_normal(), rngs: nnx.Rngs):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"channels {in_channels}->{out_channels} not divisible by {groups} groups")
    self.groups, self.strides, self.padding = groups, strides, padding
    self.impl, self.dtype = resolve_conv_impl(impl), dtype
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (kernel_size, kernel_size, in_channels // groups, out_channels), jnp.float32))

  def __call__(self, x):
    kernel = self.kernel[...].astype(self.dtype)
    x = x.astype(self.dtype)
    strides, padding = (self.strides, self.strides), [(self.padding, self.padding)] * 2
    if self.impl == "xla":
      return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                          feature_group_count=self.groups)
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
      outs.append(cpu_conv_general_dilated(x[..., b * f * cin:(b + 1) * f * cin], k, strides, padding,
                                           dimension_numbers=_NHWC))
    return jnp.concatenate(outs, axis=-1)


def _bundle(groups: int, channels_per_group: int, target: int = 32) -> int:
  f = max(1, target // channels_per_group)
  while groups % f:
    f -= 1
  return f


# Output phase a (row parity) of a 4x4, stride-2, padding-1 transposed conv
# reads input rows i + a - 1 and i + a through these kernel rows.
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}


class ConvTranspose2x(nnx.Module):
  """torch ConvTranspose2d(k=4, stride=2, padding=1): doubles height and width.

  Kernel layout (4, 4, out, in), i.e. torch's weight (in, out, kh, kw)
  transposed (2, 3, 1, 0). Two implementations of the same function:
  "xla": `lax.conv_transpose` (an input-dilated conv), the usual form on GPU;
  "cpu": sub-pixel form, one 2x2 conv over the padded input giving the four
  output phases, then depth-to-space. XLA:CPU runs the dilated form's
  backward pass several times slower than a plain conv.
  """

  def __init__(self, in_channels: int, out_channels: int, *, impl: str = "auto", dtype=jnp.float32,
               rngs: nnx.Rngs):
    # LeCun-normal over the 16 * in_channels inputs of each output, as nnx.ConvTranspose.
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (4, 4, out_channels, in_channels), jnp.float32)
                            / np.sqrt(16 * in_channels))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
    self.impl, self.dtype = resolve_conv_impl(impl), dtype

  def __call__(self, x):
    kernel, x = self.kernel[...].astype(self.dtype), x.astype(self.dtype)
    if self.impl == "xla":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    else:
      b, h, w, _ = x.shape
      out = kernel.shape[2]
      phase_kernels = [jnp.stack([jnp.stack([kernel[r, c].T for c in _PHASE_TAPS[col]]) for r in _PHASE_TAPS[row]])
                       for row in (0, 1) for col in (0, 1)]  # each (2, 2, in, out)
      # Window (p, q) of the padded input covers input rows p-1, p: phase
      # (row, col) at output pixel (i, j) is window (i + row, j + col).
      y = cpu_conv_general_dilated(x, jnp.concatenate(phase_kernels, axis=-1), (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=_NHWC)
      phases = [y[:, row:row + h, col:col + w, (2 * row + col) * out:(2 * row + col + 1) * out]
                for row in (0, 1) for col in (0, 1)]
      y = jnp.stack(phases, axis=3).reshape(b, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
      y = y.reshape(b, 2 * h, 2 * w, out)
    return y + self.bias[...].astype(self.dtype)
