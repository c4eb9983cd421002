"""Tumour shape features x genomic clusters (Buda et al. 2019), from manual
and automatic masks.

python -m lgg_jax.radiogenomics --manual_dir=kaggle_3m --out=radiogenomics/
    [--predictions=PREDICT_OUT | --models=FOLD0_RUN,FOLD1_RUN,...] [--save_masks]

--manual_dir: the kaggle_3m/ folder (images, manual masks, data.csv).
--predictions: a folder `python -m lgg_jax.predict` wrote on those patients.
--models: the run folders (or exports) of one cross-validation, every fold's
  model: each patient is segmented by the one model whose test split holds
  it, with the model's own threshold and post-processing.

Writes features.csv (a row per patient: features, covariates, cluster
labels), associations.csv, auc.csv, agreement.csv, associations.md (the
tables and every choice), and <measure>_by_<cluster>.png strip plots.
"""

from __future__ import annotations

import pathlib

from absl import flags

from lgg_jax import cli, command_flags
from lgg_jax.radiogenomics import cohort, shape

_PREDICTIONS = flags.DEFINE_string("predictions", None, "Automatic masks: a folder lgg_jax.predict wrote.")
# Shared flags: --manual_dir (kaggle_3m/, or a folder or zip holding it;
# required), --out (default radiogenomics), --models (automatic masks: every
# fold's run folder or export of one cross-validation; each patient is
# segmented by the model that held it out), --checkpoint (with --models).
command_flags.take("manual_dir", "out", "models", "checkpoint")
_SAVE_MASKS = flags.DEFINE_bool("save_masks", False, "With --models: also write the masks in predict's "
                                "layout under OUT/automatic_masks/ (reusable with --predictions).")
_DATA_CSV = flags.DEFINE_string("data_csv", None, "data.csv to use instead of the one in --manual_dir.")
_CLUSTERS = flags.DEFINE_list("clusters", list(cohort.CLUSTERS), "data.csv columns to test.")
_QUANTILES = flags.DEFINE_list("quantiles", [f"{q:.6g}" for q in cohort.QUANTILES],
                               "Quantiles at which each feature is dichotomised: one hypothesis each.")
_ALPHA = flags.DEFINE_float("alpha", 0.05, "Family-wise level, divided by the number of hypotheses.")
_AUC_CLUSTER = flags.DEFINE_string("auc_cluster", "RNASeqCluster", "Cluster column for the AUCs and plots.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples for the intervals.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
_ASD_BINS = flags.DEFINE_integer("asd_bins", 10, "Equiangular sectors of the angular standard deviation.")
_NORMALISE_ASD = flags.DEFINE_bool("normalise_asd", False, "Divide ASD's distances by their mean.")
_MF_WINDOW = flags.DEFINE_float("mf_window", 0.05, "Margin fluctuation's smoothing window, a fraction of "
                                "the boundary.")
_SPACING = flags.DEFINE_list("spacing", ["1", "1", "1"], "Voxel spacing (slice, row, column) for the volume "
                             "and ASD; BEVR and MF do not depend on it.")


def main(argv):
  del argv
  try:
    quantiles = tuple(float(q) for q in _QUANTILES.value)
    spacing = tuple(float(s) for s in _SPACING.value)
  except ValueError as e:
    raise ValueError(f"--quantiles and --spacing take numbers ({e})") from e
  shape_settings = shape.ShapeSettings(asd_bins=_ASD_BINS.value, normalise_asd=_NORMALISE_ASD.value,
                                       mf_window=_MF_WINDOW.value, spacing=spacing)
  settings = cohort.AnalysisSettings(clusters=tuple(_CLUSTERS.value), quantiles=quantiles, alpha=_ALPHA.value,
                                     auc_cluster=_AUC_CLUSTER.value, bootstrap=_BOOTSTRAP.value, seed=_SEED.value)
  if not command_flags.MANUAL_DIR.value:
    raise ValueError("give --manual_dir=kaggle_3m/ (or a folder or zip holding it)")
  out = command_flags.OUT.value or "radiogenomics"
  cohort.run(command_flags.MANUAL_DIR.value, out, predictions=_PREDICTIONS.value, models=command_flags.MODELS.value,
             checkpoint=command_flags.CHECKPOINT.value, data_csv=_DATA_CSV.value, shape_settings=shape_settings,
             settings=settings, save_masks=_SAVE_MASKS.value)
  written = [name for name in ("features.csv", "associations.csv", "auc.csv", "agreement.csv")
             if (pathlib.Path(out) / name).is_file()]
  print(f"wrote {out}/associations.md, {', '.join(written)} and plots")


if __name__ == "__main__":
  cli.run(main)
