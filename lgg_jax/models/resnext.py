"""U-Net on a ResNeXt50-32x4d encoder (the seed's ResNeXtUNet, the PyTorch peer).

The encoder matches torchvision's `resnext50_32x4d` layer for layer, with the
same parameter names, so ImageNet weights load by name (`weights.py`): a 7x7/2
stem + BatchNorm + ReLU (its max-pool unused, as in the seed), then layer1-4 of
bottlenecks (1x1 -> grouped 3x3 (stride here, v1.5) -> 1x1, width 2 x planes,
32 groups, 1x1 projection shortcut). Decoder blocks: 1x1 conv -> 4x4 stride-2
transposed conv -> 1x1 conv, ReLU after the 1x1s, skips added. Head: 3x3 conv
256->128 + ReLU, 3x3 conv 128->1. 30,947,777 parameters at full size.
BatchNorm as torchvision's: eps 1e-5, torch momentum 0.1 (= Flax 0.9); one
difference: Flax keeps the biased batch variance in its running average
where torch keeps the unbiased one (n/(n-1): small only for tiny batches).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lgg_jax.models.layers import Conv, ConvTranspose2x, GroupedConv


def _bn(features, *, axis_name, dtype, rngs):
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):

  def __init__(self, cin, planes, stride, *, groups, width_per_group, conv_impl, axis_name, dtype, rngs):
    width = planes * width_per_group * groups // 64
    out = planes * 4
    bn = lambda c: _bn(c, axis_name=axis_name, dtype=dtype, rngs=rngs)
    conv1x1 = lambda a, b, s=1: Conv(a, b, 1, impl=conv_impl, strides=s, use_bias=False, dtype=dtype, rngs=rngs)
    self.conv1, self.bn1 = conv1x1(cin, width), bn(width)
    self.conv2 = GroupedConv(width, width, 3, groups=groups, strides=stride, padding=1, impl=conv_impl,
                             dtype=dtype, rngs=rngs)
    self.bn2 = bn(width)
    self.conv3, self.bn3 = conv1x1(width, out), bn(out)
    if stride != 1 or cin != out:
      self.downsample_conv, self.downsample_bn = conv1x1(cin, out, stride), bn(out)
    else:
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
    return nnx.relu(y + shortcut)


class ResNeXtEncoder(nnx.Module):
  """torchvision resnext50_32x4d without max-pool, avg-pool and fc."""

  def __init__(self, *, in_channels=3, stem_width=64, blocks=(3, 4, 6, 3), groups=32, width_per_group=4,
               conv_impl="auto", axis_name=None, dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv1 = Conv(in_channels, stem_width, 7, impl=conv_impl, strides=2, padding=3, use_bias=False,
                      dtype=dtype, rngs=rngs)
    self.bn1 = _bn(stem_width, axis_name=axis_name, dtype=dtype, rngs=rngs)
    cin, layers = stem_width, []
    for i, n in enumerate(blocks):
      planes = stem_width * 2**i
      layer = []
      for j in range(n):
        layer.append(Bottleneck(cin, planes, 2 if (i > 0 and j == 0) else 1, groups=groups,
                                width_per_group=width_per_group, conv_impl=conv_impl,
                                axis_name=axis_name, dtype=dtype, rngs=rngs))
        cin = planes * 4
      layers.append(nnx.List(layer))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.out_channels = tuple(stem_width * 4 * 2**i for i in range(4))

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    features = []
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in layer:
        x = block(x)
      features.append(x)
    return features


class DecoderBlock(nnx.Module):

  def __init__(self, cin, cout, *, conv_impl="auto", dtype, rngs):
    mid = cin // 4
    self.conv1 = Conv(cin, mid, 1, impl=conv_impl, dtype=dtype, rngs=rngs)
    self.deconv = ConvTranspose2x(mid, mid, impl=conv_impl, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(mid, cout, 1, impl=conv_impl, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.conv2(self.deconv(nnx.relu(self.conv1(x)))))


class ResNeXtUNet(nnx.Module):
  """With `sync_batch_norm`, BatchNorm statistics are averaged over `axis_name`
  (every device's part of the batch)."""

  @staticmethod
  def input_divisor(**_) -> int:
    return 16  # the stem and layer2-4 halve; the max-pool is unused

  @staticmethod
  def check_settings(*, stem_width: int = 64, blocks=(3, 4, 6, 3), groups: int = 32, width_per_group: int = 4,
                     **_) -> None:
    blocks = tuple(blocks)
    if len(blocks) != 4 or min(blocks) < 1:
      raise ValueError(f"config.model.resnext_unet.blocks={blocks}: four layers of at least one block each "
                       "(torchvision's layer1-4)")
    if min(stem_width, groups, width_per_group) < 1 or stem_width * width_per_group % 64:
      raise ValueError(f"config.model.resnext_unet: stem_width x width_per_group ({stem_width} x {width_per_group}) "
                       "must be a positive multiple of 64, so each grouped conv splits into whole groups")

  def __init__(self, *, in_channels=3, stem_width=64, blocks=(3, 4, 6, 3), groups=32, width_per_group=4,
               sync_batch_norm=True, conv_impl="auto", axis_name=None, dtype=jnp.float32, rngs: nnx.Rngs):
    self.check_settings(stem_width=stem_width, blocks=blocks, groups=groups, width_per_group=width_per_group)
    self.encoder = ResNeXtEncoder(in_channels=in_channels, stem_width=stem_width, blocks=tuple(blocks),
                                  groups=groups, width_per_group=width_per_group, conv_impl=conv_impl,
                                  axis_name=axis_name if sync_batch_norm else None, dtype=dtype, rngs=rngs)
    e1, e2, e3, e4 = self.encoder.out_channels
    dec = lambda a, b: DecoderBlock(a, b, conv_impl=conv_impl, dtype=dtype, rngs=rngs)
    self.decoder4, self.decoder3, self.decoder2, self.decoder1 = dec(e4, e3), dec(e3, e2), dec(e2, e1), dec(e1, e1)
    self.head1 = Conv(e1, e1 // 2, 3, impl=conv_impl, padding=1, dtype=dtype, rngs=rngs)
    self.head2 = Conv(e1 // 2, 1, 3, impl=conv_impl, padding=1, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    e1, e2, e3, e4 = self.encoder(x)
    d4 = self.decoder4(e4) + e3
    d3 = self.decoder3(d4) + e2
    d2 = self.decoder2(d3) + e1
    d1 = self.decoder1(d2)
    return self.head2(nnx.relu(self.head1(d1))).astype(jnp.float32)
