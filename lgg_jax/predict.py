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
  * NIfTI: a folder holding volumes whose names contain "pre", "flair" and
    "post" (and optionally one with "mask"), or BraTS names (`*_t1` pre-contrast,
    `*_t1ce` / `*_t1gd` post-contrast, `*_flair`, `*_seg` the mask, labels > 0;
    BraTS 2023 `-t1n`, `-t1c`, `-t2f`, `-seg`; T2 and a brain mask (a name with
    "mask" and "brain" or "skull") are ignored, with a warning);
    or one 4-D volume (x, y, z, 3) holding pre-contrast, FLAIR and
    post-contrast in that order; or a folder of such folders; or one NIfTI file
    (a 4-D stack, or a 3-D volume read as FLAIR). FLAIR is required; a missing
    pre- or post-contrast volume gets FLAIR in its channel, as the dataset does
    for its patients without them, with a warning naming the substitution;
    a volume whose name gives no role is ignored, with a warning.
    Each volume is brought to RAS+ orientation from its affine, cut into
    axial slices shown as radiologists view them (anterior at the top, the
    patient's right on the left, as the published slices are) and resized
    onto 256x256 keeping its proportions in mm (the longer side fills it,
    the other is centred on black; the written volumes undo this). The
    volumes must share one voxel grid in space (else an error naming the
    file). A name's roles are read from its whole words
    (`t1ce_preop` is post-contrast: `preop` says when, not which; `T1w` with
    `ce-gd` is post-contrast); a name saying two sequences is an error. uint8
    volumes stored unscaled are taken as they are; others are scaled
    linearly so that the volume's (a 4-D stack: each channel's) 99.99th
    percentile sits where it sits in the published slices (196 of 255).

Per case it writes: the predicted masks (PNG per slice for slice folders), the
compressed NIfTI volumes the review page shows (`<case>_pre`, `_flair`,
`_post`: the image as the model saw it; `_mask`; with a truth `_truth` and
`_errors`, labels 1 found, 2 false positive, 3 missed; with
`--save_probabilities` the mean probability and the voxel-wise uncertainty as
float32), in the input's grid and orientation with its affine and qform/sform
codes for NIfTI input, and for slice folders as RAS+ volumes of 1 x 1 x 1
voxels, slices in order, anterior at the top; `<case>_panel.png` (image /
truth / probability / thresholded mask on the slice with the most tumour);
with `--overlays`, overlay PNGs per slice (truth green when given, prediction
red) and `<case>.gif` through the slices. Then `predictions.json` and the
page's index `review.json`: `python -m lgg_jax.review OUT` shows them. Bad
input (a wrong size or channel count, an unreadable file) is an
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
from absl import flags, logging

from lgg_jax import cli, command_flags, figures, loading, metrics, review, segmenter
from lgg_jax.data import preprocess
from lgg_jax.data import kaggle
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

  def __post_init__(self):
    if self.name in ("", ".", "..") or "/" in self.name:  # it names the case's output folder and files
      raise DataError(f"case name {self.name!r} (from its folder or file name) cannot name an output folder")


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
  files = sorted((f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES), key=lambda f: kaggle.natural_key(f.name))
  images = [f for f in files if not f.stem.endswith("_mask")]
  if not images:
    return None
  stems = {}
  for f in images:
    if f.stem in stems:
      raise DataError(f"{folder}: {stems[f.stem].name} and {f.name} are both slice {f.stem}; keep one")
    stems[f.stem] = f
  masks = {f.stem[:-5]: f for f in files if f.stem.endswith("_mask")}
  orphans = sorted(str(m) for stem, m in masks.items() if stem not in stems)
  if orphans:
    raise DataError(f"{', '.join(orphans[:3])}: a mask without its slice (expected "
                    f"{pathlib.Path(orphans[0]).name.replace('_mask', '')} beside it)")
  truth = None
  if masks:
    truth = np.stack([read_slice(masks[f.stem], mask=True) if f.stem in masks else np.zeros((SIZE, SIZE), bool)
                      for f in images])
  return Case(folder.name, [f.stem for f in images], np.stack([read_slice(f) for f in images]), truth)


# Where the published volumes put their 99.99th percentile (the median over the
# 62 dev patients' three sequences, 195-197 of 255; their maximum is near 255):
# benchmarks/nifti_intensity.py, RESULTS.md. A percentile so high sits near the
# maximum yet does not follow one hot voxel.
PUBLISHED_P9999 = 196.0


def _scale(volume: np.ndarray) -> np.ndarray:
  """Scanner units -> 0..255 as the published slices were scaled."""
  top = float(np.percentile(volume, 99.99)) or 1.0
  return np.clip(np.rint(volume / top * PUBLISHED_P9999), 0, 255).astype(np.uint8)


_RAS = nib.orientations.axcodes2ornt("RAS")


def to_display_slices(ras_volume: np.ndarray) -> np.ndarray:
  """(X, Y, Z, ...) in RAS+ -> (Z, Y, X, ...) axial slices, anterior at the top
  and the patient's right on the left (slice[r, c] = volume[X-1-c, Y-1-r, k])."""
  return np.flip(np.moveaxis(ras_volume, (0, 1, 2), (2, 1, 0)), axis=(1, 2))


def from_display_slices(slices: np.ndarray) -> np.ndarray:
  return np.moveaxis(np.flip(slices, axis=(1, 2)), (2, 1, 0), (0, 1, 2))


_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_ROLES = ("pre", "flair", "post")  # the model's input channels, in order
_ROLE_NAMES = {"pre": "pre-contrast", "flair": "FLAIR", "post": "post-contrast", "mask": "mask", "t2": "T2",
               "brain": "brain mask"}
_BRAIN_WORDS = ("brain", "skull")  # a skull-stripping mask is no tumour truth
# Whole words of a name (split at anything not a letter or digit), so that `t1`
# does not catch `t1ce` and `preop` is no pre-contrast: BraTS 2018-2021 (`_t1`,
# `_t1ce`), 2023 (`-t1n`, `-t1c`, `-t2f`, `-t2w`), BIDS (`T1w`, `ce-gd`), plain words.
_WORD_ROLES = {"t1": "pre", "t1n": "pre", "t1w": "pre", "pre": "pre", "precontrast": "pre",
               "t1ce": "post", "t1gd": "post", "t1c": "post", "post": "post", "postcontrast": "post",
               "flair": "flair", "t2f": "flair", "seg": "mask", "mask": "mask", "t2": "t2", "t2w": "t2"}
_PLAIN_T1_WORDS = ("t1", "t1w")  # T1 with no contrast named: pre-contrast unless a contrast word says otherwise
_CONTRAST_WORDS = ("ce", "gd", "gad", "gado", "gadolinium", "contrast", "enhanced")
_NAMED_ROLES = ("mask", "flair", "post", "pre")  # words run together ("case1flair"): the first inside wins
_SESSION_WORDS = re.compile(r"(pre|post)[-_]?op(erative)?")  # when a scan was taken, not its contrast
_STACK = "stack"  # a 4-D (x, y, z, 3) volume: all three channels
_EXPECTED_SHAPES = ("expected a 3-D volume (x, y, z) or a 4-D one (x, y, z, 3) holding pre-contrast, FLAIR and "
                    "post-contrast in that order")


def _is_nifti(path: pathlib.Path) -> bool:
  return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _nifti_stem(path: pathlib.Path) -> str:
  name = path.name
  return next(name[:-len(s)] for s in _NIFTI_SUFFIXES if name.lower().endswith(s))


def volume_role(path: pathlib.Path) -> str | None:
  """'pre', 'flair', 'post', 'mask', or 't2' or 'brain' (unused) from a NIfTI
  file's name; None: no role in it. A name naming two sequences is an error."""
  stem = _nifti_stem(path).lower()
  words = [w for w in re.split(r"[^a-z0-9]+", stem) if w]
  said = {"pre", "precontrast", "post", "postcontrast"} & set(words)  # these decide a plain T1's contrast
  roles = {_WORD_ROLES[w] for w in words if w in _WORD_ROLES and w not in _PLAIN_T1_WORDS}
  if any(w in _PLAIN_T1_WORDS for w in words) and not said:
    roles.add("post" if any(w in _CONTRAST_WORDS for w in words) else "pre")
  if not roles:
    inside = _SESSION_WORDS.sub("", stem)
    roles = {next((role for role in _NAMED_ROLES if role in inside), None)} - {None}
  if "mask" in roles:
    return "brain" if any(word in stem for word in _BRAIN_WORDS) else "mask"
  if "flair" in roles:  # T2-FLAIR is FLAIR
    roles.discard("t2")
  if len(roles) > 1:
    raise DataError(f"{path}: its name reads as {' and '.join(_ROLE_NAMES[r] for r in sorted(roles))}; rename it "
                    "to say one (pre, flair, post, mask, or BraTS *_t1, *_t1ce, *_flair, *_seg)")
  return roles.pop() if roles else None


def _open_nifti(path: pathlib.Path):
  try:
    image = nib.load(str(path))
  except Exception as e:
    raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
  if len(image.shape) == 4 and image.shape[3] == 1:  # a 3-D volume written as (x, y, z, 1)
    image = nib.funcs.squeeze_image(image)
  return image


def _is_stack(image) -> bool:
  return len(image.shape) == 4 and image.shape[3] == 3


def _nifti_roles(files: list[pathlib.Path], alone: bool) -> dict[str, tuple[pathlib.Path, object]]:
  """Each file's role in the case: {role or _STACK: (path, image)}. `alone`: the
  case's only file, taken as FLAIR when 3-D and its name says nothing else."""
  found = {}
  for path in files:
    image, role = _open_nifti(path), volume_role(path)
    if role == "t2":
      logging.warning("%s: T2 volume ignored (the model reads pre-contrast, FLAIR and post-contrast)", path)
      continue
    if role == "brain":
      logging.warning("%s: brain mask ignored (only a tumour mask is scored against)", path)
      continue
    if _is_stack(image) and role != "mask":
      role = _STACK
    elif len(image.shape) != 3:
      raise DataError(f"{path}: NIfTI of shape {image.shape}; {_EXPECTED_SHAPES}")
    elif alone and role in ("pre", "post", "mask"):
      raise DataError(f"{path}: one NIfTI volume is read as FLAIR, but its name says {_ROLE_NAMES[role]}; put "
                      "the case's volumes (named pre, flair, post, or BraTS *_t1, *_flair, *_t1ce) in one folder")
    elif alone and role is None:
      role = "flair"
    elif role is None:
      logging.warning("%s: ignored (its name holds none of pre, flair, post, mask, nor a BraTS sequence)", path)
      continue
    if role in found:
      raise DataError(f"{path.parent}: both {found[role][0].name} and {path.name} look like the "
                      f"{_ROLE_NAMES.get(role, '4-D channel')} volume; keep one (a folder of NIfTI files is one "
                      "case: give each patient a folder of its own)")
    found[role] = (path, image)
  return found


def _stored_as_published(image) -> bool:
  """uint8 voxels with no scaling in the header: the dataset's 0..255, taken as they are."""
  # A loaded image's header hands its scl_slope/scl_inter to the array proxy.
  slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
  return image.get_data_dtype() == np.uint8 and slope == 1.0 and inter == 0.0


def _to_ras(image) -> np.ndarray:
  return nib.orientations.ornt_transform(nib.io_orientation(image.affine), _RAS)


def _ras_affine(image) -> np.ndarray:
  return image.affine @ nib.orientations.inv_ornt_aff(_to_ras(image), image.shape[:3])


def _grid_distance(a, b, shape) -> float:
  """The largest distance (mm) between where two affines put a grid's corners."""
  corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]).T
  return float(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0).max())


def _display_spacing(image) -> tuple[int, int, float, float, float]:
  """(rows, columns) of the display slices and their (row, column, slice) spacing in mm."""
  shape = [0, 0, 0]
  for axis, (ras_axis, _) in enumerate(_to_ras(image)):
    shape[int(ras_axis)] = image.shape[axis]
  zooms = np.linalg.norm(_ras_affine(image)[:3, :3], axis=0)  # RAS-ordered voxel sides
  return shape[1], shape[0], float(zooms[1]), float(zooms[0]), float(zooms[2])  # display slices are (Y, X)


def _canvas_box(image) -> tuple[int, int, int, int]:
  """Where a NIfTI's axial slice lies on the 256x256 canvas (top, left,
  height, width): its longer side in mm fills the canvas and the other
  keeps the proportion, centred on black, as the published slices show
  their heads; stretching a 176x256 grid to square narrowed every head."""
  rows, columns, row_mm, column_mm, _ = _display_spacing(image)
  side = max(rows * row_mm, columns * column_mm)
  height = max(1, round(SIZE * rows * row_mm / side))
  width = max(1, round(SIZE * columns * column_mm / side))
  return (SIZE - height) // 2, (SIZE - width) // 2, height, width


def _display_volume(path: pathlib.Path, image, role: str) -> np.ndarray:
  """(Z, Y, X[, 3]) axial display slices; intensity volumes as uint8."""
  try:
    data = np.asarray(image.dataobj, np.float32)
  except Exception as e:
    raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
  bad = ~np.isfinite(data)
  if bad.any():  # NaN after registration would make the scale NaN and the whole volume empty
    logging.warning("%s: %d non-finite voxel(s) (NaN or infinite) set to 0", path, int(bad.sum()))
    data = np.where(bad, 0.0, data).astype(np.float32)
  if role != "mask" and not _stored_as_published(image):
    data = np.stack([_scale(c) for c in np.moveaxis(data, -1, 0)], -1) if role == _STACK else _scale(data)
  return to_display_slices(nib.orientations.apply_orientation(data, _to_ras(image)))


def _nifti_volumes(name: str, where: pathlib.Path, found: dict) -> Case:
  separate = [r for r in _CHANNEL_ROLES if r in found]
  if _STACK in found and separate:
    raise DataError(f"{where}: holds both a 4-D (x, y, z, 3) volume ({found[_STACK][0].name}) and "
                    f"{', '.join(found[r][0].name for r in separate)}; keep one or the other")
  if _STACK not in found and "flair" not in found:
    seen = ", ".join(f"{path.name} ({_ROLE_NAMES[role]})" for role, (path, _) in found.items()) or "none"
    raise DataError(f"{where}: no FLAIR volume (a name holding 'flair', or BraTS *_flair / *-t2f); the model needs "
                    f"FLAIR, and takes pre-contrast and post-contrast when given; found: {seen}")
  reference_role = _STACK if _STACK in found else "flair"
  volumes = {role: _display_volume(path, image, role) for role, (path, image) in found.items()}
  shape = volumes[reference_role].shape[:3]
  reference_path, reference_image = found[reference_role]
  reference_affine = _ras_affine(reference_image)
  tolerance = 0.1 * float(min(reference_image.header.get_zooms()[:3]))  # a tenth of a voxel
  for role, volume in volumes.items():
    path, image = found[role]
    if volume.shape[:3] != shape:
      raise DataError(f"{path}: shape {volume.shape[:3]} in RAS+ differs from {reference_path.name}'s {shape}")
    distance = _grid_distance(_ras_affine(image), reference_affine, image.shape)
    if distance > tolerance:  # the same shape on another grid: channels (or the truth) would not overlie
      raise DataError(f"{path}: its voxels lie up to {distance:.2f} mm from {reference_path.name}'s (affines "
                      f"differ); resample the case's volumes onto one grid first")
  if _STACK in found:
    channels = [volumes[_STACK][..., c] for c in range(3)]
  else:
    missing = [r for r in _CHANNEL_ROLES if r not in volumes]
    if missing:
      logging.warning("%s: no %s volume; FLAIR (%s) copied into the %s channel%s, as the dataset does for its "
                      "patients without them", where, " or ".join(_ROLE_NAMES[r] for r in missing),
                      found["flair"][0].name, " and ".join(_ROLE_NAMES[r] for r in missing),
                      "s" if len(missing) > 1 else "")
    channels = [volumes.get(r, volumes["flair"]) for r in _CHANNEL_ROLES]

  top, left, height, width = _canvas_box(reference_image)

  def on_canvas(volume, interpolation):
    canvas = np.zeros((len(volume), SIZE, SIZE), volume.dtype)
    for s, plane in enumerate(volume):
      canvas[s, top:top + height, left:left + width] = cv2.resize(plane, (width, height), interpolation=interpolation)
    return canvas

  images = np.stack([on_canvas(c.astype(np.uint8), cv2.INTER_AREA) for c in channels], -1)
  truth = on_canvas((volumes["mask"] > 0).astype(np.uint8), cv2.INTER_NEAREST) > 0 if "mask" in volumes else None
  return Case(name, [f"slice_{k + 1:03d}" for k in range(shape[0])], images, truth, nifti=reference_image)


def _nifti_file(path: pathlib.Path) -> Case:
  """One NIfTI file: a 4-D (x, y, z, 3) stack, or a 3-D volume taken as FLAIR."""
  return _nifti_volumes(_nifti_stem(path), path, _nifti_roles([path], alone=True))


def _nifti_case(folder: pathlib.Path) -> Case | None:
  files = sorted(f for f in folder.iterdir() if f.is_file() and _is_nifti(f))
  if not files:
    return None
  return _nifti_volumes(folder.name, folder, _nifti_roles(files, alone=len(files) == 1))


def write_nifti_volume(case: Case, slices: np.ndarray, path: pathlib.Path, labels: bool = False) -> None:
  """(S, 256, 256) display slices of a case as NIfTI: for NIfTI input, back in
  the input's grid, orientation, affine and qform/sform codes (bool masks and
  `labels` resized by nearest neighbour, uint8 images and float32 maps
  bilinearly); for slice folders, a RAS+ volume of 1 x 1 x 1 voxels, slices in
  order, shown as the PNGs are (anterior at the top)."""
  dtype = np.uint8 if slices.dtype in (bool, np.uint8) else np.float32
  nearest = slices.dtype == bool or labels
  slices = slices.astype(dtype)
  reference = case.nifti
  if reference is None:
    image = nib.Nifti1Image(from_display_slices(slices), np.eye(4))
    image.set_qform(np.eye(4), code=1)
    image.set_sform(np.eye(4), code=1)
    nib.save(image, str(path))
    return
  orientation = nib.io_orientation(reference.affine)
  rows, columns = _display_spacing(reference)[:2]
  top, left, height, width = _canvas_box(reference)
  interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
  slices = np.stack([cv2.resize(p[top:top + height, left:left + width], (columns, rows), interpolation=interpolation)
                     for p in slices])
  from_ras = nib.orientations.ornt_transform(_RAS, orientation)
  volume = nib.orientations.apply_orientation(from_display_slices(slices), from_ras).astype(dtype)
  header = reference.header.copy()
  header.set_data_dtype(dtype)
  header.set_slope_inter(1.0, 0.0)
  header["cal_min"], header["cal_max"] = 0.0, 0.0  # not the input's display window: viewers scale to the data
  image = nib.Nifti1Image(volume, reference.affine, header=header)
  image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
  image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
  nib.save(image, str(path))


def write_nifti_mask(case: Case, pred: np.ndarray, path: pathlib.Path) -> None:
  """The masks back in the input's grid, orientation, affine and qform/sform codes."""
  write_nifti_volume(case, np.asarray(pred, bool), path)


def _holds_case_files(folder: pathlib.Path) -> bool:
  return any(f.is_file() and (_is_nifti(f) or f.suffix.lower() in _IMAGE_SUFFIXES) for f in folder.iterdir())


def find_cases(path: str | os.PathLike) -> list[Case]:
  """The cases under `path`: one slice, NIfTI file or patient folder, or a
  folder of patient folders (a subfolder with files but none of those is
  named in a warning, not dropped unseen)."""
  path = pathlib.Path(os.path.abspath(pathlib.Path(path).expanduser()))  # "." and ".." take their folder's name
  if not path.exists():
    raise DataError(f"input {path} does not exist")
  if path.is_file() and _is_nifti(path):
    return [_nifti_file(path)]
  if path.is_file():
    image = read_slice(path)
    return [Case(path.stem, [path.stem], image[None], None)]
  for reader in (_nifti_case, _slice_folder):
    case = reader(path)
    if case is not None:
      beside = [sub.name for sub in sorted(path.iterdir()) if sub.is_dir() and _holds_case_files(sub)]
      if beside:
        raise DataError(f"{path}: holds a case's own files and patient folders ({', '.join(beside[:3])}); give "
                        "either one case's files or a folder of patient folders")
      return [case]
  cases = []
  for sub in sorted(p for p in path.iterdir() if p.is_dir()):
    case = _nifti_case(sub) or _slice_folder(sub)
    if case is not None:
      cases.append(case)
      continue
    kinds = sorted({f.suffix.lower() or f.name for f in sub.iterdir() if f.is_file()})
    if kinds:
      logging.warning("%s: skipped, it holds no slices (.tif/.png) or NIfTI volumes (it holds %s)", sub,
                      ", ".join(kinds[:8]))
  if not cases:
    raise DataError(f"input {path} holds no slices (.tif/.png), patient folders or NIfTI volumes")
  return cases


def describe(settings) -> str:
  """The post-processing in a few words, for figure titles."""
  words = f"p >= {settings.threshold:.2f}"
  if settings.largest_component:
    words += ", largest component"
    if settings.component_rank != "volume":
      words += f" by {settings.component_rank.replace('_', ' ')}"
    if settings.component_fraction:
      words += f" and those >= {settings.component_fraction:g} of it"
  return words


def error_labels(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """uint8 labels the review page colours: 1 found, 2 false positive, 3 missed."""
  labels = np.zeros(pred.shape, np.uint8)
  labels[pred & truth] = review.FOUND
  labels[pred & ~truth] = review.FALSE_POSITIVE
  labels[~pred & truth] = review.MISSED
  return labels


def write_review_volumes(case: Case, pred: np.ndarray, out: pathlib.Path, probabilities: np.ndarray | None = None,
                         uncertainty: np.ndarray | None = None) -> dict:
  """The compressed NIfTI volumes the review page shows (and ITK-SNAP or 3D
  Slicer open), in `out`/<case>/: the three sequences as the model saw them,
  the mask, and where given the truth, its error labels, the probability and
  the uncertainty. Returns what the page's index says of them: the files
  (relative to `out`), whether the input was NIfTI, the slice to open at."""
  volumes = {role: case.images[..., channel] for channel, role in enumerate(_CHANNEL_ROLES)}
  volumes["mask"] = np.asarray(pred, bool)
  if case.truth is not None:
    volumes["truth"] = case.truth
    volumes["errors"] = error_labels(np.asarray(pred, bool), case.truth)
  if probabilities is not None:
    volumes["probabilities"] = np.asarray(probabilities, np.float32)
  if uncertainty is not None:
    volumes["uncertainty"] = np.asarray(uncertainty, np.float32)
  (out / case.name).mkdir(parents=True, exist_ok=True)
  files = {}
  for layer, slices in volumes.items():
    files[layer] = f"{case.name}/{case.name}_{layer}.nii.gz"
    write_nifti_volume(case, slices, out / files[layer], labels=layer == "errors")
  return {"files": files, "nifti_input": case.nifti is not None, "focus_slice": focus_slice(case, pred)}


def focus_slice(case: Case, pred: np.ndarray) -> int:
  """The slice the review page and the panel open at: the most true tumour,
  else the most predicted, else (nothing anywhere) the middle one."""
  truth = case.truth if case.truth is not None and case.truth.any() else np.asarray(pred)
  return int(np.argmax(truth.sum(axis=(1, 2)))) if truth.any() else len(case.slice_names) // 2


def voxel_ml(case: Case) -> float | None:
  """The volume in ml of one voxel of the 256x256 display grid; None for
  slice folders (no spacing)."""
  if case.nifti is None:
    return None
  rows, columns, row_mm, column_mm, slice_mm = _display_spacing(case.nifti)
  _, _, height, width = _canvas_box(case.nifti)
  return rows * row_mm / height * columns * column_mm / width * slice_mm / 1000.0


def write_case(case: Case, probs: np.ndarray, pred: np.ndarray, settings, out: pathlib.Path,
               overlays: bool = False) -> dict:
  """Masks (the post-processed `pred`) and the panel of one case; with
  `overlays`, the per-slice overlay PNGs and the GIF too."""
  folder = out / case.name
  folder.mkdir(parents=True, exist_ok=True)
  if case.nifti is None:
    (folder / "masks").mkdir(exist_ok=True)
    for name, p in zip(case.slice_names, pred):
      cv2.imwrite(str(folder / "masks" / f"{name}_pred.png"), np.where(p, 255, 0).astype(np.uint8))
  if overlays:
    (folder / "overlays").mkdir(exist_ok=True)
    frames = []
    for i, name in enumerate(case.slice_names):
      frame = figures.overlay(case.images[i], pred[i], truth=None if case.truth is None else case.truth[i])
      cv2.imwrite(str(folder / "overlays" / f"{name}.png"), frame[..., ::-1])
      frames.append(frame)
    figures.gif(frames, folder / f"{case.name}.gif")
  k = focus_slice(case, pred)
  figures.prediction_panel(case.images[k], None if case.truth is None else case.truth[k], probs[k], pred[k],
                           folder / f"{case.name}_panel.png", title=f"{case.name}, {case.slice_names[k]}",
                           mask_title=f"prediction ({describe(settings)})")
  result = {"case": case.name, "slices": len(case.slice_names), "predicted_pixels": int(pred.sum()),
            "slices_with_tumour_predicted": int(pred.any(axis=(1, 2)).sum())}
  ml = voxel_ml(case)
  if ml is not None:
    result["predicted_volume_ml"] = round(float(pred.sum()) * ml, 3)
  if case.truth is not None:
    result["dice"] = float(metrics.dice_from_counts((pred & case.truth).sum(), pred.sum(), case.truth.sum()))
  return result


def predict(models, input_path, out, *, checkpoint="best", tta=None, threshold=None, largest_component=None,
            component_fraction=None, component_rank=None, save_probabilities=False, overlays=False) -> list[dict]:
  """Masks, overlays, GIFs and panels for every case under `input_path`.
  `models`: a run folder, an export or a pretrained name, or a list of them
  (their mean probability). Masks come from the one inference path with the
  models' own settings; a given setting overrides theirs. Every case gets the
  quality estimate (`Segmenter.assess`); `save_probabilities` also writes its
  mean probability and uncertainty (members' or views' spread) as float32
  NIfTI, `<case>_probabilities.nii.gz` and `<case>_uncertainty.nii.gz`."""
  cases = find_cases(input_path)  # validate input before loading the model
  seg = segmenter.Segmenter.load(models, checkpoint, tta=tta or None, threshold=threshold,
                                 largest_component=largest_component, component_fraction=component_fraction,
                                 component_rank=component_rank)
  return predict_cases(seg, cases, pathlib.Path(out), seg.settings, save_probabilities, overlays)


PREDICTIONS_FILE = "predictions.json"


def predict_cases(seg: segmenter.Segmenter, cases: list[Case], out: pathlib.Path, settings,
                  save_probabilities: bool = False, overlays: bool = False) -> list[dict]:
  """What `predict` writes, for cases already read and a model already loaded.
  A re-run into the same folder first removes the old index files: a run that
  stops part-way leaves no index describing masks it overwrote."""
  if cli.is_main_process():
    for name in (PREDICTIONS_FILE, review.INDEX_FILE):
      (out / name).unlink(missing_ok=True)
  results, review_rows = [], []
  for case in cli.progress(cases, desc="predict", unit="case"):
    assessed = seg.assess(case.images, **settings.as_dict())
    result = {**write_case(case, assessed.probabilities, assessed.masks, settings, out, overlays),
              **assessed.estimate.as_row()}
    page = write_review_volumes(case, assessed.masks, out, assessed.probabilities if save_probabilities else None,
                                assessed.uncertainty if save_probabilities else None)
    results.append(result)
    review_rows.append({**result, **page})
  if cli.is_main_process():
    cli.write_whole(out / PREDICTIONS_FILE, json.dumps(
        {"models": [m.source for m in seg.members], "inference": settings.as_dict(),
         "quality_rule": dataclasses.asdict(seg.rule), "cases": results}, indent=2))
    review.write_index(out, "predict", review_rows, inference=settings.as_dict(),
                       models=[m.source for m in seg.members])
  return results


def review_lines(results: list[dict]) -> list[str]:
  """The end of predict's terminal output: the masks to look at, by name."""
  flagged = [r for r in results if r["review"]]
  if not flagged:
    return [f"review: none of the {len(results)} masks is flagged"]
  return [f"review: {len(flagged)} of {len(results)} masks flagged; look at these first:"] + [
      f"  {r['case']}: {r['review_reason']}" for r in sorted(flagged, key=lambda r: r["quality"])]


_OVERLAYS = flags.DEFINE_bool("overlays", False, "Also write per-slice overlay PNGs and a GIF per case "
                              "(`python -m lgg_jax.review OUT` shows the volumes instead).")
command_flags.take("workdir", "model", "input", "out", "checkpoint", "save_probabilities", *command_flags.INFERENCE)
DEFAULT_OUT = "predictions"  # --out when unset


def main(argv):
  del argv
  f = command_flags
  model, workdir = f.model_or_workdir()
  models = loading.cli_models(model) if model else workdir
  if not models:
    raise ValueError("give --model=EXPORT|pretrained[,...] or --workdir=RUN[,...]")
  if not f.INPUT.value:
    raise ValueError("give --input=SLICES|PATIENT_FOLDERS|NIFTI (the module's doc lists the forms)")
  results = predict(models, f.INPUT.value, f.OUT.value or DEFAULT_OUT, checkpoint=f.CHECKPOINT.value,
                    save_probabilities=f.SAVE_PROBABILITIES.value, overlays=_OVERLAYS.value,
                    **f.inference_overrides())
  for r in results:
    print(json.dumps(r))
  print("\n".join(review_lines(results)))
  print(f"look at them: python -m lgg_jax.review {f.OUT.value or DEFAULT_OUT}")


if __name__ == "__main__":
  cli.run(main)
