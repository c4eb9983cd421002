"""Run an ablation sweep: python -m experiments.run --sweep=experiments/<name>.py --workdir=DIR

A sweep file defines `get_sweep(tiny: bool) -> dict` with
  config:  the base config file (e.g. "configs/unet.py")
  members: a list of {dotted.config.key: value} overrides, one run each
  common (optional): overrides applied to every member (not in member names)
  group_by (optional): the keys that name a table row (default: every
    overridden key except split.fold, so folds are averaged)
`--tiny` asks for the sweep's CI-sized variant (synthetic data, seconds).

Each member trains in DIR/<member name>. A member whose summary.json exists
is skipped as finished; an interrupted one resumes from its checkpoints; a
member that needs a file this machine lacks (a `*_path` or `manual_dir`
override that does not exist) is reported as skipped, not failed. With
--host_index/--host_count each host runs its share (members i, i+n, ...).
Afterwards every finished member's summary.json is aggregated into
DIR/results.csv, DIR/results.md (mean +- std over folds and a per-patient
bootstrap 95% interval of the mean test Dice) and DIR/results.png.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import traceback

import numpy as np
from absl import flags, logging

from lgg_jax import cli, figures, report, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_sweep(path: str | os.PathLike, tiny: bool) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep = module.get_sweep(tiny)
  if not sweep.get("members"):
    raise ValueError(f"{path}: get_sweep() returned no members")
  return sweep


def member_name(overrides: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in sorted(overrides.items())).replace("/", "_") or "base"


def build_config(base_config: str, overrides: dict):
  """`base_config` names a config file of the `configs` package, e.g. "configs/unet.py"."""
  path = pathlib.PurePosixPath(base_config)
  if path.parent.name != "configs" or path.suffix != ".py":
    raise ValueError(f"sweep config {base_config!r}: want configs/<name>.py")
  config = importlib.import_module(f"configs.{path.stem}").get_config()
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    target = config
    for part in section.split(".") if section else []:
      target = target[part]
    if name not in target:
      raise KeyError(f"sweep override {key!r}: no such config key")
    target[name] = value
  return config


def missing_files(overrides: dict) -> list[str]:
  return [f"{k}={v}" for k, v in overrides.items()
          if (k.endswith("_path") or k.endswith("manual_dir")) and v and not pathlib.Path(v).expanduser().exists()]


def run_sweep(sweep: dict, workdir: pathlib.Path, host_index: int = 0, host_count: int = 1) -> dict:
  workdir.mkdir(parents=True, exist_ok=True)
  status = {}
  for i, overrides in enumerate(sweep["members"]):
    name = member_name(overrides)
    if i % host_count != host_index:
      continue
    member_dir = workdir / name
    if (member_dir / "summary.json").exists():
      status[name] = "finished earlier"
      continue
    lacking = missing_files({**sweep.get("common", {}), **overrides})
    if lacking:
      status[name] = f"skipped: missing {', '.join(lacking)}"
      logging.warning("%s %s", name, status[name])
      continue
    logging.info("sweep member %d/%d: %s", i + 1, len(sweep["members"]), name)
    try:
      config = build_config(sweep["config"], {**sweep.get("common", {}), **overrides})
      summary = train.train_and_evaluate(config, member_dir)
      status[name] = "preempted" if summary.get("preempted") else "finished"
      if summary.get("preempted"):
        break
      if config.write_report:
        report.write(member_dir)
    except Exception as e:  # one failing member must not stop the sweep
      status[name] = f"failed: {type(e).__name__}: {e}"
      logging.error("%s failed:\n%s", name, traceback.format_exc())
  (workdir / f"status_host{host_index}.json").write_text(json.dumps(status, indent=2))
  return status


def bootstrap_interval(values: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
  """95% interval of the mean by resampling patients with replacement."""
  if len(values) == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(sweep: dict, workdir: pathlib.Path) -> list[dict]:
  rows = []
  for overrides in sweep["members"]:
    path = workdir / member_name(overrides) / "summary.json"
    if not path.exists():
      continue
    s = json.loads(path.read_text())
    rows.append({**{k: str(v) for k, v in overrides.items()}, "member": member_name(overrides),
                 "val_dice": s.get("val_dice"), "best_val_dice": s.get("best_val_dice"),
                 "test_dice": s.get("test_dice"), "test_tumour_slice_dice": s.get("test", {}).get("tumour_slice_dice"),
                 "test_empty_fp_rate": s.get("test", {}).get("empty_false_positive_rate"),
                 "steps": s.get("step"), "_per_patient": list(s.get("test_per_patient_dice", {}).values())})
  if not rows:
    return []
  keys = sweep.get("group_by") or sorted({k for o in sweep["members"] for k in o} - {"split.fold"})
  with open(workdir / "results.csv", "w", newline="") as f:
    fields = [k for k in rows[0] if not k.startswith("_")]
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  groups = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
  table = []
  for group, members in groups.items():
    test = np.array([m["test_dice"] for m in members], float)
    patients = np.array([d for m in members for d in m["_per_patient"]], float)
    low, high = bootstrap_interval(patients)
    table.append({"group": group, "runs": len(members), "mean": float(test.mean()),
                  "std": float(test.std(ddof=1)) if len(test) > 1 else 0.0, "low": low, "high": high,
                  "patients": len(patients),
                  "fp": float(np.mean([m["test_empty_fp_rate"] for m in members]))})
  lines = [f"# {sweep.get('title', workdir.name)}", "",
           "Test per-patient Dice of each member's best checkpoint: mean +- std over runs (folds), "
           "and a 95% bootstrap interval of the mean over the pooled test patients.", "",
           "| " + " | ".join(keys) + " | runs | test Dice mean +- std | 95% CI (patients) | tumour-free slices with FP |",
           "|" + "---|" * (len(keys) + 4)]
  for t in table:
    lines.append("| " + " | ".join(t["group"]) + f" | {t['runs']} | {t['mean']:.4f} +- {t['std']:.4f} | "
                 f"[{t['low']:.4f}, {t['high']:.4f}] (n={t['patients']}) | {t['fp']:.1%} |")
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  plt = figures.plt()
  fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(table)), 4))
  labels = ["\n".join(t["group"]) for t in table]
  means = [t["mean"] for t in table]
  errors = np.array([[t["mean"] - t["low"], t["high"] - t["mean"]] for t in table]).T
  ax.bar(range(len(table)), means, yerr=np.nan_to_num(errors), capsize=4, color="tab:blue")
  ax.set_xticks(range(len(table)), labels, fontsize=8)
  ax.set_ylabel("test per-patient Dice")
  ax.set_ylim(0, 1)
  ax.set_title(sweep.get("title", workdir.name))
  fig.tight_layout()
  fig.savefig(workdir / "results.png", dpi=100)
  plt.close(fig)
  return table


def main(argv):
  del argv
  sweep = load_sweep(_SWEEP.value, _TINY.value)
  workdir = pathlib.Path(_WORKDIR.value or REPO / "runs" / "sweeps" / pathlib.Path(_SWEEP.value).stem)
  status = run_sweep(sweep, workdir, _HOST_INDEX.value, _HOST_COUNT.value)
  for name, s in status.items():
    print(f"{name}: {s}")
  if aggregate(sweep, workdir):
    print((workdir / "results.md").read_text())


if __name__ == "__main__":
  _SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/model_comparison.py.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where members run; default runs/sweeps/<sweep name>.")
  _TINY = flags.DEFINE_bool("tiny", False, "The sweep's CI-sized variant on synthetic data.")
  _HOST_INDEX = flags.DEFINE_integer("host_index", 0, "This host's index among host_count.")
  _HOST_COUNT = flags.DEFINE_integer("host_count", 1, "Hosts sharing the sweep.")
  flags.mark_flags_as_required(["sweep"])
  cli.run(main)
