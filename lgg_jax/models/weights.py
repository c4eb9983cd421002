"""Load torchvision `resnext50_32x4d` ImageNet weights into the encoder.

Reads a local file only (nothing is downloaded): `.pth`/`.pt` through torch
when it is installed, `.safetensors` with numpy alone. Keys map by name
(torchvision's names are the encoder's attribute names); the classifier
(`fc.*`) is skipped on purpose. Any other unexpected key, any encoder
parameter left without a value, or any shape mismatch is an error naming
them all.

2.5-D input (3 * m channels: the slice and its neighbours, 3 MRI channels
each): the stem's ImageNet kernel (64, 3, 7, 7) is tiled m times along its
input channels and divided by m. A stack of m identical slices then gives
the pretrained stem's exact output, and neighbouring slices, which look
alike, keep its activation scale (timm's rule for extra input channels).
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_SKIPPED = ("fc.weight", "fc.bias")


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"pretrained weights {path} do not exist")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in (".pth", ".pt", ".bin"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"{path}: reading .pth needs torch; install it or convert the file to "
                        ".safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
      state = state["state_dict"]
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  raise ValueError(f"{path}: unknown weight format {path.suffix!r} (use .pth or .safetensors)")


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(str(path))
  except Exception as e:  # safetensors raises its own types for truncated or foreign files
    raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _encoder_targets(encoder: nnx.Module) -> dict[str, tuple[nnx.Variable, callable]]:
  """torchvision key -> (variable to fill, converter from the torch array)."""
  targets = {}

  def conv(prefix, module):
    kernel = module.kernel
    targets[f"{prefix}.weight"] = (kernel, lambda w: np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO

  def expanded_stem(w):
    copies = encoder.conv1.kernel.shape[2] // w.shape[1]
    if copies > 1 and encoder.conv1.kernel.shape[2] == copies * w.shape[1]:
      w = np.tile(w, (1, copies, 1, 1)) / copies
    return np.transpose(w, (2, 3, 1, 0))

  def bn(prefix, module):
    for torch_name, ours in _BN_NAMES.items():
      targets[f"{prefix}.{torch_name}"] = (getattr(module, ours), lambda w: w)

  targets["conv1.weight"] = (encoder.conv1.kernel, expanded_stem)
  bn("bn1", encoder.bn1)
  for li, layer in enumerate((encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4), start=1):
    for bi, block in enumerate(layer):
      p = f"layer{li}.{bi}"
      for i in (1, 2, 3):
        conv(f"{p}.conv{i}", getattr(block, f"conv{i}"))
        bn(f"{p}.bn{i}", getattr(block, f"bn{i}"))
      if block.downsample_conv is not None:
        conv(f"{p}.downsample.0", block.downsample_conv)
        bn(f"{p}.downsample.1", block.downsample_bn)
  return targets


def load_encoder(encoder: nnx.Module, state_dict: dict[str, np.ndarray], source: str = "weights") -> None:
  """Fills `encoder` in place; raises naming every problem at once."""
  targets = _encoder_targets(encoder)
  state = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked") and k not in _SKIPPED}
  missing = sorted(set(targets) - set(state))
  unexpected = sorted(set(state) - set(targets))
  mismatched = []
  for key in sorted(set(targets) & set(state)):
    variable, convert = targets[key]
    value = np.asarray(state[key])
    if value.ndim != len(variable.shape):  # the OIHW -> HWIO transpose needs the right rank
      mismatched.append(f"{key}: file {value.shape} ({value.ndim}-D) vs model {len(variable.shape)}-D")
      continue
    value = convert(value)
    if value.shape != variable.shape:
      mismatched.append(f"{key}: file {value.shape} vs model {tuple(variable.shape)}")
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:10])}")
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
  if mismatched:
    problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:10])}")
  if problems:
    raise ValueError(f"{source} do not fit the ResNeXt encoder: " + " | ".join(problems))
  for key, (variable, convert) in targets.items():
    variable[...] = jnp.asarray(convert(np.asarray(state[key])), variable[...].dtype)
