"""The seed notebook's vanilla U-Net (Ronneberger et al. 2015 style).

Two 3x3 conv + ReLU per level, max-pool down, bilinear x2 up with the
skip concatenated after the upsampled map, 1x1 conv to one logit. No
BatchNorm (norm="batch" adds it after each conv, as Buda et al.'s
U-Net). At base_width=64, depth=4: 15 convs, 7,782,913 parameters.

With deep_supervision (nnU-Net's scheme) each decoder level below full
resolution gets its own 1x1 logit head; `__call__(x, auxiliary=True)`
returns them beside the main logits for the training loss. They are created
after every other layer, so the other parameters are initialised as without
them, and inference builds the model without them (`models.for_inference`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lgg_jax import choices
from lgg_jax.models.layers import NORMS, Conv, DoubleConv, max_pool2, upsample2x


class UNet(nnx.Module):

  @staticmethod
  def input_divisor(*, depth: int = 4, **_) -> int:
    return 2 ** (depth - 1)

  @staticmethod
  def check_settings(*, depth: int = 4, norm: str = "none", deep_supervision: bool = False, **_) -> None:
    choices.check("config.model.unet.norm", norm, NORMS)
    if depth < 1:
      raise ValueError(f"config.model.unet.depth={depth}: at least 1 (one level, no down-sampling)")
    if deep_supervision and depth < 3:
      raise ValueError(f"config.model.unet.deep_supervision needs depth >= 3 (a decoder level below full "
                       f"resolution), got {depth}")

  def __init__(self, *, in_channels: int = 3, base_width: int = 64, depth: int = 4,
               align_corners: bool = True, norm: str = "none", axis_name=None, conv_impl: str = "auto",
               deep_supervision: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.check_settings(depth=depth, norm=norm, deep_supervision=deep_supervision)
    widths = [base_width * 2**i for i in range(depth)]
    self.align_corners = align_corners
    block = lambda cin, cout: DoubleConv(cin, cout, conv_impl=conv_impl, norm=norm, axis_name=axis_name,
                                         dtype=dtype, rngs=rngs)
    self.down = nnx.List([block(cin, cout) for cin, cout in zip([in_channels] + widths[:-1], widths)])
    self.up = nnx.List([block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth - 1))])
    self.head = Conv(widths[0], 1, 1, impl=conv_impl, dtype=dtype, rngs=rngs)
    # Decoder levels from 1/2 down to 1/2^(depth-2) resolution, the finest first.
    self.auxiliary_heads = nnx.List([Conv(widths[i], 1, 1, impl=conv_impl, dtype=dtype, rngs=rngs)
                                     for i in range(1, depth - 1)]) if deep_supervision else None

  def __call__(self, x, auxiliary: bool = False):
    """Logits (B, H, W, 1); with `auxiliary`, (logits, [logits at H/2, H/4, ...])."""
    skips = []
    for i, block in enumerate(self.down):
      if i:
        x = max_pool2(x)
      x = block(x)
      skips.append(x)
    decoded = []
    for block, skip in zip(self.up, reversed(skips[:-1])):
      x = block(jnp.concatenate([upsample2x(x, self.align_corners), skip], axis=-1))
      decoded.append(x)
    logits = self.head(x).astype(jnp.float32)
    if not auxiliary:
      return logits
    if self.auxiliary_heads is None:
      raise ValueError("this U-Net was built without deep supervision (config.model.unet.deep_supervision)")
    lower = decoded[-2::-1]  # 1/2, 1/4, ... resolution
    return logits, [head(level).astype(jnp.float32) for head, level in zip(self.auxiliary_heads, lower)]
