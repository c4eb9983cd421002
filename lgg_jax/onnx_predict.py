"""Segment one patient with lgg_jax ONNX exports as the library does, using
numpy, scipy and onnxruntime only.

    python onnx_predict.py MODEL.onnx [MODEL.onnx ...] SLICES.npy MASKS.npy

SLICES.npy: uint8 (S, 256, 256, 3), channels pre-contrast, FLAIR, post-contrast
(as the dataset's TIFFs), slices in order. MASKS.npy gets bool (S, 256, 256):
the masks lgg_jax gives with the models' own inference settings, which each
graph carries in its metadata (`lgg_jax.*` keys). Each model's probability
is averaged over its test-time views (each mapped back). Several models (the
`.onnx` files of `export --model=pretrained --onnx`) are one ensemble: the
mean of their probabilities, which is what `--model=pretrained` means. Then
the threshold and the 3-D component step.
This file prepares the input as lgg_jax.data.preprocess does, from the
resizing to the normalisation and the neighbouring slices.
"""

import sys

import numpy as np
import onnxruntime as ort
from scipy import ndimage

SIZE = 256
SETTINGS = ("threshold", "tta", "largest_component", "component_fraction", "component_rank")


def check_slices(volume: np.ndarray, where: str) -> np.ndarray:
  """The input lgg_jax takes: uint8 (S, 256, 256, 3); anything else is an error naming the file."""
  if volume.dtype != np.uint8:
    raise ValueError(f"{where}: dtype {volume.dtype}, want uint8 (the dataset's 0-255 slices)")
  if volume.ndim != 4 or volume.shape[1:] != (SIZE, SIZE, 3) or not len(volume):
    raise ValueError(f"{where}: shape {volume.shape}, want (slices, 256, 256, 3): resize each slice to 256x256 first")
  return volume


def settings(meta: dict, where: str) -> dict:
  """The inference settings a graph was scored with (its `lgg_jax.*` metadata)."""
  missing = [k for k in SETTINGS if f"lgg_jax.{k}" not in meta]
  if missing:
    raise ValueError(f"{where}: no lgg_jax.{missing[0]} in its metadata (an older export): export it again")
  return {"threshold": float(meta["lgg_jax.threshold"]), "tta": meta["lgg_jax.tta"],
          "largest_component": meta["lgg_jax.largest_component"] == "True",
          "component_fraction": float(meta["lgg_jax.component_fraction"]),
          "component_rank": meta["lgg_jax.component_rank"]}


def prepare(volume: np.ndarray, meta: dict) -> np.ndarray:
  """uint8 (S, 256, 256, 3) -> float32 (S, size, size, 3 * (2k + 1)), NHWC."""
  size, k = int(meta["lgg_jax.input_size"]), int(meta["lgg_jax.neighbours"])
  if size != volume.shape[1]:  # OpenCV's area interpolation for an integer factor: the block mean, rounded
    f = volume.shape[1] // size
    if f * size != volume.shape[1]:
      raise ValueError(f"input size {size} does not divide {volume.shape[1]}: resize with OpenCV's INTER_AREA")
    total = volume.reshape(len(volume), size, f, size, f, 3).astype(np.int64).sum(axis=(2, 4))
    # OpenCV rounds halves up for a factor of 2 and to even for larger factors.
    volume = ((total + 2) // 4 if f == 2 else np.rint(total / (f * f))).astype(np.uint8)
  x = volume.astype(np.float32)
  mode = meta["lgg_jax.normalization"]
  if mode == "unit":
    x = x / 255.0
  elif mode == "slice":
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1.0)
  else:  # "patient": per channel over the brain (voxels non-zero in any channel): clip, z-score
    brain = x.reshape(-1, 3)[x.reshape(-1, 3).any(axis=1)]
    if len(brain):
      low, high = np.percentile(brain, [float(p) for p in meta["lgg_jax.percentiles"].split(",")], axis=0)
      clipped = np.clip(brain, low, high)
      x = (np.clip(x, low, high) - clipped.mean(axis=0)) / np.maximum(clipped.std(axis=0), 1e-3)
    # An all-black volume stays as it is (preprocess.patient_statistics' defaults: clip 0..255, z-score 0, 1).
  rows = np.clip(np.arange(len(x))[:, None] + np.arange(-k, k + 1), 0, len(x) - 1)  # edge slices repeat
  return np.concatenate([x[rows[:, j]] for j in range(2 * k + 1)], axis=-1).astype(np.float32)


def views(tta: str) -> list:
  """lgg_jax.inference's test-time views, (forward, inverse) on axes 1 and 2
  of the input (b, h, w, c) and of the graph's output (b, 256, 256)."""
  identity = (lambda x: x, lambda x: x)
  if tta == "none":
    return [identity]
  if tta == "flips":
    hflip, vflip = (lambda x: np.flip(x, 2)), (lambda x: np.flip(x, 1))
    return [identity, (hflip, hflip), (vflip, vflip)]
  if tta == "dihedral":
    transpose = lambda x: np.swapaxes(x, 1, 2)
    out = []
    for k in range(4):
      rot = lambda x, k=k: np.rot90(x, k, axes=(1, 2))
      unrot = lambda x, k=k: np.rot90(x, -k, axes=(1, 2))
      out += [(rot, unrot), (lambda x, rot=rot: rot(transpose(x)), lambda y, unrot=unrot: transpose(unrot(y)))]
    return out
  raise ValueError(f"test-time augmentation {tta!r}: this script knows none, flips and dihedral")


def probabilities(session: ort.InferenceSession, inputs: np.ndarray, tta: str, batch: int = 16) -> np.ndarray:
  """(S, 256, 256) float32: the graph's probability, averaged over the views."""
  name, total, chosen = session.get_inputs()[0].name, 0.0, views(tta)
  for forward, inverse in chosen:
    x = np.ascontiguousarray(forward(inputs))
    out = np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    total = total + inverse(out)
  return (total / len(chosen)).astype(np.float32)


def masks(probs: np.ndarray, chosen: dict) -> np.ndarray:
  """lgg_jax.inference.postprocess: the threshold, then (largest_component)
  the top 3-D component (faces touching) by volume, summed or maximum
  probability, and every one scoring at least component_fraction of it."""
  mask = probs >= chosen["threshold"]
  if not chosen["largest_component"]:
    return mask
  labels, count = ndimage.label(mask)
  if count <= 1:
    return mask
  rank, fraction, index = chosen["component_rank"], chosen["component_fraction"], np.arange(1, count + 1)
  if rank == "volume":
    scores = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
  elif rank in ("probability_sum", "probability_max"):
    reduce = ndimage.sum_labels if rank == "probability_sum" else ndimage.maximum
    scores = np.asarray(reduce(probs.astype(np.float64), labels, index), np.float64)
  else:
    raise ValueError(f"component_rank {rank!r}: this script knows volume, probability_sum and probability_max")
  keep = scores >= fraction * scores.max() if fraction > 0 else np.arange(count) == int(np.argmax(scores))
  return np.concatenate([[False], keep])[labels]


def segment(model_paths: list[str], volume: np.ndarray, where: str = "the slices") -> tuple[np.ndarray, np.ndarray]:
  """(masks, mean probability) of one patient's uint8 slices."""
  check_slices(volume, where)
  sessions = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in model_paths]
  metas = [s.get_modelmeta().custom_metadata_map for s in sessions]
  chosen = [settings(m, p) for m, p in zip(metas, model_paths)]
  for other, path in zip(chosen[1:], model_paths[1:]):
    if other != chosen[0]:  # an ensemble nobody scored: as lgg_jax refuses it
      raise ValueError(f"{path} and {model_paths[0]} disagree on their inference settings ({other} against "
                       f"{chosen[0]}): export the ensemble's members with one setting")
  mean = sum(probabilities(s, prepare(volume, m), chosen[0]["tta"]) for s, m in zip(sessions, metas)) / len(sessions)
  return masks(mean, chosen[0]), mean


def main(argv: list[str]) -> None:
  if len(argv) < 3 or not all(a.endswith(".onnx") for a in argv[:-2]):
    raise SystemExit(__doc__.split("\n\n")[1])
  *model_paths, slices_path, masks_path = argv
  np.save(masks_path, segment(model_paths, np.load(slices_path), slices_path)[0])


if __name__ == "__main__":
  main(sys.argv[1:])
