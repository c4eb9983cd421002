"""The seed notebook's vanilla U-Net (Ronneberger et al. 2015 style).

Two 3x3 conv + ReLU per level, max-pool down, bilinear x2 up with the
skip concatenated after the upsampled map, 1x1 conv to one logit. No
BatchNorm. At base_width=64, depth=4: 15 convs, 7,782,913 parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# He init suits ReLU stacks without normalisation.
_KERNEL_INIT = nnx.initializers.kaiming_normal()


class DoubleConv(nnx.Module):

  def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    conv = lambda cin: nnx.Conv(cin, out_channels, (3, 3), padding=1, dtype=dtype,
                                kernel_init=_KERNEL_INIT, rngs=rngs)
    self.conv1 = conv(in_channels)
    self.conv2 = conv(out_channels)

  def __call__(self, x):
    return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


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


def upsample2x(x: jax.Array, align_corners: bool = True) -> jax.Array:
  """Bilinear x2 on NHWC. align_corners=True matches the seed's nn.Upsample;
  False is jax.image.resize's half-pixel convention."""
  b, h, w, c = x.shape
  if not align_corners:
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
  rows = jnp.asarray(_interpolation_matrix(h, 2 * h), x.dtype)
  cols = jnp.asarray(_interpolation_matrix(w, 2 * w), x.dtype)
  return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x)


class UNet(nnx.Module):

  def __init__(self, *, in_channels: int = 3, base_width: int = 64, depth: int = 4,
               align_corners: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [base_width * 2**i for i in range(depth)]
    self.align_corners = align_corners
    self.down = nnx.List([DoubleConv(cin, cout, dtype=dtype, rngs=rngs)
                          for cin, cout in zip([in_channels] + widths[:-1], widths)])
    self.up = nnx.List([DoubleConv(widths[i + 1] + widths[i], widths[i], dtype=dtype, rngs=rngs)
                        for i in reversed(range(depth - 1))])
    self.head = nnx.Conv(widths[0], 1, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    skips = []
    for i, block in enumerate(self.down):
      if i:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      x = block(x)
      skips.append(x)
    for block, skip in zip(self.up, reversed(skips[:-1])):
      x = block(jnp.concatenate([upsample2x(x, self.align_corners), skip], axis=-1))
    return self.head(x).astype(jnp.float32)
