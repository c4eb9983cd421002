"""Segment new scans with a trained model (through `Segmenter`).

python -m lgg_jax.predict --workdir=runs/unet_cpu --input=PATH --out=predictions/ [--tta=dihedral]
    [--workdir=RUN_OR_EXPORT,...]   # several: an ensemble (their mean probability)
    [--model=pretrained]            # the shipped ensemble, no training needed

The masks are the models' post-processed masks (threshold, TTA, component
step as the model was scored: `inference.postprocess`); flags override them.

PATH may be
  * a folder of slices: <name>.tif / .png, 256x256, 3 channels (pre-contrast,
    FLAIR, post-contrast) as in the published dataset; a `<name>_mask.*`
    beside a slice is taken as its ground truth;
  * a folder of such patient folders (the kaggle_3m layout);
  * NIfTI: a folder holding three volumes whose names contain "pre", "flair"
    and "post" (and optionally one with "mask"), or a folder of such folders.
    Each volume is brought to RAS+ orientation from its affine, cut into
    axial slices shown as radiologists view them (anterior at the top, the
    patient's right on the left, as the published slices are) and resized
    to 256x256. uint8 volumes are taken as they are; others are scaled to
    0..255 by the volume's 99.5th percentile, as the published slices were.

Per case it writes: the predicted masks (PNG per slice, or `<case>_mask.nii.gz`
in the input's grid and orientation, with its affine and qform/sform codes),
overlay PNGs (truth green when given,
prediction red), `<case>.gif` through the slices, and `<case>_panel.png`
(image / truth / probability / thresholded mask on the slice with the most
tumour). Bad input (a wrong size or channel count, an unreadable file) is an
error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

import cv2
import nibabel as nib
import numpy as np
import tifffile
from absl import flags

from lgg_jax import cli, figures, metrics, segmenter
from lgg_jax.data import preprocess
from lgg_jax.data.kaggle import DataError

SIZE = preprocess.SOURCE_SIZE
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclasses.dataclass
class Case:
  name: str
  slice_names: list[str]
  images: np.ndarray             # (S, 256, 256, 3) uint8
  truth: np.ndarray | None       # (S, 256, 256) bool
  nifti: object | None = None    # NIfTI input only: the FLAIR image (grid, affine, header)


def _natural_key(path: pathlib.Path):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def read_slice(path: pathlib.Path, mask: bool = False) -> np.ndarray:
  try:
    if path.suffix.lower() == ".png":
      array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
      if array is None:
        raise ValueError("opencv could not decode it")
      if array.ndim == 3:
        array = array[..., ::-1]  # BGR -> RGB
    else:
      array = tifffile.imread(path)
  except Exception as e:
    raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
  if mask:
    if array.ndim == 3:
      array = array[..., 0]
    if array.shape != (SIZE, SIZE):
      raise DataError(f"{path}: mask shape {array.shape}, expected ({SIZE}, {SIZE})")
    return array > 0
  if array.ndim != 3 or array.shape[2] != 3:
    raise DataError(f"{path}: expected 3 channels (pre-contrast, FLAIR, post-contrast), got shape {array.shape}")
  if array.shape[:2] != (SIZE, SIZE):
    raise DataError(f"{path}: size {array.shape[:2]}, expected ({SIZE}, {SIZE})")
  if array.dtype != np.uint8:
    raise DataError(f"{path}: dtype {array.dtype}, expected uint8")
  return array


def _slice_folder(folder: pathlib.Path) -> Case | None:
  files = sorted((f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES), key=_natural_key)
  images = [f for f in files if not f.stem.endswith("_mask")]
  if not images:
    return None
  masks = {f.stem[:-5]: f for f in files if f.stem.endswith("_mask")}
  truth = None
  if masks:
    truth = np.stack([read_slice(masks[f.stem], mask=True) if f.stem in masks else np.zeros((SIZE, SIZE), bool)
                      for f in images])
  return Case(folder.name, [f.stem for f in images], np.stack([read_slice(f) for f in images]), truth)


def _scale(volume: np.ndarray) -> np.ndarray:
  top = float(np.percentile(volume, 99.5)) or 1.0
  return np.clip(volume / top * 255.0, 0, 255).astype(np.uint8)


_RAS = nib.orientations.axcodes2ornt("RAS")


def to_display_slices(ras_volume: np.ndarray) -> np.ndarray:
  """(X, Y, Z, ...) in RAS+ -> (Z, Y, X, ...) axial slices, anterior at the top
  and the patient's right on the left (slice[r, c] = volume[X-1-c, Y-1-r, k])."""
  return np.flip(np.moveaxis(ras_volume, (0, 1, 2), (2, 1, 0)), axis=(1, 2))


def from_display_slices(slices: np.ndarray) -> np.ndarray:
  return np.moveaxis(np.flip(slices, axis=(1, 2)), (2, 1, 0), (0, 1, 2))


def _nifti_case(folder: pathlib.Path) -> Case | None:
  files = [f for f in folder.iterdir() if f.name.endswith((".nii", ".nii.gz"))]
  if not files:
    return None
  found = {}
  for role in ("mask", "flair", "post", "pre"):
    match = [f for f in files if role in f.name.lower() and f not in found.values()]
    if match:
      found[role] = match[0]
  missing = [r for r in ("pre", "flair", "post") if r not in found]
  if missing:
    raise DataError(f"{folder}: NIfTI case needs volumes named *pre*, *flair*, *post*; missing {missing}")
  volumes, reference = {}, None
  for role, path in found.items():
    try:
      img = nib.load(str(path))
      data = np.asarray(img.dataobj, np.float32)
    except Exception as e:
      raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
    if data.ndim != 3:
      raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if role != "mask" and img.get_data_dtype() != np.uint8:
      data = _scale(data)
    to_ras = nib.orientations.ornt_transform(nib.io_orientation(img.affine), _RAS)
    volumes[role] = to_display_slices(nib.orientations.apply_orientation(data, to_ras))
    reference = img if role == "flair" else reference
  shape = volumes["flair"].shape
  for role, data in volumes.items():
    if data.shape != shape:
      raise DataError(f"{found[role]}: shape {data.shape} in RAS+ differs from the FLAIR volume's {shape}")

  def resized(volume, interpolation):
    return np.stack([cv2.resize(s, (SIZE, SIZE), interpolation=interpolation) for s in volume])

  channels = [resized(volumes[r].astype(np.uint8), cv2.INTER_AREA) for r in ("pre", "flair", "post")]
  truth = resized((volumes["mask"] > 0).astype(np.uint8), cv2.INTER_NEAREST) > 0 if "mask" in volumes else None
  return Case(folder.name, [f"slice_{k + 1:03d}" for k in range(shape[0])], np.stack(channels, -1), truth,
              nifti=reference)


def write_nifti_mask(case: Case, pred: np.ndarray, path: pathlib.Path) -> None:
  """The masks back in the input's grid, orientation, affine and qform/sform codes."""
  reference = case.nifti
  orientation = nib.io_orientation(reference.affine)
  ras_shape = nib.orientations.apply_orientation(np.zeros(reference.shape[:3], bool),
                                                 nib.orientations.ornt_transform(orientation, _RAS)).shape
  rows, columns = ras_shape[1], ras_shape[0]  # display slices are (Y, X)
  slices = np.stack([cv2.resize(p.astype(np.uint8), (columns, rows), interpolation=cv2.INTER_NEAREST)
                     for p in pred])
  from_ras = nib.orientations.ornt_transform(_RAS, orientation)
  volume = nib.orientations.apply_orientation(from_display_slices(slices), from_ras).astype(np.uint8)
  header = reference.header.copy()
  header.set_data_dtype(np.uint8)
  image = nib.Nifti1Image(volume, reference.affine, header=header)
  image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
  image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
  nib.save(image, str(path))


def find_cases(path: str | os.PathLike) -> list[Case]:
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise DataError(f"input {path} does not exist")
  if path.is_file():
    image = read_slice(path)
    return [Case(path.stem, [path.stem], image[None], None)]
  for reader in (_nifti_case, _slice_folder):
    case = reader(path)
    if case is not None:
      return [case]
  cases = []
  for sub in sorted(p for p in path.iterdir() if p.is_dir()):
    case = _nifti_case(sub) or _slice_folder(sub)
    if case is not None:
      cases.append(case)
  if not cases:
    raise DataError(f"input {path} holds no slices (.tif/.png), patient folders or NIfTI volumes")
  return cases


def describe(settings) -> str:
  """The post-processing in a few words, for figure titles."""
  words = f"p >= {settings.threshold:.2f}"
  if settings.largest_component:
    words += ", largest component"
    if settings.component_fraction:
      words += f" and those >= {settings.component_fraction:g} of it"
  return words


def write_case(case: Case, probs: np.ndarray, pred: np.ndarray, settings, out: pathlib.Path) -> dict:
  """Masks (the post-processed `pred`), overlays, GIF and panel of one case."""
  folder = out / case.name
  (folder / "overlays").mkdir(parents=True, exist_ok=True)
  if case.nifti is not None:
    write_nifti_mask(case, pred, folder / f"{case.name}_mask.nii.gz")
  else:
    (folder / "masks").mkdir(exist_ok=True)
    for name, p in zip(case.slice_names, pred):
      cv2.imwrite(str(folder / "masks" / f"{name}_pred.png"), np.where(p, 255, 0).astype(np.uint8))
  frames = []
  for i, name in enumerate(case.slice_names):
    frame = figures.overlay(case.images[i], pred[i], truth=None if case.truth is None else case.truth[i])
    cv2.imwrite(str(folder / "overlays" / f"{name}.png"), frame[..., ::-1])
    frames.append(frame)
  figures.gif(frames, folder / f"{case.name}.gif")
  area = (case.truth if case.truth is not None else pred).sum(axis=(1, 2))
  k = int(np.argmax(area))
  figures.prediction_panel(case.images[k], None if case.truth is None else case.truth[k], probs[k], pred[k],
                           folder / f"{case.name}_panel.png", title=f"{case.name}, {case.slice_names[k]}",
                           mask_title=f"prediction ({describe(settings)})")
  result = {"case": case.name, "slices": len(case.slice_names), "predicted_pixels": int(pred.sum()),
            "slices_with_tumour_predicted": int(pred.any(axis=(1, 2)).sum())}
  if case.truth is not None:
    result["dice"] = float(metrics.dice_from_counts((pred & case.truth).sum(), pred.sum(), case.truth.sum()))
  return result


def predict(models, input_path, out, *, checkpoint="best", tta=None, threshold=None, largest_component=None,
            component_fraction=None) -> list[dict]:
  """Masks, overlays, GIFs and panels for every case under `input_path`.
  `models`: a run folder, an export or a pretrained name, or a list of them
  (their mean probability). Masks come from the one inference path with the
  models' own settings; a given setting overrides theirs."""
  cases = find_cases(input_path)  # validate input before loading the model
  seg = segmenter.Segmenter.load(models, checkpoint)
  settings = seg.settings.replace(tta=tta or None, threshold=threshold, largest_component=largest_component,
                                  component_fraction=component_fraction)
  out = pathlib.Path(out)
  results = []
  for case in cli.progress(cases, desc="predict", unit="case"):
    probs, pred = seg.segment(case.images, **settings.as_dict())
    results.append(write_case(case, probs, pred, settings, out))
  if cli.is_main_process():
    (out / "predictions.json").write_text(json.dumps(
        {"models": [m.source for m in seg.members], "inference": settings.as_dict(), "cases": results}, indent=2))
  return results


def main(argv):
  del argv
  models = _MODEL.value or _WORKDIR.value
  if not models:
    raise ValueError("give --model=EXPORT|pretrained[,...] or --workdir=RUN[,...]")
  results = predict(models, _INPUT.value, _OUT.value, checkpoint=_CHECKPOINT.value, tta=_TTA.value or None,
                    threshold=None if _THRESHOLD.value < 0 else _THRESHOLD.value, largest_component=_LCC.value,
                    component_fraction=_FRACTION.value)
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_list("workdir", None, "Run folder(s) or export(s); several: an ensemble (mean probability).")
  _MODEL = flags.DEFINE_list("model", None, "The same as --workdir, or 'pretrained' (the shipped ensemble).")
  _INPUT = flags.DEFINE_string("input", None, "Slices, patient folders or NIfTI volumes (see module doc).")
  _OUT = flags.DEFINE_string("out", "predictions", "Output folder.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _TTA = flags.DEFINE_enum("tta", "", ["", "none", "flips", "dihedral"], "Test-time augmentation; "
                           "empty: the run's config.inference.tta.")
  _THRESHOLD = flags.DEFINE_float("threshold", -1.0, "Probability threshold; negative: the model's own.")
  _LCC = flags.DEFINE_bool("largest_component", None, "Keep each case's largest 3-D component "
                           "(--nolargest_component: do not); unset: the model's own setting.")
  _FRACTION = flags.DEFINE_float("component_fraction", None, "With the component step, also keep every "
                                 "component of at least this fraction of the largest; unset: the model's.")
  flags.mark_flags_as_required(["input"])
  cli.run(main)
