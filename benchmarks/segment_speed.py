"""What segmenting a patient costs a user: size on disk, load time, and time per patient.

python -m benchmarks.segment_speed [--model=pretrained] [--input=PATIENT_FOLDER] [--tta_modes=none,flips,dihedral]

`--model` takes what `lgg_jax.predict --model` takes (pretrained, exports, run
folders; several: an ensemble; one repeated: that many copies, to time an
ensemble's size before it exists). `--input` is a patient folder (default: the
dev patient of ../shared/data/lgg_dev with the slice count nearest 40, else a
synthetic one of 40). Printed as a markdown table: the model's files on disk, the load
(files read, SHA256 checked for a pretrained model, weights on the device),
the first patient (compilation included) and the median of `--repeats`
later patients, for each TTA mode, with the shipped post-processing.
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import flags

from lgg_jax import cli, command_flags, loading, predict, pretrained, segmenter
from lgg_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "lgg_dev" / "kaggle_3m"

_TTA_MODES = flags.DEFINE_list("tta_modes", ["none", "flips", "dihedral"], "TTA modes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed patients per TTA mode after the first.")
# Shared with lgg_jax.predict: --model (default: pretrained), --input (a
# patient folder; unset: the dev patient nearest 40 slices, else a synthetic
# one), --onnx (also time the first model's ONNX export in onnxruntime
# against its JAX forward pass on the same inputs; the [onnx] extra).
command_flags.take("model", "input", "onnx")


def time_onnx(models: list[str], volume: np.ndarray, repeats: int) -> dict:
  """One member, a patient's slices to probabilities at 256x256: onnxruntime
  (CPU provider, default threads) with onnx_predict.py's preparation against
  the library's inference path (no TTA)."""
  import onnxruntime as ort
  from lgg_jax import inference, onnx_export, onnx_predict
  seg = segmenter.Segmenter.load(loading.cli_models(models))
  member = seg.members[0]
  predictor = inference.Predictor(member, settings=member.settings.replace(tta="none"))
  with tempfile.TemporaryDirectory(prefix="segment_speed_onnx_") as tmp:
    started = time.perf_counter()
    path = onnx_export.export_onnx(member, pathlib.Path(tmp) / "model.onnx")
    convert_s = time.perf_counter() - started
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    runs = {"onnxruntime": lambda: session.run(None, {"images": onnx_predict.prepare(volume, meta)})[0],
            "jax": lambda: predictor.predict_volume(volume)}
    times = {}
    for name, run in runs.items():
      run()  # the first call compiles (jax) or plans (onnxruntime)
      samples = []
      for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
      times[name] = statistics.median(samples)
    difference = float(np.abs(runs["onnxruntime"]() - runs["jax"]()).max())
  return {"member": member.source, "convert_s": convert_s, "max_difference": difference, **times}


def _files_bytes(paths) -> int:
  total = 0
  for path in paths:
    path = pathlib.Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    total += sum(p.stat().st_size for p in files)
  return total


def patient(folder: str) -> tuple[str, np.ndarray]:
  if folder:
    case = predict.find_cases(folder)[0]
    return case.name, case.images
  if DEV.is_dir():
    slices = {sub: len([f for f in sub.glob("*.tif") if not f.stem.endswith("_mask")])
              for sub in sorted(p for p in DEV.iterdir() if p.is_dir())}
    if slices:
      case = predict.find_cases(min(slices, key=lambda sub: abs(slices[sub] - 40)))[0]
      return case.name, case.images
  spec = synthetic.SyntheticSpec(num_patients=1, min_slices=40, max_slices=40, seed=0)
  root = synthetic.write_dataset(pathlib.Path(tempfile.mkdtemp(prefix="segment_speed_")), spec)
  case = predict.find_cases(next(p for p in root.rglob("*") if p.is_dir() and any(p.glob("*.tif"))))[0]
  return f"synthetic {case.name}", case.images


def measure(models: list[str], volume: np.ndarray, ttas: list[str], repeats: int) -> dict:
  models = loading.cli_models(models)
  on_disk = {pretrained.model_dir(m) if pretrained.is_pretrained_name(m) else pathlib.Path(m) for m in models}
  started = time.perf_counter()
  seg = segmenter.Segmenter.load(models)
  jax.block_until_ready([m.variables for m in seg.members])
  load_s = time.perf_counter() - started
  rows = []
  for tta in ttas:
    times = []
    for _ in range(repeats + 1):
      started = time.perf_counter()
      seg.segment(volume, tta=tta)
      times.append(time.perf_counter() - started)
    rows.append({"tta": tta, "first_s": times[0], "patient_s": statistics.median(times[1:])})
  return {"members": len(seg.members), "bytes": _files_bytes(on_disk), "load_s": load_s,
          "settings": seg.settings.as_dict(), "rows": rows, "predict": time_predict(seg, volume, repeats)}


def time_predict(seg, volume: np.ndarray, repeats: int) -> list[dict]:
  """What a user waits per patient in `predict`: Segmenter.assess (the quality
  estimate's members or mirrored pass included) and every file written (masks,
  overlays, GIF, panel, predictions.json), without and with --save_probabilities;
  the shipped settings, after a first patient that compiles."""
  case = predict.Case("speed", [f"slice_{i + 1}" for i in range(len(volume))], volume, None)
  rows = []
  with tempfile.TemporaryDirectory(prefix="segment_speed_") as tmp:
    for save in (False, True):
      times = []
      for r in range(repeats + 1):
        started = time.perf_counter()
        predict.predict_cases(seg, [case], pathlib.Path(tmp) / f"{save}{r}", seg.settings, save_probabilities=save)
        times.append(time.perf_counter() - started)
      assess = []
      for _ in range(repeats):
        started = time.perf_counter()
        seg.assess(volume)
        assess.append(time.perf_counter() - started)
      rows.append({"save_probabilities": save, "patient_s": statistics.median(times[1:]),
                   "assess_s": statistics.median(assess)})
  return rows


def main(argv):
  del argv
  models = command_flags.MODEL.value or ["pretrained"]
  name, volume = patient(command_flags.INPUT.value or "")
  result = measure(models, volume, _TTA_MODES.value, _REPEATS.value)
  print(f"\n{result['members']} members ({','.join(models)}), {result['bytes'] / 1e6:.2f} MB on disk, "
        f"loaded in {result['load_s']:.1f} s; patient {name}, {len(volume)} slices; "
        f"{jax.device_count()} {jax.default_backend()} device(s); shipped settings {result['settings']}\n")
  print("| TTA | first patient (compiles), s | per patient after, s (median) |\n|---|---|---|")
  for row in result["rows"]:
    print(f"| {row['tta']} | {row['first_s']:.1f} | {row['patient_s']:.1f} |")
  print("\n| predict, shipped settings | per patient with every file written, s (median) | of it Segmenter.assess, s |"
        "\n|---|---|---|")
  for row in result["predict"]:
    print(f"| {'--save_probabilities' if row['save_probabilities'] else 'default'} | {row['patient_s']:.1f} | "
          f"{row['assess_s']:.1f} |")
  if command_flags.ONNX.value:
    onnx = time_onnx(models, volume, _REPEATS.value)
    print(f"\n| {onnx['member']}: {len(volume)} slices to probabilities | s (median) |\n|---|---|\n"
          f"| JAX (the library's inference path) | {onnx['jax']:.2f} |\n"
          f"| onnxruntime (onnx_predict.prepare + the graph) | {onnx['onnxruntime']:.2f} |\n\n"
          f"conversion {onnx['convert_s']:.1f} s; largest probability difference {onnx['max_difference']:.1e}")


if __name__ == "__main__":
  cli.run(main, renamed_flags={"tta": "renamed here: --tta_modes=none,flips,dihedral (the modes to time)"})
