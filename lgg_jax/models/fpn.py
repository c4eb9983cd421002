"""The seed notebook's FPN (Lin et al. 2017 style) for segmentation.

Bottom-up: five double-conv stages (64..1024 channels at full size), each
followed by a max-pool. Top-down: 1x1 top layer, 1x1 laterals, bilinear
upsample-and-add, 3x3 smoothing. Segmentation blocks (3x3 conv + GroupNorm +
ReLU, upsampled 0..3 times) bring p2..p5 to p2's size; their sum goes through
a 1x1 conv and a bilinear x4 to full resolution. 25,238,593 parameters at
full size, as the seed's module.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lgg_jax.models.layers import Conv, DoubleConv, max_pool2, resize_bilinear, upsample2x


class ConvGNReLU(nnx.Module):

  def __init__(self, cin, cout, *, upsample: bool, groups: int, align_corners: bool, conv_impl, dtype, rngs):
    self.conv = Conv(cin, cout, 3, impl=conv_impl, padding=1, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = nnx.GroupNorm(cout, num_groups=groups, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.upsample, self.align_corners = upsample, align_corners

  def __call__(self, x):
    x = nnx.relu(self.norm(self.conv(x)))
    return upsample2x(x, self.align_corners) if self.upsample else x


class FPN(nnx.Module):

  @staticmethod
  def input_divisor(**_) -> int:
    return 32

  def __init__(self, *, in_channels: int = 3, base_width: int = 64, pyramid_channels: int = 256,
               segmentation_channels: int = 256, group_norm_groups: int = 32,
               align_corners: bool = True, conv_impl: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [base_width * 2**i for i in range(5)]
    conv = lambda cin, cout, k: Conv(cin, cout, k, impl=conv_impl, padding=k // 2, dtype=dtype, rngs=rngs)
    self.align_corners = align_corners
    self.down = nnx.List([DoubleConv(cin, cout, conv_impl=conv_impl, dtype=dtype, rngs=rngs)
                          for cin, cout in zip([in_channels] + widths[:-1], widths)])
    self.top = conv(widths[4], pyramid_channels, 1)
    self.lateral = nnx.List([conv(widths[i], pyramid_channels, 1) for i in (3, 2, 1)])
    self.smooth = nnx.List([conv(pyramid_channels, pyramid_channels, 3) for _ in range(3)])
    self.segmentation = nnx.List([
        nnx.List([ConvGNReLU(pyramid_channels if j == 0 else segmentation_channels, segmentation_channels,
                             upsample=n > 0, groups=group_norm_groups, align_corners=align_corners,
                             conv_impl=conv_impl, dtype=dtype, rngs=rngs) for j in range(max(n, 1))])
        for n in (0, 1, 2, 3)])
    self.head = conv(segmentation_channels, 1, 1)

  def __call__(self, x):
    height, width = x.shape[1:3]
    features = []
    for block in self.down:
      x = max_pool2(block(x))
      features.append(x)
    c2, c3, c4, c5 = features[1:]
    up_add = lambda a, b: resize_bilinear(a, b.shape[1], b.shape[2], self.align_corners) + b
    p5 = self.top(c5)
    p4 = up_add(p5, self.lateral[0](c4))
    p3 = up_add(p4, self.lateral[1](c3))
    p2 = up_add(p3, self.lateral[2](c2))
    p4, p3, p2 = self.smooth[0](p4), self.smooth[1](p3), self.smooth[2](p2)
    total = 0
    for blocks, p in zip(self.segmentation, (p2, p3, p4, p5)):
      for block in blocks:
        p = block(p)
      total = total + p
    logits = resize_bilinear(self.head(total), height, width, self.align_corners)
    return logits.astype(jnp.float32)
