"""A cohort's masks, its genomic clusters, and the analysis of Buda et al. 2019.

Masks come from a `kaggle_3m/` folder (the manual ones), from a folder that
`python -m lgg_jax.predict` wrote (`<case>/masks/<slice>_pred.png`), or from
cross-validated models: each patient is segmented by the one model whose test
split holds it (a run folder's split.json, or an export's model card), never
by a model that trained on it. Clusters come from data.csv, joined on the id
without the folder's date as the data layer does.

The association test follows the paper's form: for each feature x cluster
pair, `len(quantiles)` hypotheses (the feature dichotomised at each quantile,
a Fisher exact test of the 2 x k table against the clusters), Bonferroni
over them: significant when the smallest p < alpha / hypotheses (0.005 for
10). That corrects within one cell only: a table of 6 clusters x 3 features
makes 18 such cells, and by chance one of them passes in about a third of
tables. `p_table` corrects over the table too (Bonferroni over every tested
cell of one mask source and kind, features or covariates), and
`significant_table` marks what survives it. Which 10 dichotomisations the paper used is not in its abstract; the
default here, 10 thresholds at the quantiles 1/11 ... 10/11, is this
module's choice and a parameter. AUCs: each feature against each RNASeq
cluster, one versus the rest, with stratified bootstrap intervals.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import pathlib

import cv2
import matplotlib
import numpy as np

from lgg_jax import cli, loading, segmenter
from lgg_jax.data import kaggle
from lgg_jax.data.kaggle import DataError
from lgg_jax.radiogenomics import shape, stats

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

CLUSTERS = ("RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "COCCluster",
            "OncosignCluster")
QUANTILES = tuple(i / 11 for i in range(1, 11))
MEASURES = shape.FEATURES + shape.COVARIATES
SOURCES = ("manual", "automatic")


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
  clusters: tuple = CLUSTERS
  quantiles: tuple = QUANTILES       # one hypothesis per dichotomising threshold
  alpha: float = 0.05                # family-wise, split over the hypotheses (Bonferroni)
  auc_cluster: str = "RNASeqCluster"
  bootstrap: int = 2000
  seed: int = 0

  def check(self) -> None:
    if not self.clusters:
      raise ValueError("clusters: name at least one data.csv column")
    if not self.quantiles or not all(0 < q < 1 for q in self.quantiles):
      raise ValueError(f"quantiles must be in (0, 1), got {list(self.quantiles)}")
    if not 0 < self.alpha < 1:
      raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
    if self.auc_cluster not in self.clusters:
      raise ValueError(f"auc_cluster {self.auc_cluster!r} is not among the clusters {list(self.clusters)}")
    if self.bootstrap < 1:
      raise ValueError(f"bootstrap must be >= 1, got {self.bootstrap}")


# ---- inputs ----

def patient_slices(source: kaggle.Source) -> dict[str, list[kaggle.Slice]]:
  by_patient: dict[str, list[kaggle.Slice]] = {}
  for s in kaggle.list_slices(source):
    by_patient.setdefault(s.patient_id, []).append(s)
  return by_patient


def manual_mask(source: kaggle.Source, slices: list[kaggle.Slice]) -> np.ndarray:
  return np.stack([kaggle.read_mask(source, s.mask_path) > 0 for s in slices])


def read_clusters(source: kaggle.Source, patients: list[str], columns, data_csv=None) -> dict[str, dict]:
  """{patient folder: {column: label or None (blank)}}; a missing file, column
  or patient row is an error naming data.csv."""
  if data_csv:
    where = pathlib.Path(data_csv).expanduser()
    if not where.is_file():
      raise DataError(f"{where}: no such data.csv")
    text = where.read_text(encoding="utf-8-sig")
  else:
    where = source.describe("data.csv")
    if "data.csv" not in source.names:
      raise DataError(f"{where} is missing: the genomic clusters come from it (or pass --data_csv)")
    text = source.read("data.csv").decode("utf-8-sig")
  reader = csv.DictReader(io.StringIO(text))
  missing = [c for c in ("Patient", *columns) if c not in (reader.fieldnames or [])]
  if missing:
    raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
  rows = {row["Patient"]: row for row in reader}
  absent = [p for p in patients if kaggle.clinical_key(p) not in rows]
  if absent:
    raise DataError(f"{where}: no row for {len(absent)} patient(s) with masks: {', '.join(absent[:5])}")
  return {p: {c: (rows[kaggle.clinical_key(p)][c].strip() or None) for c in columns} for p in patients}


def check_predicted_layout(folder: pathlib.Path, patient: str, slices: list[kaggle.Slice]) -> pathlib.Path:
  """`lgg_jax.predict`'s layout for one patient: one PNG per image slice."""
  masks_dir = folder / patient / "masks"
  if not masks_dir.is_dir():
    raise DataError(f"{masks_dir}: no predicted masks for patient {patient}")
  expected = {f"{patient}_{s.index}_pred.png" for s in slices}
  present = {p.name for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
  if present != expected:
    extra, lacking = sorted(present - expected), sorted(expected - present)
    what = f"lacks {lacking[:3]}" if lacking else f"has masks without images {extra[:3]}"
    raise DataError(f"{masks_dir}: does not match the {len(slices)} images of {patient}: {what}")
  return masks_dir


def read_predicted_masks(folder: pathlib.Path, patient: str, slices: list[kaggle.Slice]) -> np.ndarray:
  """The masks `lgg_jax.predict` wrote for one patient, in slice order."""
  masks_dir = check_predicted_layout(folder, patient, slices)
  masks = []
  for s in slices:
    path = masks_dir / f"{patient}_{s.index}_pred.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
      raise DataError(f"{path}: unreadable PNG")
    if mask.shape != kaggle.IMAGE_SHAPE[:2]:
      raise DataError(f"{path}: shape {mask.shape}, expected {kaggle.IMAGE_SHAPE[:2]}")
    masks.append(mask > 0)
  return np.stack(masks)


def write_predicted_masks(folder: pathlib.Path, patient: str, slices: list[kaggle.Slice], mask: np.ndarray) -> None:
  """In predict's layout, so a later analysis can read them with --predictions."""
  masks_dir = folder / patient / "masks"
  masks_dir.mkdir(parents=True, exist_ok=True)
  for s, m in zip(slices, mask):
    cv2.imwrite(str(masks_dir / f"{patient}_{s.index}_pred.png"), np.where(m, 255, 0).astype(np.uint8))


def assign_models(models: list[pathlib.Path], patients: list[str]) -> dict[pathlib.Path, list[str]]:
  """Each patient to the one model that held it out."""
  held_out = {m: set(loading.held_out_patients(m)) for m in models}
  assignment: dict[pathlib.Path, list[str]] = {m: [] for m in models}
  for p in patients:
    owners = [m for m in models if p in held_out[m]]
    if not owners:
      raise DataError(f"patient {p} is in no model's test split ({', '.join(str(m) for m in models)}): "
                      f"pass every fold's model, or masks from `predict` with --predictions")
    if len(owners) > 1:
      raise DataError(f"patient {p} is in the test split of several models ({', '.join(map(str, owners))}): "
                      f"pass one cross-validation's folds")
    assignment[owners[0]].append(p)
  for m, ids in held_out.items():
    unknown = sorted(ids - set(patients))
    if unknown:
      logging.warning("%s held out %d patient(s) absent from the masks' folder: %s", m, len(unknown),
                      ", ".join(unknown[:5]))
  return assignment


def cross_validated_masks(models, source: kaggle.Source, by_patient: dict, checkpoint: str = "best"):
  """Yields (patient, mask), each from the model that held the patient out,
  thresholded and post-processed by `Segmenter.predict(masks=True)`."""
  for model, ids in assign_models([pathlib.Path(m).expanduser() for m in models], list(by_patient)).items():
    if not ids:
      continue
    seg = segmenter.Segmenter.load(model, checkpoint)
    for p in ids:
      volume = np.stack([kaggle.read_image(source, s.image_path) for s in by_patient[p]])
      yield p, np.asarray(seg.predict(volume, masks=True), bool)


# ---- analysis ----

def _defined(rows: dict, patients: list[str], source: str, measure: str, cluster: str | None = None):
  """Patients whose measure is defined (and, with `cluster`, whose label is
  not blank), and the counts of those left out for each reason."""
  used, undefined, blank = [], 0, 0
  for p in patients:
    value = rows[p].get(f"{source}_{measure}")
    if value is None or rows[p][f"{source}_empty"] or math.isnan(value):
      undefined += 1
    elif cluster is not None and rows[p][cluster] is None:
      blank += 1
    else:
      used.append(p)
  return used, undefined, blank


def _label_order(labels) -> list:
  return sorted(set(labels), key=lambda v: (0, float(v)) if _is_number(v) else (1, v))


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def associations(rows: dict, sources, settings: AnalysisSettings) -> list[dict]:
  patients = sorted(rows)
  hypotheses = len(settings.quantiles)
  out = []
  for source in sources:
    for measure in MEASURES:
      for cluster in settings.clusters:
        used, undefined, blank = _defined(rows, patients, source, measure, cluster)
        values = np.array([rows[p][f"{source}_{measure}"] for p in used], float)
        labels = np.array([rows[p][cluster] for p in used], object)
        row = {"masks": source, "measure": measure, "kind": "feature" if measure in shape.FEATURES else "covariate",
               "cluster": cluster, "patients": len(used), "left_out_blank_label": blank,
               "left_out_undefined_feature": undefined, "classes": len(set(labels)), "hypotheses": hypotheses}
        if len(used) < 2 or len(set(labels)) < 2:
          out.append({**row, "p_min": math.nan, "p_bonferroni": math.nan, "significant": False,
                      "best_quantile": math.nan, "best_threshold": math.nan, "medians": ""})
          continue
        tests = stats.dichotomised_tests(values, labels, settings.quantiles)
        best = min(tests, key=lambda t: t["p"])
        medians = "; ".join(f"{c}: {np.median(values[labels == c]):.4g}" for c in _label_order(labels))
        out.append({**row, "p_min": best["p"], "p_bonferroni": min(1.0, best["p"] * hypotheses),
                    "significant": best["p"] < settings.alpha / hypotheses, "best_quantile": best["quantile"],
                    "best_threshold": best["threshold"], "medians": medians})
  for source in sources:
    for kind in ("feature", "covariate"):
      cells = [r for r in out if r["masks"] == source and r["kind"] == kind and not math.isnan(r["p_min"])]
      for r in cells:
        r["p_table"] = min(1.0, r["p_min"] * hypotheses * len(cells))
        r["significant_table"] = r["p_table"] < settings.alpha
  for r in out:
    r.setdefault("p_table", math.nan)
    r.setdefault("significant_table", False)
  return out


def aucs(rows: dict, sources, settings: AnalysisSettings) -> list[dict]:
  patients, out = sorted(rows), []
  rng = np.random.default_rng(settings.seed)
  for source in sources:
    for measure in MEASURES:
      used, _, _ = _defined(rows, patients, source, measure, settings.auc_cluster)
      values = np.array([rows[p][f"{source}_{measure}"] for p in used], float)
      labels = np.array([rows[p][settings.auc_cluster] for p in used], object)
      for c in _label_order(labels):
        positive = labels == c
        point, low, high = stats.bootstrap_auc(values, positive, settings.bootstrap, rng)
        out.append({"masks": source, "measure": measure, "cluster": settings.auc_cluster, "positive": c,
                    "n_positive": int(positive.sum()), "n_negative": int((~positive).sum()),
                    "auc": point, "low": low, "high": high})
  return out


def agreement(rows: dict, settings: AnalysisSettings) -> list[dict]:
  patients, out = sorted(rows), []
  rng = np.random.default_rng(settings.seed + 1)
  for measure in MEASURES:
    both = sorted(set(_defined(rows, patients, "manual", measure)[0])
                  & set(_defined(rows, patients, "automatic", measure)[0]))
    a = np.array([rows[p][f"manual_{measure}"] for p in both], float)
    b = np.array([rows[p][f"automatic_{measure}"] for p in both], float)
    rho = stats.bootstrap_paired(stats.spearman, a, b, settings.bootstrap, rng)
    icc = stats.bootstrap_paired(stats.icc_agreement, a, b, settings.bootstrap, rng)
    out.append({"measure": measure, "patients": len(both), "left_out_undefined": len(patients) - len(both),
                "spearman": rho[0], "spearman_low": rho[1], "spearman_high": rho[2],
                "icc": icc[0], "icc_low": icc[1], "icc_high": icc[2],
                "manual_median": float(np.median(a)) if len(a) else math.nan,
                "automatic_median": float(np.median(b)) if len(b) else math.nan})
  return out


# ---- the whole run ----

def run(manual_dir, out, *, predictions=None, models=None, checkpoint="best", data_csv=None,
        shape_settings: shape.ShapeSettings = shape.ShapeSettings(),
        settings: AnalysisSettings = AnalysisSettings(), save_masks: bool = False) -> dict:
  """Features of every patient's manual (and automatic) masks, their
  associations with the clusters, AUCs, agreement; files under `out`."""
  shape_settings.check()
  settings.check()
  if predictions and models:
    raise ValueError("give automatic masks either as --predictions (a predict folder) or --models, not both")
  if save_masks and not models:
    raise ValueError("--save_masks writes the masks --models predicts: give --models")
  source = kaggle.open_source(manual_dir)
  by_patient = patient_slices(source)
  patients = sorted(by_patient)
  clusters = read_clusters(source, patients, settings.clusters, data_csv)  # fail before the long part
  if models:
    assign_models([pathlib.Path(m).expanduser() for m in models], patients)  # likewise
  if predictions:
    predictions = pathlib.Path(predictions).expanduser()
    if not predictions.is_dir():
      raise DataError(f"--predictions={predictions} is not a folder")
    extra = sorted(p.name for p in predictions.iterdir() if p.is_dir() and p.name not in by_patient)
    if extra:
      logging.warning("%s holds %d case(s) with no images in %s: %s", predictions, len(extra),
                      source.describe(""), ", ".join(extra[:5]))
    for p in patients:  # the layout, before the long part
      check_predicted_layout(predictions, p, by_patient[p])
  out = pathlib.Path(out).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  sources = ("manual", "automatic") if (predictions or models) else ("manual",)
  rows = {p: dict(clusters[p]) for p in patients}

  def record(name, patient, mask):
    for key, value in shape.features(mask, shape_settings).items():
      rows[patient][f"{name}_{key}"] = value

  for p in cli.progress(patients, desc="manual masks", unit="patient"):
    record("manual", p, manual_mask(source, by_patient[p]))
  if predictions:
    for p in cli.progress(patients, desc="predicted masks", unit="patient"):
      record("automatic", p, read_predicted_masks(predictions, p, by_patient[p]))
  elif models:
    for p, mask in cli.progress(cross_validated_masks(models, source, by_patient, checkpoint),
                                total=len(patients), desc="cross-validated masks", unit="patient"):
      record("automatic", p, mask)
      if save_masks:
        write_predicted_masks(out / "automatic_masks", p, by_patient[p], mask)

  result = {"rows": rows, "sources": sources, "associations": associations(rows, sources, settings),
            "aucs": aucs(rows, sources, settings),
            "agreement": agreement(rows, settings) if len(sources) == 2 else []}
  inputs = {"manual_dir": source.describe(""), "predictions": str(predictions) if predictions else None,
            "models": [str(m) for m in models] if models else None, "checkpoint": checkpoint}
  write_outputs(out, result, shape_settings, settings, inputs)
  return result


# ---- outputs ----

def _fmt(value) -> str:
  if isinstance(value, bool) or value is None:
    return "" if value is None else str(value)
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.6g}"
  return str(value)


def _write_csv(path: pathlib.Path, records: list[dict]) -> None:
  """No records: no file (and not an earlier run's left in `out`)."""
  if not records:
    path.unlink(missing_ok=True)
    return
  columns = list(dict.fromkeys(k for r in records for k in r))
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in records:
      writer.writerow([_fmt(r.get(c)) for c in columns])


def _p(value: float) -> str:
  return "n/a" if math.isnan(value) else f"{value:.2g}"


def markdown(result: dict, shape_settings: shape.ShapeSettings, settings: AnalysisSettings, inputs: dict) -> str:
  rows, sources = result["rows"], result["sources"]
  hypotheses = len(settings.quantiles)
  lines = ["# Shape features and genomic clusters (Buda et al. 2019's analysis)", "",
           f"- masks: manual from {inputs['manual_dir']}"
           + (f"; automatic from {inputs['predictions']}" if inputs["predictions"] else "")
           + (f"; automatic from the cross-validated models {', '.join(inputs['models'])} (each patient by the "
              f"model that held it out, checkpoint {inputs['checkpoint']})" if inputs["models"] else ""),
           f"- patients: {len(rows)}"]
  for source in sources:
    empty = sorted(p for p in rows if rows[p][f"{source}_empty"])
    border = sum(bool(rows[p][f"{source}_touches_border"]) for p in rows)
    lines.append(f"- {source} masks: {len(empty)} empty (features undefined, left out of every test"
                 + (f": {', '.join(empty)}" if empty else "") + f"); {border} touch the image edge or the "
                 f"first/last slice (measured as visible)")
  lines += [f"- test: each feature dichotomised at its {hypotheses} quantiles "
            f"{', '.join(f'{q:.3g}' for q in settings.quantiles)} (among the patients in that test), a two-sided "
            f"Fisher exact test of each 2 x k table against the clusters (exact enumeration); p_min is the "
            f"smallest of the {hypotheses} p-values, uncorrected, as the paper reports; significant when "
            f"p_min < {settings.alpha}/{hypotheses} = {settings.alpha / hypotheses:.3g} (Bonferroni); "
            f"p_bonf = min(1, {hypotheses} x p_min); over the table, p_table = min(1, {hypotheses} x cells x "
            f"p_min), cells: the tested feature x cluster cells of one mask source (covariates apart), "
            f"marked + when p_table < {settings.alpha}",
            f"- features: BEVR on the 3-D mask (voxel-corner hull, Khachiyan tolerance "
            f"{shape_settings.khachiyan_tolerance}); ASD ({shape_settings.asd_bins} sectors, "
            f"{'normalised' if shape_settings.normalise_asd else 'in pixels x spacing'}) and MF (window "
            f"{shape_settings.mf_window:.3g} of the boundary) on the slice with the largest tumour area; "
            f"spacing {tuple(shape_settings.spacing)}",
            f"- AUC: each measure against each {settings.auc_cluster} value, one versus the rest; 95% interval "
            f"from {settings.bootstrap} stratified bootstrap resamples (seed {settings.seed}); AUC < 0.5: lower "
            f"values in that cluster", ""]
  for source in sources:
    lines += [f"## Associations, {source} masks", "",
              "| measure | " + " | ".join(settings.clusters) + " |",
              "|---|" + "---|" * len(settings.clusters)]
    for measure in MEASURES:
      cells = []
      for cluster in settings.clusters:
        r = next(a for a in result["associations"] if a["masks"] == source and a["measure"] == measure
                 and a["cluster"] == cluster)
        mark = "**" if r["significant"] else ""
        cells.append(f"{mark}{_p(r['p_min'])}{mark}{'+' if r['significant_table'] else ''} (n={r['patients']}"
                     + (f", {r['left_out_blank_label']} blank" if r["left_out_blank_label"] else "") + ")")
      lines.append(f"| {measure} | " + " | ".join(cells) + " |")
    lines += ["", f"p_min; **bold**: < {settings.alpha / hypotheses:.3g} (corrected within the cell, as the paper); "
              f"+: also < {settings.alpha} corrected over the table (p_table). n: patients tested; blank: left out "
              f"for a blank label in data.csv. Medians by cluster are in associations.csv.", ""]
  lines += [f"## AUC for {settings.auc_cluster} (one versus the rest)", "",
            "| measure | positive | " + " | ".join(sources) + " |", "|---|---|" + "---|" * len(sources)]
  positives = _label_order({a["positive"] for a in result["aucs"]})
  for measure in MEASURES:
    for c in positives:
      cells = []
      for source in sources:
        r = next((a for a in result["aucs"] if a["masks"] == source and a["measure"] == measure
                  and a["positive"] == c), None)
        cells.append("n/a" if r is None or math.isnan(r["auc"]) else
                     f"{r['auc']:.2f} [{r['low']:.2f}, {r['high']:.2f}] ({r['n_positive']} vs {r['n_negative']})")
      lines.append(f"| {measure} | {c} | " + " | ".join(cells) + " |")
  if result["agreement"]:
    lines += ["", "## Agreement, manual versus automatic masks", "",
              "| measure | patients | Spearman rho [95% CI] | ICC(A,1) [95% CI] | median manual | median automatic |",
              "|---|---|---|---|---|---|"]
    for r in result["agreement"]:
      lines.append(f"| {r['measure']} | {r['patients']} | {r['spearman']:.2f} [{r['spearman_low']:.2f}, "
                   f"{r['spearman_high']:.2f}] | {r['icc']:.2f} [{r['icc_low']:.2f}, {r['icc_high']:.2f}] | "
                   f"{r['manual_median']:.4g} | {r['automatic_median']:.4g} |")
  return "\n".join(lines) + "\n"


def plot(path: pathlib.Path, rows: dict, sources, measure: str, cluster: str) -> None:
  """Strip and box plot of one measure by cluster, one panel per mask source."""
  fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), sharey=True, squeeze=False)
  for ax, source in zip(axes[0], sources):
    used, _, _ = _defined(rows, sorted(rows), source, measure, cluster)
    labels = _label_order(rows[p][cluster] for p in used)
    groups = [[rows[p][f"{source}_{measure}"] for p in used if rows[p][cluster] == c] for c in labels]
    if groups:
      ax.boxplot(groups, showfliers=False)
      ax.set_xticks(range(1, len(labels) + 1), labels)
    jitter = np.random.default_rng(0)
    for i, g in enumerate(groups, start=1):
      ax.plot(i + jitter.uniform(-0.15, 0.15, len(g)), g, "o", ms=3, alpha=0.7)
    ax.set_title(f"{source} masks (n={len(used)})")
    ax.set_xlabel(cluster)
  axes[0][0].set_ylabel(measure)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(out: pathlib.Path, result: dict, shape_settings, settings, inputs) -> None:
  rows, sources = result["rows"], result["sources"]
  keys = list(settings.clusters) + [f"{s}_{k}" for s in sources
                                    for k in ("empty", "touches_border", "feature_slice", *MEASURES)]
  _write_csv(out / "features.csv", [{"patient": p, **{k: rows[p].get(k) for k in keys}} for p in sorted(rows)])
  _write_csv(out / "associations.csv", result["associations"])
  _write_csv(out / "auc.csv", result["aucs"])
  _write_csv(out / "agreement.csv", result["agreement"])
  (out / "associations.md").write_text(markdown(result, shape_settings, settings, inputs))
  for measure in MEASURES:
    plot(out / f"{measure}_by_{settings.auc_cluster}.png", rows, sources, measure, settings.auc_cluster)
