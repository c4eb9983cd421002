"""A trained model as ONNX, for onnxruntime, 3D Slicer, MONAI Deploy and C++/C# services.

The graph is the forward pass from the normalised model input, float32 NHWC
(batch, input_size, input_size, 3 * (2k + 1)) with a symbolic batch, to the
sigmoid probabilities at 256x256 (batch, 256, 256). It is converted by
jax2onnx (`pip install -e ".[onnx]"`) from the same Flax module the library
runs, with the plain XLA convolution forms, and the bilinear upsampling
written as two matrix products (`steps.upsample_matrix`: the same numbers as
`jax.image.resize`, which jax2onnx cannot take with a symbolic batch).
Normalisation and the 2.5-D stacking stay outside the graph; the graph's
metadata (`lgg_jax.*`) says what to feed, and `onnx_predict.py` (numpy and
onnxruntime only) does it. The U-Net and FPN convert; the ResNeXt-UNet's
conversion is refused with an error naming it (jax2onnx mixes NHWC and NCHW
layouts in its strided residual blocks, and onnxruntime rejects the graph).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import shutil

import jax
import jax.numpy as jnp

from lgg_jax import inference, state, steps
from lgg_jax.data import preprocess

ONNX_FILE = "model.onnx"
PREDICT_SCRIPT = pathlib.Path(__file__).with_name("onnx_predict.py")
CONVERTS = ("unet", "fpn")
INSTALL = 'pip install -e ".[onnx]"'


def _jax2onnx():
  try:
    import jax2onnx
  except ImportError as e:
    raise ImportError(f"ONNX export needs jax2onnx and onnx: {INSTALL} ({e})") from e
  return jax2onnx


def probability_function(member: inference.Member):
  """images (b, size, size, c) -> probabilities (b, 256, 256), the weights inside, plain XLA convs."""
  config = member.config.copy_and_resolve_references()
  config.model.conv_impl = "xla"
  graphdef, _ = state.abstract_variables(config)
  variables = jax.device_get(member.variables)
  matrix = steps.upsample_matrix(config.data.image_size, preprocess.SOURCE_SIZE)

  def probabilities(images):
    model = state.merge(graphdef, variables["params"], variables["model_state"])
    return jnp.einsum("ih,bhw,jw->bij", matrix, jax.nn.sigmoid(model(images))[..., 0], matrix)

  return probabilities


def metadata(member: inference.Member) -> dict[str, str]:
  data = member.config.data
  return {"lgg_jax.input_size": str(data.image_size), "lgg_jax.neighbours": str(data.neighbours),
          "lgg_jax.input_channels": str(state.in_channels(member.config)), "lgg_jax.layout": "NHWC",
          "lgg_jax.channels": "pre-contrast, FLAIR, post-contrast per slice; slice s-k first, s+k last",
          "lgg_jax.normalization": str(data.normalization),
          "lgg_jax.percentiles": ",".join(str(float(p)) for p in data.normalization_percentiles),
          "lgg_jax.threshold": str(member.settings.threshold), "lgg_jax.output": "probabilities (b, 256, 256)",
          "lgg_jax.model": str(member.config.model.name)}


def export_onnx(member: inference.Member, path) -> pathlib.Path:
  """Writes the member's forward pass to `path` (written whole or not at all)."""
  name = member.config.model.name
  jax2onnx = _jax2onnx()
  version = importlib.metadata.version("jax2onnx")
  if name not in CONVERTS:
    raise ValueError(f"model {name!r} ({member.source}) does not convert to ONNX with jax2onnx {version}: its "
                     "strided residual blocks come out with mixed NHWC/NCHW layouts that onnxruntime rejects; "
                     f"models that convert: {', '.join(CONVERTS)}")
  import onnx
  path = pathlib.Path(path)
  size, channels = member.config.data.image_size, state.in_channels(member.config)
  try:
    model = jax2onnx.to_onnx(probability_function(member), [("B", size, size, channels)], return_mode="proto",
                             model_name=f"lgg_jax_{name}", input_names=["images"],
                             output_names=["probabilities"])
  except Exception as e:  # the converter raises many types for a layer it cannot take
    raise ValueError(f"model {name!r} ({member.source}) did not convert with jax2onnx {version}: "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  for key, value in metadata(member).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
  partial = path.with_name(f".{path.name}.partial")
  onnx.save(model, str(partial))
  partial.rename(path)
  return path


def copy_predict_script(folder) -> pathlib.Path:
  return pathlib.Path(shutil.copy(PREDICT_SCRIPT, pathlib.Path(folder) / PREDICT_SCRIPT.name))

