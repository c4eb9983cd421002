"""Evaluate a trained run's checkpoint on a split or on another dataset.

python -m lgg_jax.evaluate --workdir=runs/unet_cpu [--split=test] [--checkpoint=best]
    [--manual_dir=/other/kaggle_3m]   # every patient of an external dataset instead
    [--tta] [--largest_component] [--threshold=0.5 | --threshold=val]

Writes evaluation/<name>/summary.json, per_patient.csv and table.md in the
workdir. Metrics (see `metrics.py` for the empty-mask rule):
  patient_dice   mean over patients of volumetric Dice (Buda et al. 2019)
  slice_dice, tumour_slice_dice, pooled_dice (the seed's, for comparison)
  hd95           95th-percentile symmetric Hausdorff distance per patient, in
                 pixels (the TIFFs carry no spacing). Rule: both volumes empty
                 -> 0; exactly one empty -> NaN, counted in `hd95_undefined`
                 and left out of the mean.
  empty_false_positive_rate  tumour-free slices with any predicted pixel
  sensitivity, precision     pixel-wise over all slices of the split
"""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
from absl import app, flags, logging


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
  """95th-percentile symmetric surface distance between two binary volumes,
  in pixels, measured slice by slice in 2-D and pooled over the volume."""
  import scipy.ndimage as ndi
  pred, truth = pred.astype(bool), truth.astype(bool)
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("nan")

  def surface(v):
    return v & ~ndi.binary_erosion(v, structure=np.ones((1, 3, 3), bool), border_value=0)

  def distance_to(v):  # in-plane distance to v's surface, per slice; inf where a slice has none
    out = np.full(v.shape, np.inf)
    for i, s in enumerate(surface(v)):
      if s.any():
        out[i] = ndi.distance_transform_edt(~s)
    return out

  sp, st = surface(pred), surface(truth)
  d = np.concatenate([distance_to(truth)[sp], distance_to(pred)[st]])
  d = d[np.isfinite(d)]
  return float(np.percentile(d, 95)) if d.size else float("nan")


def largest_component(volume: np.ndarray) -> np.ndarray:
  import scipy.ndimage as ndi
  labels, n = ndi.label(volume)
  if n <= 1:
    return volume
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (1 + int(np.argmax(sizes)))


def make_probability_fn(eval_graphdef, tta: bool):
  """jit(params, model_state, images) -> sigmoid probabilities (N, H, W);
  with tta, averaged with the horizontally and vertically flipped inputs."""
  import jax

  from lgg_jax import train

  @jax.jit
  def probs(params, model_state, images):
    model = train.merge(eval_graphdef, params, model_state)
    p = jax.nn.sigmoid(model(images))
    if tta:
      p = (p + jax.nn.sigmoid(model(images[:, :, ::-1]))[:, :, ::-1]
           + jax.nn.sigmoid(model(images[:, ::-1]))[:, ::-1]) / 3
    return p[..., 0]
  return probs


def predict_probabilities(eval_graphdef, state, data, indices, config, mesh, tta: bool) -> np.ndarray:
  """Sigmoid probabilities (N, H, W) for `indices`, in that order."""
  import jax
  from jax.experimental import multihost_utils

  from lgg_jax import train
  from lgg_jax.data import pipeline

  probs = make_probability_fn(eval_graphdef, tta)
  out, order = [], []
  for local in pipeline.eval_batches(data, indices, config, jax.process_index(), jax.process_count()):
    batch = train.global_batch(local, mesh)
    p = probs(state["params"], state["model_state"], batch["image"])
    out.append(np.asarray(multihost_utils.process_allgather(p, tiled=True)))
    order.append(np.asarray(multihost_utils.process_allgather(batch["index"], tiled=True)))
  probs_all, index_all = np.concatenate(out), np.concatenate(order)
  keep = index_all >= 0
  by_index = dict(zip(index_all[keep].tolist(), probs_all[keep]))
  return np.stack([by_index[int(i)] for i in indices])


def truth_masks(data, indices, size: int) -> np.ndarray:
  from lgg_jax.data import pipeline
  masks = []
  for i in indices:
    ex = data.source[int(i)]
    r = pipeline.resize({"image": ex["image"], "mask": ex["mask"], "index": 0}, size)
    masks.append(r["mask"] > 0)
  return np.stack(masks)


def score(patient_ids: np.ndarray, probs: np.ndarray, truth: np.ndarray, threshold: float,
          keep_largest: bool) -> tuple[dict, list[dict]]:
  from lgg_jax import metrics
  pred = probs >= threshold
  rows = []
  for pid in np.unique(patient_ids):
    sel = patient_ids == pid
    if keep_largest:
      pred[sel] = largest_component(pred[sel])
    p, t = pred[sel], truth[sel]
    rows.append({"patient": str(pid), "slices": int(sel.sum()), "tumour_slices": int(t.any(axis=(1, 2)).sum()),
                 "dice": float(metrics.dice_from_counts((p & t).sum(), p.sum(), t.sum())),
                 "hd95_px": hd95(p, t), "true_pixels": int(t.sum()), "predicted_pixels": int(p.sum())})
  counts = {"intersection": (pred & truth).sum(axis=(1, 2)), "predicted": pred.sum(axis=(1, 2)),
            "true": truth.sum(axis=(1, 2))}
  summary = metrics.summarise(patient_ids, counts)
  hd = np.array([r["hd95_px"] for r in rows])
  tp, fp, fn = counts["intersection"].sum(), (counts["predicted"] - counts["intersection"]).sum(), \
      (counts["true"] - counts["intersection"]).sum()
  summary.update(hd95_px=float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan"),
                 hd95_undefined=int(np.isnan(hd).sum()),
                 sensitivity=float(tp / max(tp + fn, 1)), precision=float(tp / max(tp + fp, 1)),
                 threshold=float(threshold), largest_component=keep_largest)
  return summary, rows


def choose_threshold(patient_ids, probs, truth, keep_largest, grid=np.linspace(0.1, 0.9, 17)) -> float:
  """The threshold with the best mean per-patient Dice (on validation)."""
  scores = [score(patient_ids, probs, truth, t, keep_largest)[0]["patient_dice"] for t in grid]
  return float(grid[int(np.argmax(scores))])


def write_outputs(out: pathlib.Path, summary: dict, rows: list[dict]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  with open(out / "per_patient.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  keys = ["patient_dice", "patient_dice_median", "tumour_slice_dice", "slice_dice", "pooled_dice", "hd95_px",
          "empty_false_positive_rate", "sensitivity", "precision", "threshold", "patients", "slices"]
  table = ["| metric | value |", "|---|---|"] + [
      f"| {k} | {summary[k]:.4f} |" if isinstance(summary[k], float) else f"| {k} | {summary[k]} |" for k in keys]
  table += ["", "| patient | slices | tumour slices | Dice | HD95 (px) |", "|---|---|---|---|---|"]
  table += [f"| {r['patient']} | {r['slices']} | {r['tumour_slices']} | {r['dice']:.4f} | {r['hd95_px']:.1f} |"
            for r in sorted(rows, key=lambda r: r["dice"])]
  (out / "table.md").write_text("\n".join(table) + "\n")


def load_run(workdir, checkpoint: str = "best") -> dict:
  """A run's config, graphdefs and restored state ('best', 'latest' or a step)."""
  import jax
  import ml_collections
  import orbax.checkpoint as ocp

  from lgg_jax import train
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if not (workdir / "config.json").is_file():
    raise FileNotFoundError(f"{workdir} is not a run folder: no config.json")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  if "conv_impl" not in config.model:  # runs from before the knob; the form does not change the weights
    config.model.conv_impl = "auto"
  mesh = train.make_mesh()
  tx, _ = train.make_optimizer(config, total_steps=1)
  graphdefs, state = train.create_state(config, tx)
  folder = workdir / ("best" if checkpoint == "best" else "checkpoints")
  manager = ocp.CheckpointManager(folder, item_names=("state", "data") if folder.name == "checkpoints" else ("state",))
  step = manager.latest_step() if checkpoint in ("best", "latest") else int(checkpoint)
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint {checkpoint!r} in {folder}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  manager.close()
  state = jax.device_put(restored["state"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return {"workdir": workdir, "config": config, "graphdefs": graphdefs, "state": state, "mesh": mesh,
          "step": step}


def evaluate_run(workdir, *, checkpoint="best", split="test", manual_dir="", tta=False,
                 keep_largest=False, threshold="config", name="") -> dict:
  import jax

  from lgg_jax.data import pipeline
  run = load_run(workdir, checkpoint)
  workdir, config, graphdefs, state, mesh, step = (run[k] for k in ("workdir", "config", "graphdefs", "state",
                                                                    "mesh", "step"))
  data = pipeline.load(config)
  chosen = config.threshold
  if threshold == "val":
    vp = predict_probabilities(graphdefs["eval"], state, data, data.split.val, config, mesh, tta)
    chosen = choose_threshold(data.patient_ids[data.split.val], vp,
                              truth_masks(data, data.split.val, config.data.image_size), keep_largest)
  elif threshold != "config":
    chosen = float(threshold)
  if manual_dir:
    ext_config = config.copy_and_resolve_references()
    ext_config.data.manual_dir = str(manual_dir)
    data = pipeline.load(ext_config)
    indices = np.arange(len(data.patient_ids))
  else:
    indices = getattr(data.split, split)
  probs = predict_probabilities(graphdefs["eval"], state, data, indices, config, mesh, tta)
  summary, rows = score(data.patient_ids[indices], probs, truth_masks(data, indices, config.data.image_size),
                        chosen, keep_largest)
  summary.update(checkpoint_step=int(step), split="external" if manual_dir else split, tta=tta,
                 dataset=data.manual_dir)
  name = name or "_".join(["external" if manual_dir else split, f"step{step}"] + (["tta"] if tta else [])
                          + (["lcc"] if keep_largest else []) + ([f"thr-{threshold}"] if threshold != "config" else []))
  if jax.process_index() == 0:
    write_outputs(workdir / "evaluation" / name, summary, rows)
  return summary


def main(argv):
  del argv
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
  summary = evaluate_run(_WORKDIR.value, checkpoint=_CHECKPOINT.value, split=_SPLIT.value,
                         manual_dir=_MANUAL_DIR.value, tta=_TTA.value, keep_largest=_LCC.value,
                         threshold=_THRESHOLD.value, name=_NAME.value)
  logging.info("%s", json.dumps(summary, indent=2))
  print(f"per-patient Dice {summary['patient_dice']:.4f} (median {summary['patient_dice_median']:.4f}), "
        f"tumour-slice Dice {summary['tumour_slice_dice']:.4f}, HD95 {summary['hd95_px']:.1f} px, "
        f"false positives on {summary['empty_false_positive_rate']:.1%} of tumour-free slices "
        f"({summary['patients']} patients, threshold {summary['threshold']:.2f})")


if __name__ == "__main__":
  # Flags exist only when run as a program, so modules import side by side.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by lgg_jax.main.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _SPLIT = flags.DEFINE_string("split", "test", "train, val or test (of the run's own split).")
  _MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "External dataset: evaluate every patient in it.")
  _TTA = flags.DEFINE_bool("tta", False, "Average the probabilities over horizontal and vertical flips.")
  _LCC = flags.DEFINE_bool("largest_component", False, "Keep each patient's largest 3-D component.")
  _THRESHOLD = flags.DEFINE_string("threshold", "config", "'config', 'val' (chosen on validation) or a number.")
  _NAME = flags.DEFINE_string("name", "", "Output subfolder name (default from the options).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
