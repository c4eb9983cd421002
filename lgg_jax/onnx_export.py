"""A trained model as ONNX, for onnxruntime, 3D Slicer, MONAI Deploy and C++/C# services.

The graph is the forward pass from the normalised model input, float32 NHWC
(batch, input_size, input_size, 3 * (2k + 1)) with a symbolic batch, to the
sigmoid probabilities at 256x256 (batch, 256, 256). It is converted by
jax2onnx (`pip install -e ".[onnx]"`) from the same Flax module the library
runs, with the plain XLA convolution forms, and the bilinear upsampling
written as two matrix products (`inference.upsample_matrix`: the same numbers as
`jax.image.resize`, which jax2onnx cannot take with a symbolic batch).
Normalisation, the 2.5-D stacking, the test-time views, the threshold and
the component step stay outside the graph; the graph's metadata
(`lgg_jax.*`) says what to feed and how the model was scored, and
`onnx_predict.py` (numpy, scipy and onnxruntime) does all of it, for one
graph or an ensemble of them.

jax2onnx 0.17.1's `remove_redundant_transpose_pairs` optimisation leaves a
tensor that is both one block's output and later blocks' input in the wrong
layout (NCHW where NHWC is meant): the ResNeXt-UNet's graph was rejected by
onnxruntime, and a tiny encoder's first features came out silently wrong. The
conversion runs without that one pass (`_without_transpose_pair_pass`), for
every model: the graph keeps some transposes it could drop, and every model
family gives the library's probabilities (tests/test_onnx.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pathlib
import shutil

import jax
import jax.numpy as jnp
from absl import logging

from lgg_jax import inference, state
from lgg_jax.data import preprocess

ONNX_FILE = "model.onnx"
PREDICT_SCRIPT = pathlib.Path(__file__).with_name("onnx_predict.py")
CONVERTS = ("unet", "fpn", "resnext_unet")
# jax2onnx's default, opset 23, is refused by onnxruntime before 1.22 ("official
# support ... till opset 21" in 1.20.1), which 3D Slicer and C++ services may run;
# every layer here exists in opset 21.
OPSET = 21
_MISLAYOUT_PASS = "remove_redundant_transpose_pairs"
INSTALL = 'pip install -e ".[onnx]"'


def _jax2onnx():
  try:
    import jax2onnx
  except ImportError as e:
    raise ImportError(f"ONNX export needs jax2onnx and onnx: {INSTALL} ({e})") from e
  return jax2onnx


@contextlib.contextmanager
def _without_transpose_pair_pass():
  """jax2onnx's optimiser passes without the one that breaks layouts (module docstring).
  A private list of a pinned version: if it is gone, convert as jax2onnx does (the tests check)."""
  try:
    from jax2onnx.converter import ir_optimizations
    saved = ir_optimizations._OPTIMIZER_PASSES
  except (ImportError, AttributeError):
    yield
    return
  ir_optimizations._OPTIMIZER_PASSES = tuple(p for p in saved if getattr(p, "name", "") != _MISLAYOUT_PASS)
  try:
    yield
  finally:
    ir_optimizations._OPTIMIZER_PASSES = saved


def _model_frame(error: BaseException) -> str:
  """' at lgg_jax/models/<file>:<line> (<function>)', the innermost model code the error passed through."""
  import traceback
  frames = [f for f in traceback.extract_tb(error.__traceback__) if "/lgg_jax/models/" in f.filename]
  if not frames:
    return ""
  frame = frames[-1]
  return f" at lgg_jax/models/{frame.filename.split('/lgg_jax/models/')[-1]}:{frame.lineno} ({frame.name})"


def probability_function(member: inference.Member):
  """images (b, size, size, c) -> probabilities (b, 256, 256), the weights inside, plain XLA convs."""
  config = member.config.copy_and_resolve_references()
  config.model.conv_impl = "xla"
  # onnxruntime's CPU provider has no bfloat16 convolution: a graph computing
  # in bfloat16 does not load. The weights are float32 either way.
  config.compute_dtype = "float32"
  graphdef, _ = state.abstract_variables(config)
  variables = jax.device_get(member.variables)
  matrix = inference.upsample_matrix(config.data.image_size, preprocess.SOURCE_SIZE)

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
          "lgg_jax.output": "probabilities (b, 256, 256) of one view: test-time views and the component step "
                            "are outside the graph (onnx_predict.py applies them)",
          "lgg_jax.model": str(member.config.model.name),
          "lgg_jax.compute_dtype": f"float32 (the library computes in {member.config.compute_dtype})",
          # How the model was scored (inference.Settings), field by field.
          **{f"lgg_jax.{name}": str(value) for name, value in member.settings.as_dict().items()}}


def export_onnx(member: inference.Member, path) -> pathlib.Path:
  """Writes the member's forward pass to `path` (written whole or not at all)."""
  name = member.config.model.name
  jax2onnx = _jax2onnx()
  version = importlib.metadata.version("jax2onnx")
  if name not in CONVERTS:
    raise ValueError(f"model {name!r} ({member.source}) has no ONNX export with jax2onnx {version} (models "
                     f"that convert: {', '.join(CONVERTS)})")
  import onnx
  path = pathlib.Path(path)
  if member.config.compute_dtype != "float32":
    logging.warning("%s computes in %s; its ONNX graph computes in float32 (onnxruntime's CPU provider has no "
                    "%s convolution), so its probabilities differ slightly from the library's",
                    member.source, member.config.compute_dtype, member.config.compute_dtype)
  size, channels = member.config.data.image_size, state.in_channels(member.config)
  try:
    with _without_transpose_pair_pass():
      model = jax2onnx.to_onnx(probability_function(member), [("B", size, size, channels)], return_mode="proto",
                               model_name=f"lgg_jax_{name}", input_names=["images"],
                               output_names=["probabilities"], opset=OPSET)
  except Exception as e:  # the converter raises many types for a layer it cannot take
    raise ValueError(f"model {name!r} ({member.source}) did not convert with jax2onnx {version}"
                     f"{_model_frame(e)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  for key, value in metadata(member).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
  partial = path.with_name(f".{path.name}.partial")
  try:
    onnx.save(model, str(partial))
    partial.rename(path)
  except BaseException as e:
    partial.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise OSError(e.errno, f"{path}: not written ({e.strerror or e})") from e
    raise
  return path


def copy_predict_script(folder) -> pathlib.Path:
  return pathlib.Path(shutil.copy(PREDICT_SCRIPT, pathlib.Path(folder) / PREDICT_SCRIPT.name))

