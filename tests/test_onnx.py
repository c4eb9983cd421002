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

from lgg_jax import Segmenter, inference, onnx_export, parallel, predict, pretrained, state  # noqa: E402
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
  # onnxruntime before 1.22 refuses opset 23, jax2onnx's default (checked with 1.20.1).
  import onnx
  assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [21]
  expected = np.asarray(inference.make_probability_step(member.graphdef, "none", 256)(member.variables, images))
  got = np.load(tmp_path / "out.npy")
  assert got.shape == expected.shape == (3, 256, 256)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_bfloat16_member_exports_a_float32_graph_that_onnxruntime_loads(tmp_path):
  """A graph computing in bfloat16 failed to load: onnxruntime's CPU provider
  has no bfloat16 Conv (INVALID_GRAPH)."""
  member = _tiny_member("unet")
  member.config.compute_dtype = "bfloat16"
  member = inference.Member(member.config, state.abstract_variables(member.config)[0], member.variables, 0,
                            "tiny bfloat16 unet")
  path = onnx_export.export_onnx(member, tmp_path / "model.onnx")
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 9)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  run = subprocess.run([sys.executable, "-c", RUN_ONNX, str(path), str(tmp_path / "images.npy"),
                        str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=_no_jax_env())
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads(run.stdout.strip().splitlines()[-1])["lgg_jax.compute_dtype"].startswith("float32")
  got = np.load(tmp_path / "out.npy")
  assert got.dtype == np.float32
  library = np.asarray(inference.make_probability_step(member.graphdef, "none", 256)(member.variables, images))
  assert library.dtype == np.float32 and np.abs(got - library).max() < 0.05  # bfloat16 rounding, not another model
  float32_member = _tiny_member("unet")
  np.testing.assert_allclose(got, inference.make_probability_step(float32_member.graphdef, "none", 256)(
      member.variables, images), atol=1e-4)


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


SCRIPT_WITHOUT_JAX = ("import runpy, sys\n"
                      "script = sys.argv.pop(1)\n"
                      "sys.argv[0] = script\n"
                      "runpy.run_path(script, run_name='__main__')\n"
                      "assert 'jax' not in sys.modules, 'the reference script imported jax'\n")


def _run_script(folder, models, slices):
  np.save(folder / "slices.npy", slices)
  run = subprocess.run([sys.executable, "-c", SCRIPT_WITHOUT_JAX, str(folder / "onnx_predict.py"),
                        *map(str, models), str(folder / "slices.npy"), str(folder / "masks.npy")],
                       capture_output=True, text=True, timeout=900, env=_no_jax_env(), cwd=folder)
  assert run.returncode == 0, run.stderr[-3000:]
  return np.load(folder / "masks.npy")


def test_the_reference_script_gives_the_pretrained_ensembles_masks_on_a_real_patient(tmp_path):
  """All five shipped members through onnxruntime and the script: the
  masks `Segmenter.load("pretrained")` gives, component step included (on
  this patient it removes about half of the thresholded voxels)."""
  require(REAL_DATA, "../shared/data/lgg_dev")
  written = export_lib.export_members_onnx(["pretrained"], tmp_path)
  assert [p.name for p in written] == [f"fold{k}.onnx" for k in range(5)]
  case = predict.find_cases(next(REAL_DATA.glob("TCGA_CS_5395_*")))[0]
  seg = Segmenter.load(pretrained.DEFAULT)
  assert seg.settings.largest_component
  library = seg.predict(case.images, masks=True)
  thresholded = seg.predict(case.images) >= seg.threshold
  assert (thresholded != library).sum() > 0.3 * thresholded.sum()  # the component step matters here
  ours = _run_script(tmp_path, written, case.images)
  assert ours.shape == library.shape and ours.dtype == bool and library.sum() > 1000
  assert (ours != library).sum() <= 0.001 * library.sum(), ((ours != library).sum(), library.sum())


@pytest.mark.parametrize("tta, rank, fraction", [("dihedral", "probability_sum", 0.0), ("flips", "volume", 0.3),
                                                 ("none", "probability_max", 0.0)])
def test_the_reference_script_applies_the_views_and_component_rule_it_was_scored_with(tmp_path, tta, rank, fraction):
  member = _tiny_member("unet")
  volume = np.random.default_rng(2).integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
  plain = inference.Predictor(member, settings=member.settings.replace(tta=tta)).predict_volume(volume)
  threshold = float(np.quantile(plain, 0.9))  # a tenth of the voxels, in many components
  member.settings = member.settings.replace(tta=tta, threshold=threshold, largest_component=True,
                                            component_rank=rank, component_fraction=fraction)
  library = inference.postprocess(plain, member.settings)
  assert library.any() and (library != (plain >= threshold)).sum() > 0.01 * library.size
  onnx_export.export_onnx(member, tmp_path / "model.onnx")
  onnx_export.copy_predict_script(tmp_path)
  ours = _run_script(tmp_path, [tmp_path / "model.onnx"], volume)
  assert (ours != library).sum() <= 0.001 * library.sum(), ((ours != library).sum(), library.sum())


def test_the_scripts_views_and_settings_are_the_librarys():
  from lgg_jax import onnx_predict, registry
  assert set(onnx_predict.SETTINGS) == set(inference.Settings.names())
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  for tta in registry.names("tta"):
    ours, theirs = onnx_predict.views(tta), registry.get("tta", tta)()
    assert len(ours) == len(theirs)
    for (forward, inverse), (jax_forward, jax_inverse) in zip(ours, theirs):
      np.testing.assert_array_equal(forward(x), np.asarray(jax_forward(x)))
      np.testing.assert_array_equal(inverse(x), np.asarray(jax_inverse(x)))


def test_the_script_refuses_slices_the_library_refuses_naming_the_file_and_mixed_settings(tmp_path):
  from lgg_jax import onnx_predict
  with pytest.raises(ValueError, match="slices.npy: dtype uint16, want uint8"):
    onnx_predict.check_slices(np.zeros((2, 256, 256, 3), np.uint16), "slices.npy")
  with pytest.raises(ValueError, match=r"slices.npy: shape \(2, 240, 240, 3\), want \(slices, 256, 256, 3\)"):
    onnx_predict.check_slices(np.zeros((2, 240, 240, 3), np.uint8), "slices.npy")
  member = _tiny_member("unet")
  onnx_export.export_onnx(member, tmp_path / "a.onnx")
  member.settings = member.settings.replace(tta="flips")
  onnx_export.export_onnx(member, tmp_path / "b.onnx")
  with pytest.raises(ValueError, match="b.onnx and .*a.onnx disagree on their inference settings"):
    onnx_predict.segment([str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")], np.zeros((2, 256, 256, 3), np.uint8))


def test_a_failed_write_leaves_no_partial_file_and_names_the_target(tmp_path, monkeypatch):
  import onnx

  def full_disk(model, path):
    pathlib.Path(path).write_bytes(b"half")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(onnx, "save", full_disk)
  with pytest.raises(OSError, match=r"model.onnx: not written \(No space left"):
    onnx_export.export_onnx(_tiny_member("unet"), tmp_path / "model.onnx")
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("size, normalization, neighbours", [(128, "patient", 1), (64, "patient", 1),
                                                              (128, "unit", 0), (256, "slice", 2)])
def test_the_reference_preparation_is_the_librarys(size, normalization, neighbours):
  from lgg_jax import onnx_predict
  from lgg_jax.data import preprocess
  member = _tiny_member("unet")
  member.config.data.image_size, member.config.data.normalization = size, normalization
  member.config.data.neighbours = neighbours
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
