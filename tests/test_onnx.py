"""ONNX export (the [onnx] extra; CI runs this file in its own venv: `bash .ci/run onnx`).

onnxruntime, in a child process that imports no jax, must give the library's
probabilities to 1e-4 for each model family that converts, and the reference
script's mask must match the library's on a real patient."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REAL_DATA, import_or_skip, require

import_or_skip("jax2onnx", 'the [onnx] extra: pip install -e ".[onnx]"')
import_or_skip("onnxruntime", 'the [onnx] extra: pip install -e ".[onnx]"')

from lgg_jax import inference, loading, onnx_export, parallel, predict, state  # noqa: E402
from lgg_jax import export as export_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_MEMBER = REPO / "lgg_jax" / "pretrained" / "recipe_cpu" / "fold0"

RUN_ONNX = """
import json, sys
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = session.run(None, {"images": np.load(sys.argv[2])})[0]
np.save(sys.argv[3], out)
assert "jax" not in sys.modules, "the ONNX side imported jax"
print(json.dumps(session.get_modelmeta().custom_metadata_map))
"""


def _no_jax_env():
  return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}


def _tiny_member(name: str, norm: str = "none", neighbours: int = 1) -> inference.Member:
  import tiny_config
  config = tiny_config.get_config()  # every model at tiny widths
  config.model.name, config.model.unet.norm = name, norm
  config.data.image_size = 32 if name == "unet" else 64
  config.data.neighbours, config.data.normalization = neighbours, "patient"
  graphdefs, params, model_state = state.split_model(state.create_model(config))
  if norm == "batch":  # statistics away from (0, 1), so the export must carry them
    model_state = jax.tree.map(lambda v: v + 0.3 * np.random.default_rng(1).standard_normal(v.shape).astype(v.dtype)
                               if v.ndim else v, model_state)
    model_state = jax.tree_util.tree_map_with_path(
        lambda path, v: np.abs(v) + 0.5 if "var" in str(path[-1]) else v, model_state)
  variables = parallel.replicate({"params": params, "model_state": model_state}, parallel.make_mesh())
  return inference.Member(config, graphdefs["eval"], variables, 0, f"tiny {name}")


@pytest.mark.parametrize("name, norm", [("unet", "none"), ("unet", "batch"), ("fpn", "none"),
                                        ("resnext_unet", "batch")])
def test_onnxruntime_gives_the_librarys_probabilities(tmp_path, name, norm):
  member = _tiny_member(name, norm)
  path = onnx_export.export_onnx(member, tmp_path / "model.onnx")
  size, channels = member.config.data.image_size, state.in_channels(member.config)
  images = np.random.default_rng(0).standard_normal((3, size, size, channels)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  run = subprocess.run([sys.executable, "-c", RUN_ONNX, str(path), str(tmp_path / "images.npy"),
                        str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=_no_jax_env())
  assert run.returncode == 0, run.stderr[-3000:]
  meta = json.loads(run.stdout.strip().splitlines()[-1])
  assert meta["lgg_jax.input_size"] == str(size) and meta["lgg_jax.neighbours"] == "1"
  expected = np.asarray(inference.make_probability_step(member.graphdef, "none", 256)(member.variables, images))
  got = np.load(tmp_path / "out.npy")
  assert got.shape == expected.shape == (3, 256, 256)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_upsampling_matrix_is_the_librarys_resize():
  probabilities = np.random.default_rng(0).uniform(size=(2, 128, 128)).astype(np.float32)
  matrix = inference.upsample_matrix(128, 256)
  np.testing.assert_allclose(np.einsum("ih,bhw,jw->bij", matrix, probabilities, matrix),
                             inference.upsample_probabilities(probabilities, 256), atol=1e-6)


def test_a_layer_that_does_not_convert_is_an_error_naming_it_and_the_converter(tmp_path, monkeypatch):
  import jax2onnx
  member = _tiny_member("unet")

  def refuse(fn, *args, **kwargs):  # as a converter fails inside a layer: through the model's code
    from lgg_jax.models import layers
    original = layers.max_pool2

    def no_handler(x):
      raise NotImplementedError("No ONNX handler for primitive 'reduce_window_max'")

    monkeypatch.setattr(layers, "max_pool2", no_handler)
    monkeypatch.setattr("lgg_jax.models.unet.max_pool2", no_handler)
    try:
      fn(np.zeros((1, 32, 32, 9), np.float32))
    finally:
      layers.max_pool2 = original

  monkeypatch.setattr(jax2onnx, "to_onnx", refuse)
  with pytest.raises(ValueError, match=r"'unet'.*did not convert with jax2onnx [0-9.]+ at "
                     r"lgg_jax/models/unet\.py:\d+ \(__call__\).*reduce_window_max"):
    onnx_export.export_onnx(member, tmp_path / "model.onnx")
  assert not list(tmp_path.iterdir())  # nothing half-written
  member.config.model.name = "vnet"
  with pytest.raises(ValueError, match=r"'vnet'.*no ONNX export with jax2onnx"):
    onnx_export.export_onnx(member, tmp_path / "model.onnx")


def test_without_the_extra_the_error_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[onnx\]"'):
    onnx_export.export_onnx(_tiny_member("unet"), "/nonexistent/model.onnx")


def test_members_sharing_a_folder_name_are_refused_before_any_file_is_written(tmp_path):
  twin = tmp_path / "elsewhere" / SHIPPED_MEMBER.name
  shutil.copytree(SHIPPED_MEMBER, twin)
  with pytest.raises(ValueError, match=f"{twin}.*share a folder name"):
    export_lib.export_members_onnx([str(SHIPPED_MEMBER), str(twin)], tmp_path / "onnx")
  assert not (tmp_path / "onnx").exists()


def test_the_reference_script_masks_a_real_patient_as_the_library_does(tmp_path):
  require(REAL_DATA, "../shared/data/lgg_dev")
  written = export_lib.export_members_onnx([str(SHIPPED_MEMBER)], tmp_path)
  assert [p.name for p in written] == ["fold0.onnx"] and (tmp_path / "onnx_predict.py").is_file()
  member = loading.member_from_export(SHIPPED_MEMBER)
  case = predict.find_cases(REAL_DATA / "TCGA_DU_5849_19950405")[0]
  np.save(tmp_path / "slices.npy", case.images)
  script = ("import runpy, sys\n"
            "sys.argv = ['onnx_predict.py'] + sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0].replace('onnx_predict.py', %r), run_name='__main__')\n"
            "assert 'jax' not in sys.modules, 'the reference script imported jax'\n") % str(tmp_path / "onnx_predict.py")
  run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "fold0.onnx"), str(tmp_path / "slices.npy"),
                        str(tmp_path / "masks.npy")], capture_output=True, text=True, timeout=600,
                       env=_no_jax_env(), cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  ours = np.load(tmp_path / "masks.npy")
  library = inference.Predictor(member, settings=member.settings.replace(tta="none")).predict_volume(case.images)
  library = library >= member.settings.threshold
  assert ours.shape == library.shape and library.sum() > 1000
  assert (ours != library).sum() <= 0.001 * library.sum(), ((ours != library).sum(), library.sum())


@pytest.mark.parametrize("size", [128, 64])
def test_the_reference_preparation_is_the_librarys(size):
  from lgg_jax import onnx_predict
  from lgg_jax.data import preprocess
  member = _tiny_member("unet")
  member.config.data.image_size = size
  volume = np.random.default_rng(0).integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
  volume[:, :40] = 0  # background, left out of the patient's statistics
  meta = onnx_export.metadata(member)
  np.testing.assert_allclose(onnx_predict.prepare(volume, meta), preprocess.model_inputs(volume, member.config.data),
                             atol=1e-5)
  black = np.zeros_like(volume)
  np.testing.assert_allclose(onnx_predict.prepare(black, meta), preprocess.model_inputs(black, member.config.data),
                             atol=1e-5)
  meta["lgg_jax.input_size"] = "96"
  with pytest.raises(ValueError, match="does not divide 256"):
    onnx_predict.prepare(volume, meta)
