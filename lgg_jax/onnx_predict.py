"""Segment one patient with an lgg_jax ONNX export, using numpy and onnxruntime only.

    python onnx_predict.py MODEL.onnx SLICES.npy MASKS.npy

SLICES.npy: uint8 (S, 256, 256, 3), channels pre-contrast, FLAIR, post-contrast
(as the dataset's TIFFs), slices in order. MASKS.npy gets bool (S, 256, 256):
the probability >= the model's threshold, before lgg_jax's component step.
What the graph expects is in its metadata (`lgg_jax.*` keys): this file
prepares it as lgg_jax.data.preprocess does, from the resizing to the
normalisation and the neighbouring slices.
"""

import sys

import numpy as np
import onnxruntime as ort


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


def main(model_path: str, slices_path: str, masks_path: str) -> None:
  session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
  meta = session.get_modelmeta().custom_metadata_map
  inputs = prepare(np.load(slices_path), meta)
  probabilities = np.concatenate([session.run(None, {session.get_inputs()[0].name: inputs[i:i + 16]})[0]
                                  for i in range(0, len(inputs), 16)])
  np.save(masks_path, probabilities >= float(meta["lgg_jax.threshold"]))


if __name__ == "__main__":
  main(*sys.argv[1:4])
