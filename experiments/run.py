"""Run a sweep: python -m experiments.run --sweep=experiments/<name>.py [--workdir=DIR]

A sweep file defines `get_sweep(tiny: bool) -> dict` with
  config:  the base config file (e.g. "configs/unet.py"); a member may name
           its own with a "config" key (each model starts from its config)
  members: a list of {dotted.config.key: value} overrides, one run each; or
  rows:    an ordered list of {"name", "label", "overrides", "folds", "seeds"} (an
           ablation: a chain where each row adds to the chain row before it),
           where a row with "evaluate" instead of training re-scores the runs
           of the row it names (by label) under other inference settings, and
           a row with "compare_to" (a label) is a side row: compared with the
           row it names and left out of the chain (the next row still compares
           to the last chain row); a row re-scoring a side row is a side row too
  folds, seeds (with rows): the defaults for every row
  common (optional): overrides applied to every member (not in member names)
  group_by (optional, with members): the keys that name a table row
`--tiny` asks for the sweep's CI-sized variant (synthetic data, seconds).

Each member trains in DIR/<member name> (an interrupted one resumes) and
leaves one small result file, RESULTS/<member name>.json: its overrides and
the whole config they resolved to, test per-patient rows, summary metrics and
provenance (a re-scoring row's names the commit that trained and the one that
re-scored). RESULTS defaults to experiments/results/<sweep name>/ and is
committed; a member whose result file exists is not run again, on this
machine or another. A member lacking a file this machine does not have (a
`*_path` or `manual_dir` override) is skipped, not failed. With --host_index/--host_count each host runs members
i, i+n, ...; --rows and --folds run a subset (e.g. the folds trained so far). Afterwards the result files are aggregated into RESULTS/results.md
and results.csv (and DIR/results.png): per row the mean and median
per-patient Dice with a per-patient bootstrap 95% interval, the 3-D HD95,
tumour-free slices with false positives and missed patients; for rows, the
paired per-patient difference to the row it is compared with (the chain row
before it, or a side row's named row), named in the table, with its interval;
for a row trained with several seeds, each seed's paired difference to the
first (the noise floor). A member that fails does not stop the others; the
command then exits 1 naming the failed members.
"""

from __future__ import annotations

import collections
import csv
import datetime
import importlib
import importlib.util
import json
import os
import pathlib
import sys
import time
import traceback

import numpy as np
import scipy.stats
from absl import flags, logging

from lgg_jax import cli, command_flags, config_defaults, evaluate, figures, metrics, provenance, report, train
from lgg_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
_BOOTSTRAP_ROUNDS = 10000


# --------------------------------------------------------------------------- sweeps and members

def load_sweep(path: str | os.PathLike, tiny: bool) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep = module.get_sweep(tiny)
  sweep.setdefault("name", path.stem)
  if sweep.get("rows"):
    sweep["members"] = _expand_rows(sweep, path)
  if not sweep.get("members"):
    raise ValueError(f"{path}: get_sweep() returned no members")
  return sweep


def _expand_rows(sweep: dict, path) -> list[dict]:
  """Members of an ablation; each carries its row label and, for a
  re-scoring row, the training member it re-scores."""
  members, by_label = [], {}
  for key in ("name", "label"):  # members are found by name and grouped by label
    repeated = sorted({str(r[key]) for r in sweep["rows"] if [q[key] for q in sweep["rows"]].count(r[key]) > 1})
    if repeated:
      raise ValueError(f"{path}: rows share a {key}: {', '.join(repeated)}")
  for row in sweep["rows"]:
    label = row["label"]
    if row.get("compare_to") and row["compare_to"] not in by_label:
      raise ValueError(f"{path}: row {label!r} is compared to {row['compare_to']!r}, which no earlier row is")
    if "evaluate" in row:
      source = by_label.get(row["evaluate"])
      if source is None:
        raise ValueError(f"{path}: row {label!r} re-scores {row['evaluate']!r}, which no earlier row is")
      rescored = [{**m, **row["inference"], "_row": label, "_from": m.get("_from", m["_name"]),
                   "_name": m["_name"].replace(m["_row_name"], row["name"], 1), "_row_name": row["name"]}
                  for m in source]
      members += rescored
      by_label[label] = rescored
      continue
    row_members = []
    for fold in row.get("folds", sweep.get("folds", (0,))):
      for seed in row.get("seeds", sweep.get("seeds", (0,))):
        row_members.append({**row["overrides"], "split.fold": fold, "seed": seed, "_row": label,
                            "_row_name": row["name"], "_name": f"{row['name']}-fold{fold}-seed{seed}"})
    members += row_members
    by_label[label] = row_members
  return members


def references(rows: list[dict]) -> dict[str, str | None]:
  """Per row label, the label of the row it is compared with by name (a side
  row), or None for a chain row (compared with the chain row before it)."""
  named = {}
  for row in rows:
    named[row["label"]] = row.get("compare_to") or (row["evaluate"] if named.get(row.get("evaluate")) else None)
  return named


def overrides_of(member: dict) -> dict:
  return {k: v for k, v in member.items() if not k.startswith("_")}


def member_name(member: dict) -> str:
  """A row member's short name, else its overrides spelled out (no commas:
  run folders go into comma-separated --workdir lists)."""
  if "_name" in member:
    return member["_name"]
  return "+".join(f"{k}={v}" for k, v in sorted(overrides_of(member).items())).replace("/", "_") or "base"


def build_config(base_config: str, overrides: dict):
  """`base_config` names a config file of the `configs` package, e.g. "configs/unet.py"."""
  overrides = dict(overrides)
  base_config = overrides.pop("config", base_config)
  path = pathlib.PurePosixPath(base_config)
  if path.parent.name != "configs" or path.suffix != ".py":
    raise ValueError(f"sweep config {base_config!r}: want configs/<name>.py")
  config = importlib.import_module(f"configs.{path.stem}").get_config()
  return cli.override(config, overrides, "sweep override")


def missing_files(overrides: dict) -> list[str]:
  return [f"{k}={v}" for k, v in overrides.items()
          if (k.endswith("_path") or k.endswith("manual_dir")) and v and not pathlib.Path(v).expanduser().exists()]


_ABSENT = object()
_MACHINE_PATHS = ("manual_dir", "data_dir")  # where the data sits on one machine, not what trained


def settings_changed(result: dict, overrides: dict, config=None) -> list[str]:
  """The settings the member would run with (`config`: its sweep's config
  file, common block and own overrides) that its result file was not made
  with. A file that carries its whole config is compared setting by setting
  (an edited config file or a dropped override shows); an older one by its
  overrides alone."""
  if "config" in result:
    return config_defaults.differences(result["config"], config, result.get("member", "result file"))
  changed, made_with = [], config_defaults.migrate(result.get("overrides", {}))  # keys renamed since, today's
  for key, value in sorted(overrides.items()):
    if key == "config" or key.endswith(_MACHINE_PATHS):  # the base config file; where the data sits
      continue
    made = made_with.get(key, _ABSENT)
    value = json.loads(json.dumps(value, default=str))  # as the file stores it
    if made is not _ABSENT and made != value:
      changed.append(f"{key}: {made!r} -> {value!r}")
  changed += [f"{key}: {made!r} -> (not set)" for key, made in sorted(made_with.items())
              if key not in overrides and key != "config" and not key.endswith(_MACHINE_PATHS)]
  return changed


def read_result(path: pathlib.Path, sweep: dict, member: dict) -> tuple[dict | None, str | None]:
  """A member's result file and None, or None and why it cannot stand for
  the member (unreadable, or made with other settings)."""
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return None, f"{path} is unreadable ({type(e).__name__}: {e}): move it away to run the member again"
  overrides = {**sweep.get("common", {}), **overrides_of(member)}
  config = build_config(sweep["config"], overrides) if "config" in result else None
  changed = settings_changed(result, overrides, config)
  if changed:
    return None, (f"{path} was made with other settings ({'; '.join(changed)}): move it and the member's run "
                  "folder away to run the member again, or restore the sweep's settings")
  return result, None


def results_dir(sweep: dict, tiny: bool, workdir: pathlib.Path) -> pathlib.Path:
  """Committed result files live in the repo; the tiny variants' beside their runs."""
  return workdir / "results" if tiny else REPO / "experiments" / "results" / sweep["name"]


# --------------------------------------------------------------------------- running

def _result(member: dict, config, summary: dict, seconds: float | None) -> dict:
  """The committed record of a member: its overrides and the whole config
  they resolved to, its scores, and what produced them."""
  prov = summary.get("provenance", {})
  return {"member": member_name(member), "row": member.get("_row"), "overrides": overrides_of(member),
          "config": json.loads(config.to_json_best_effort()),
          "evaluated_from": member.get("_from"), "epochs": config.num_epochs, "steps": summary.get("step"),
          "best_step": summary.get("best_step"), "val_dice": summary.get("val_dice"),
          "best_val_dice": summary.get("best_val_dice"), "test": summary.get("test"),
          "inference": summary.get("inference"), "test_per_patient": summary.get("test_per_patient"),
          "wall_seconds": seconds, "finished": datetime.date.today().isoformat(),
          "provenance": {"git_commit": prov.get("git_commit"), "dataset": prov.get("dataset"),
                         "devices": prov.get("devices"), "versions": prov.get("versions")}}


def _rescore(sweep: dict, member: dict, workdir: pathlib.Path) -> dict:
  """A member that re-scores another's training under other inference settings."""
  source = workdir / member["_from"]
  if not (source / "summary.json").exists():
    raise FileNotFoundError(f"{source} has not finished: run its row first (re-scoring needs its checkpoint)")
  config = build_config(sweep["config"], {**sweep.get("common", {}), **overrides_of(member)})
  summary = json.loads((source / "summary.json").read_text())
  summary.update(evaluate.best_checkpoint_on_test(source, config, pipeline.load(config)))
  result = _result(member, config, summary, None)
  result["provenance"]["rescored_git_commit"] = provenance.git_commit()  # beside the training's git_commit
  return result


def run_sweep(sweep: dict, workdir: pathlib.Path, results: pathlib.Path, host_index: int = 0,
              host_count: int = 1, only_rows: tuple[str, ...] = (), only_folds: tuple[int, ...] = ()) -> dict:
  """Runs this host's members (of `only_rows`, by row name, and `only_folds`, when given)."""
  workdir.mkdir(parents=True, exist_ok=True)
  results.mkdir(parents=True, exist_ok=True)
  status = {}
  for i, member in enumerate(sweep["members"]):
    name = member_name(member)
    if (i % host_count != host_index or (only_rows and member.get("_row_name") not in only_rows)
        or (only_folds and member.get("split.fold") not in only_folds)):
      continue
    result_file = results / f"{name}.json"
    overrides = {**sweep.get("common", {}), **overrides_of(member)}
    if result_file.exists():
      _, why_not = read_result(result_file, sweep, member)
      status[name] = "finished earlier" if why_not is None else f"failed: {why_not}"
      if why_not:
        logging.error("%s %s", name, status[name])
      continue
    lacking = missing_files(overrides)
    if lacking:
      status[name] = f"skipped: missing {', '.join(lacking)}"
      logging.warning("%s %s", name, status[name])
      continue
    logging.info("sweep member %d/%d: %s", i + 1, len(sweep["members"]), name)
    try:
      if member.get("_from"):
        result = _rescore(sweep, member, workdir)
      else:
        config = build_config(sweep["config"], overrides)
        started = time.perf_counter()
        summary = train.train_and_evaluate(config, workdir / name)
        if summary.get("preempted"):
          status[name] = "preempted"
          break
        if config.write_report:
          report.write(workdir / name)
        result = _result(member, config, summary, time.perf_counter() - started)
      if cli.is_main_process():
        cli.write_whole(result_file, json.dumps(result, indent=1, default=str))
      status[name] = "finished"
    except Exception as e:  # one failing member must not stop the sweep
      status[name] = f"failed: {type(e).__name__}: {e}"
      logging.error("%s failed:\n%s", name, traceback.format_exc())
  (workdir / f"status_host{host_index}.json").write_text(json.dumps(status, indent=2))
  return status


# --------------------------------------------------------------------------- aggregation

def bootstrap_interval(values, rounds: int = _BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
  """95% interval of the mean, resampling patients (scipy.stats.bootstrap, BCa)."""
  values = np.asarray(values, float)
  if len(values) < 2 or np.all(values == values[0]):
    return (float(values[0]), float(values[0])) if len(values) else (float("nan"), float("nan"))
  result = scipy.stats.bootstrap((values,), np.mean, n_resamples=rounds, confidence_level=0.95,
                                 method="BCa", random_state=seed)
  return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _patient_parts(results: list[dict]) -> dict[str, dict[int, list[dict]]]:
  """{patient: {seed: its per-patient rows}}: one row per seed, or under the
  slice protocol one per fold whose test set held some of its slices."""
  parts = {}
  for r in results:
    for p in r["test_per_patient"]:
      parts.setdefault(p["patient"], {}).setdefault(r.get("overrides", {}).get("seed", 0), []).append(p)
  return parts


def _pooled_dice(rows: list[dict]) -> float:
  """One patient's volumetric Dice over all its scored slices: parts of it
  pooled by their pixel counts (each part's overlap is Dice * (P + T) / 2),
  not their Dice averaged (an empty part with one stray pixel scores 0)."""
  if len(rows) == 1:
    return float(rows[0]["dice"])
  overlap = sum(r["dice"] * (r["predicted_pixels"] + r["true_pixels"]) / 2 for r in rows)
  return float(metrics.dice_from_counts(overlap, sum(r["predicted_pixels"] for r in rows),
                                        sum(r["true_pixels"] for r in rows)))


def _patient_means(results: list[dict]) -> dict[str, float]:
  """A row's volumetric Dice per patient, averaged over the row's seeds."""
  return {patient: float(np.mean([_pooled_dice(rows) for rows in seeds.values()]))
          for patient, seeds in _patient_parts(results).items()}


def _patient_hd95(results: list[dict]) -> list[dict]:
  """One HD95 row per patient: the mean over its seeds, undefined if any
  seed's is (a patient counts once however many seeds it has)."""
  rows = []
  for seeds in _patient_parts(results).values():
    values = [p.get("hd95_px", np.nan) for parts in seeds.values() for p in parts]
    rows.append({"hd95_px": float(np.mean(values)) if np.all(np.isfinite(values)) else np.nan})
  return rows


def summarise_group(results: list[dict]) -> dict:
  """A row's figures; Dice per patient averaged over its seeds first (a
  patient's seeds are not independent patients: the interval resamples
  patients)."""
  rows = [p for r in results for p in r["test_per_patient"]]
  dice = np.array(list(_patient_means(results).values()))
  hd = evaluate.hd95_summary(_patient_hd95(results), results[0]["test"].get("hd95_penalty_px", np.nan))
  low, high = bootstrap_interval(dice)
  empty = sum(p["slices"] - p["tumour_slices"] for p in rows)
  return {"runs": len(results), "epochs": sorted({r["epochs"] for r in results}),
          "folds": sorted({r["overrides"].get("split.fold") for r in results}),
          "seeds": sorted({r["overrides"].get("seed", 0) for r in results}),
          "patients": len(dice), "mean": float(dice.mean()), "median": float(np.median(dice)),
          "low": low, "high": high,
          "fold_means": [float(r["test"]["patient_dice"]) for r in results],
          "hd95": hd["hd95_px"], "hd95_undefined": hd["hd95_undefined"], "hd95_penalised": hd["hd95_px_penalised"],
          "fp_rate": float(sum(p.get("false_positive_slices", 0) for p in rows) / max(empty, 1)),
          "missed": evaluate.missed_patients([{"dice": d} for d in dice])}


def paired_difference(results: list[dict], previous: list[dict]) -> dict:
  """Mean per-patient Dice difference to the previous row on the patients both
  have (seeds averaged per patient), with a paired bootstrap 95% interval."""
  a, b = _patient_means(results), _patient_means(previous)
  shared = sorted(set(a) & set(b))
  diff = np.array([a[p] - b[p] for p in shared])
  if not len(diff):
    return {"patients": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
  low, high = bootstrap_interval(diff)
  return {"patients": len(shared), "mean": float(diff.mean()), "low": low, "high": high}


def seed_differences(results: list[dict]) -> list[dict]:
  """The noise floor of a row trained with several seeds: each later seed's
  paired per-patient difference to the first seed, on the same folds."""
  seeds = sorted({r["overrides"].get("seed", 0) for r in results})
  of_seed = {s: [r for r in results if r["overrides"].get("seed", 0) == s] for s in seeds}
  return [{"seed": s, "versus_seed": seeds[0], **paired_difference(of_seed[s], of_seed[seeds[0]])}
          for s in seeds[1:]]


def _group_results(sweep: dict, results: dict[str, dict]) -> list[tuple[str, list[dict]]]:
  if sweep.get("rows"):
    return [(row["label"], [r for r in results.values() if r.get("row") == row["label"]]) for row in sweep["rows"]]
  keys = sweep.get("group_by") or sorted({k for m in sweep["members"] for k in overrides_of(m)}
                                         - {"split.fold", "seed"})
  groups = {}
  for r in results.values():
    groups.setdefault(", ".join(f"{k}={r['overrides'].get(k, '')}" for k in keys), []).append(r)
  return list(groups.items())


def aggregate(sweep: dict, workdir: pathlib.Path, results: pathlib.Path) -> list[dict]:
  """The committed result files of this sweep's members -> results.md / .csv."""
  found = {}
  for member in sweep["members"]:
    path = results / f"{member_name(member)}.json"
    if path.exists():
      result, why_not = read_result(path, sweep, member)
      if why_not:  # a stale file must not fill the sweep's row
        logging.error("left out of the table: %s", why_not)
        continue
      # A row's label as the sweep now has it (a relabelled row kept its results).
      found[member_name(member)] = {**result, "row": member["_row"]} if "_row" in member else result
  if not found:
    return []
  table, previous, by_label = [], None, {}
  named = references(sweep.get("rows", []))
  for label, group in _group_results(sweep, found):
    if not group:
      continue
    entry = {"label": label, **summarise_group(group), "seed_differences": seed_differences(group)}
    reference = named.get(label) or previous
    if sweep.get("rows") and reference in by_label:
      entry["difference"] = {**paired_difference(group, by_label[reference]), "versus": reference}
    table.append(entry)
    by_label[label] = group
    if not named.get(label):
      previous = label
  with open(results / "results.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["member", "row", "fold", "seed", "epochs", "test_patient_dice", "test_hd95_px",
                     "test_empty_fp_rate", "best_val_dice", "wall_seconds"])
    for r in found.values():
      writer.writerow([r["member"], r.get("row"), r["overrides"].get("split.fold"), r["overrides"].get("seed", 0),
                       r["epochs"], r["test"]["patient_dice"], r["test"].get("hd95_px"),
                       r["test"]["empty_false_positive_rate"], r["best_val_dice"], r["wall_seconds"]])
  lines = [f"# {sweep.get('title', sweep['name'])}", "",
           "Per-patient volumetric Dice of each run's best checkpoint on its held-out test patients, scored at "
           "256x256 with slices in order, pooled over the runs of a row (patients of different folds; a "
           "patient's Dice averaged over the row's seeds). 95% intervals: BCa bootstrap over patients "
           "(scipy.stats.bootstrap, "
           f"{_BOOTSTRAP_ROUNDS} resamples). HD95: 3-D, pixels, mean over patients where it is defined (both "
           "masks non-empty, or both empty: 0; a patient's seeds averaged; patients with an undefined one "
           "counted; 'penalised' charges them the image diagonal). FP: tumour-free "
           "slices with any predicted pixel. Missed: patients whose (seed-averaged) Dice is below 0.1."
           + (" Difference: paired per-patient Dice difference (seeds averaged per patient) on the patients "
              "both rows scored, to the row named in 'compared with': the chain row before (the last one with "
              "results), or for a side row the row it changes one setting of." if sweep.get("rows") else ""),
           "",
           "| row | runs (folds x seeds) | epochs | patients | Dice mean [95% CI] | median | "
           + ("difference [95% CI] | compared with | " if sweep.get("rows") else "")
           + "HD95 px (undefined; penalised) | FP | missed |",
           "|---|---|---|---|---|---|" + ("---|---|" if sweep.get("rows") else "") + "---|---|---|"]
  for t in table:
    diff = t.get("difference")
    diff_cell = (f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] (n={diff['patients']}) | "
                 f"{diff['versus']} | " if diff else ("- | - | " if sweep.get("rows") else ""))
    lines.append(f"| {t['label']} | {t['runs']} ({len(t['folds'])} x {len(t['seeds'])}) | "
                 f"{'/'.join(map(str, t['epochs']))} | {t['patients']} | {t['mean']:.4f} [{t['low']:.4f}, "
                 f"{t['high']:.4f}] | {t['median']:.4f} | {diff_cell}{t['hd95']:.1f} ({t['hd95_undefined']}; "
                 f"{t['hd95_penalised']:.1f}) | {t['fp_rate']:.1%} | {t['missed']} |")
  noise = [(t["label"], d) for t in table for d in t["seed_differences"]]
  if noise:
    lines += ["", "Noise floor: the same row, folds and split trained with another seed (paired per-patient "
              "difference [95% CI]). The intervals resample patients, not training runs, so a seed alone can "
              "give one that excludes 0: a difference between rows no larger than this is not evidence."]
    lines += [f"- {label}: seed {d['seed']} - seed {d['versus_seed']}: {d['mean']:+.4f} [{d['low']:+.4f}, "
              f"{d['high']:+.4f}] (n={d['patients']})" for label, d in noise]
  runs = collections.Counter()
  for r in found.values():
    prov = r.get("provenance") or {}
    devices = prov.get("devices") or {}
    commit = prov.get("git_commit")
    if prov.get("rescored_git_commit"):
      commit = f"{commit} (re-scored at {prov['rescored_git_commit']})"
    runs[(r.get("row") or r["member"], commit, f"{devices.get('count', '?')} "
          f"{devices.get('kind', '?')}", r.get("finished"))] += 1
  lines += ["", "Runs: row, git commit, devices, date finished (runs)."]
  lines += [f"- {row}: {commit}, {devices}, {date} ({n})" for (row, commit, devices, date), n in runs.items()]
  (results / "results.md").write_text("\n".join(lines) + "\n")
  plt = figures.plt()
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(table)), 4))
  means = [t["mean"] for t in table]
  errors = np.array([[t["mean"] - t["low"], t["high"] - t["mean"]] for t in table]).T
  ax.bar(range(len(table)), means, yerr=np.nan_to_num(errors), capsize=4, color="tab:blue")
  ax.set_xticks(range(len(table)), [t["label"] for t in table], fontsize=7, rotation=20, ha="right")
  ax.set_ylabel("test per-patient Dice")
  ax.set_ylim(0, 1)
  ax.set_title(sweep.get("title", sweep["name"]))
  fig.tight_layout()
  workdir.mkdir(parents=True, exist_ok=True)
  fig.savefig(workdir / "results.png", dpi=100)
  plt.close(fig)
  return table


_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/model_comparison.py.")
RESULTS = flags.DEFINE_string("results", "", "Where result files go; default experiments/results/<sweep> "
                              "(with --tiny: <workdir>/results).")
_TINY = flags.DEFINE_bool("tiny", False, "The sweep's CI-sized variant on synthetic data.")
_HOST_INDEX = flags.DEFINE_integer("host_index", 0, "This host's index among host_count.")
_HOST_COUNT = flags.DEFINE_integer("host_count", 1, "Hosts sharing the sweep.")
_ROWS = flags.DEFINE_list("rows", [], "Run only these rows (by name, e.g. r9-recipe); default all.")
FOLDS = flags.DEFINE_list("folds", [], "Run only these folds (e.g. 0,1: the folds trained so far); default all.")
command_flags.take("workdir")  # where members run; default runs/sweeps/<sweep name>


def main(argv):
  del argv
  if not _SWEEP.value:
    raise ValueError("give --sweep=experiments/<name>.py")
  sweep = load_sweep(_SWEEP.value, _TINY.value)
  row_names = {m.get("_row_name") for m in sweep["members"]} - {None}
  unknown = sorted(set(_ROWS.value) - row_names)
  if unknown:
    raise ValueError(f"--rows: {', '.join(unknown)} not rows of {_SWEEP.value} (its rows: "
                     f"{', '.join(sorted(row_names)) or 'none: it has members, not rows'})")
  workdir = pathlib.Path(command_flags.one(command_flags.WORKDIR, "folder")
                         or REPO / "runs" / "sweeps" / sweep["name"])
  results = pathlib.Path(RESULTS.value) if RESULTS.value else results_dir(sweep, _TINY.value, workdir)
  status = run_sweep(sweep, workdir, results, _HOST_INDEX.value, _HOST_COUNT.value, tuple(_ROWS.value),
                     tuple(int(f) for f in FOLDS.value))
  for name, s in status.items():
    print(f"{name}: {s}")
  if aggregate(sweep, workdir, results):
    print((results / "results.md").read_text())
  failed = [name for name, s in status.items() if s.startswith("failed")]
  if failed:
    print(f"error: {len(failed)} sweep member(s) failed (tracebacks in the log above): {', '.join(failed)}",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  cli.run(main)
