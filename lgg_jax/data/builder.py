"""TFDS builder for the LGG dataset, written as array_record (no TensorFlow).

One split, `slices`, holds every slice in (patient, slice number) order, so a
patient's records read as its volume; patient-level splits are made later by
`splits.py` so folds can change without rebuilding. Images and masks are
stored as PNG bytes we encode ourselves (tfds would need TensorFlow to
encode arrays), read back by `tfds` data sources for grain.
"""

from __future__ import annotations

import json
import logging
import pathlib

import cv2
import numpy as np
import tensorflow_datasets as tfds

from lgg_jax import cli
from lgg_jax.data import kaggle


def _png(array: np.ndarray) -> bytes:
  if array.ndim == 3:
    array = array[..., ::-1]  # opencv writes BGR; the TIFFs are RGB
  ok, buf = cv2.imencode(".png", array)
  if not ok:
    raise RuntimeError("PNG encoding failed")
  return buf.tobytes()


class Lgg(tfds.core.GeneratorBasedBuilder):
  """LGG Segmentation Dataset (Buda et al. 2019) from a local `kaggle_3m/`."""

  # 1.1.0: records in (patient, slice) order (1.0.0 wrote them in hash order).
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Records in (patient, slice number) order: shuffling disabled.",
                   "1.0.0": "Initial release (records in hash order)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the LGG Segmentation Dataset (kaggle_3m/) and set "
      "config.data.manual_dir to the folder that holds it.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=kaggle.IMAGE_SHAPE, encoding_format="png"),
            "mask": tfds.features.Image(shape=kaggle.IMAGE_SHAPE[:2] + (1,), encoding_format="png"),
            "patient_id": tfds.features.Text(),
            "slice_index": np.int32,
            "has_tumor": np.bool_,
            "clinical": tfds.features.Text(),  # the patient's data.csv row as JSON
        }),
        citation="Buda, Saha, Mazurowski. Computers in Biology and Medicine 109 (2019).",
        # Written in generation order: patient folders sorted, slices 1..N.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the source is opened by `build`: it may be a zip, not a folder
    source = self.source
    slices = kaggle.list_slices(source)
    # Validate every file before the writer starts (it writes as it goes).
    for s in cli.progress(slices, desc="checking slices", unit="slice"):
      kaggle.read_image(source, s.image_path)
      kaggle.read_mask(source, s.mask_path)
    patients = sorted({s.patient_id for s in slices})
    clinical = kaggle.read_clinical(source, patients)
    logging.info("validated %d slices of %d patients in %s", len(slices), len(patients),
                 source.describe(""))
    return {"slices": self._generate_examples(source, slices, clinical)}

  def _generate_examples(self, source, slices, clinical):
    for s in cli.progress(slices, desc="encoding slices", unit="slice"):
      mask = kaggle.read_mask(source, s.mask_path)
      yield f"{s.patient_id}_{s.index}", {
          "image": _png(kaggle.read_image(source, s.image_path)),
          "mask": _png(mask[..., None]),
          "patient_id": s.patient_id,
          "slice_index": s.index,
          "has_tumor": bool(mask.any()),
          "clinical": json.dumps(clinical.get(s.patient_id, {}), sort_keys=True),
      }


def build(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path) -> Lgg:
  """Prepares (once per distinct source) and returns the builder.

  `manual_dir` holds kaggle_3m/ (or is it), or holds the downloaded zip.
  The prepared copy lives under `data_dir/<fingerprint of the source>/`, so
  two different sources never share a cache and an edited source is rebuilt.
  tfds writes into its own `incomplete.*` folder, renames it when done and
  removes it on any failure, so no partial dataset is left and a concurrent
  build's folder is not touched.
  """
  tfds.disable_progress_bar()  # ours show the checking and the encoding
  source = kaggle.open_source(manual_dir)
  root = pathlib.Path(data_dir).expanduser() / source.fingerprint()
  builder = Lgg(data_dir=str(root), file_format="array_record")
  builder.source = source
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(source.location.parent)))
  return builder
