"""Ship the recipe's 5-fold ensemble as package data (lgg_jax/pretrained/recipe_cpu/).

Command (from the repository root, after experiments/ensemble.py's e0 runs
have trained and its re-scoring rows are scored; see its docstring):
  python -m benchmarks.ship_pretrained --row=e2-tta-flips --commit=HASH
Each fold's best checkpoint (runs/sweeps/ensemble/e0-recipe-fold{K}-seed0) is
exported (lgg_jax.export, no forward.jax: it would double the size) with the
inference settings of the result row named by `--row`, read from its
committed result files (experiments/results/ensemble/), so the shipped masks
are the ones those files scored. The ensemble's model card gives that row's
cross-validated figures; shipped.json names the row and each member's result
file (the tests re-score one patient per fold against it); SHA256SUMS comes
last and covers every file. It stops, shipping nothing, if a fold's run is
not the one its training row's result file was scored from
(`--training_row`), if the row's folds were scored with different settings,
or if the model outgrows the 30 MB budget. `--folds` ships the folds
trained so far (the card says how many of the five).

The review flag of the quality estimate, measured after shipping, is added to
a shipped model in place (no runs needed: it starts from the shipped folder):
  python -m benchmarks.ship_pretrained --add_quality_rule=RULE.json
writes quality.json (the rule benchmarks/quality_estimate.py wrote), the
card's "Which masks to doubt" section, and SHA256SUMS again.

What needs no training run is rewritten in place from the shipped foldK/
exports and the committed result files (the runs are not in git):
  python -m benchmarks.ship_pretrained --refresh [--row=ROW]
rewrites the card (its description of the members read from their configs),
shipped.json (with the cross-validated figures, for scripts) and SHA256SUMS;
with --row, a row that re-scored the same training runs with other settings
(a component rule, say), those settings go into each member's inference.json
and card. Each member must be its fold's best checkpoint of the training row.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import typing

import numpy as np
from absl import flags

from experiments import run
from lgg_jax import cli, command_flags, evaluate, export, inference, loading, metrics, pretrained, quality, state

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDS = (0, 1, 2, 3, 4)
BUDGET_BYTES = 30 * 10**6  # every shipped file of the model together
REPRODUCE_TOLERANCE = 1e-4
SHIPPED_FILE = "shipped.json"


@dataclasses.dataclass(frozen=True)
class Source:
  """Where the shipped members and their figures come from: the runs of
  `training_row` (one per fold, in `runs`), scored as `row` in `results`."""
  runs: pathlib.Path | None  # None: shipped exports only (refresh)
  results: pathlib.Path
  row: str
  training_row: str = "e0-recipe"
  folds: tuple[int, ...] = FOLDS

  @classmethod
  def from_shipped(cls, folder: pathlib.Path, results: pathlib.Path, row: str = "") -> Source:
    """The source a shipped model's shipped.json names (its members' folds and rows), without runs."""
    shipped = json.loads((folder / SHIPPED_FILE).read_text())
    return cls(runs=None, results=results, row=row or shipped["row"], training_row=shipped["training_row"],
               folds=tuple(sorted(int(name.removeprefix("fold")) for name in shipped["members"])))

  def result(self, row: str, fold: int) -> dict:
    return json.loads((self.results / self.result_name(row, fold)).read_text())

  @staticmethod
  def result_name(row: str, fold: int) -> str:
    return f"{row}-fold{fold}-seed0.json"

  def run_dir(self, fold: int) -> pathlib.Path:
    return self.runs / f"{self.training_row}-fold{fold}-seed0"


def check_reproduces(source: Source, fold: int) -> float:
  """The largest per-patient Dice difference between a run's own test scores
  (plain inference, as its training row was scored) and that row's committed file."""
  run_dir = source.run_dir(fold)
  summary = json.loads((run_dir / "summary.json").read_text())
  committed = {r["patient"]: r["dice"] for r in source.result(source.training_row, fold)["test_per_patient"]}
  ours = summary["test_per_patient_dice"]
  if set(ours) != set(committed):
    raise ValueError(f"{run_dir}: test patients differ from the committed {source.training_row} fold {fold}")
  return max(abs(ours[p] - committed[p]) for p in committed)


def row_settings(source: Source) -> dict:
  """The inference settings every fold of the row was scored with (one set, or an error)."""
  found = {}
  for fold in source.folds:
    found[fold] = inference.Settings.from_dict(source.result(source.row, fold)["inference"],
                                               inference.Settings()).as_dict()
  first = found[source.folds[0]]
  if any(found[fold] != first for fold in source.folds):
    raise ValueError(f"{source.results}/{source.row}-fold*: the folds were scored with different settings: {found}")
  return first


def _figures(source: Source) -> dict:
  """The row's figures as the sweep's tables give them (experiments.run.summarise_group), and its rows."""
  results = [source.result(source.row, fold) for fold in source.folds]
  return {**run.summarise_group(results), "rows": [r for result in results for r in result["test_per_patient"]]}


def _describe(settings: dict) -> str:
  views = {"none": "without test-time augmentation", "flips": "after 3-view flip test-time augmentation "
           "(identity, left-right, up-down)", "dihedral": "after 8-way dihedral test-time augmentation"}
  words = f"Masks: mean probability >= {settings['threshold']:g} {views[settings['tta']]}"
  if settings["largest_component"]:
    words += ", then each patient's largest 3-D connected component"
    if settings["component_fraction"]:
      words += f" and every component of at least {settings['component_fraction']:g} of its size"
    rank = settings.get("component_rank", "volume")
    if rank != "volume":
      words += f", components ranked by {rank.replace('_', ' ')} rather than by volume"
  return words


def _small_tumour_line(rows: list[dict]) -> str:
  limit = metrics.SMALL_TUMOUR_PIXELS
  small = [r["dice"] for r in rows if evaluate.is_small_tumour(r)]
  large = [r["dice"] for r in rows if r["true_pixels"] >= limit]
  if not small or not large:
    return f"- Small tumours: {len(small)} held-out patients have fewer than {limit:,} tumour pixels."
  return (f"- Small tumours: the {len(small)} held-out patients with fewer than {limit:,} tumour "
          f"pixels score mean Dice {np.mean(small):.3f}, the {len(large)} others {np.mean(large):.3f}.")


def _missed_line(rows: list[dict]) -> str:
  missed = [r for r in rows if r["dice"] < evaluate.MISSED_DICE]  # as evaluate.missed_patients counts them
  if not missed:
    return "- No held-out patient was missed (Dice < 0.1)."
  return ("- Missed tumours (Dice < 0.1): " + "; ".join(
      f"{r['patient']} ({r['predicted_pixels']} pixels predicted, "
      f"{r['false_positive_slices']} false-positive slice{'s' * (r['false_positive_slices'] != 1)})" for r in missed)
      + ". A mask in the wrong place is worse than none: look at each mask on the review page "
         "(`python -m lgg_jax.review OUT` after `predict`).")


def _multifocal_line(rows: list[dict], settings: dict) -> str:
  """What the held-out patients with more than one tumour component in their truth scored."""
  several = [r for r in rows if r.get("true_components", 1) > 1]
  single = [r for r in rows if r.get("true_components", 1) <= 1 and r["tumour_slices"]]
  step = ("the largest-component step keeps " + ("only the largest part" if not settings["component_fraction"]
          else f"parts of at least {settings['component_fraction']:g} of the largest") if settings["largest_component"]
          else "no component step is applied")
  figures = (f"{len(several)} of the {len(rows)} held-out patients have more than one component in their "
             f"truth mask (mean Dice {np.mean([r['dice'] for r in several]):.3f}, against "
             f"{np.mean([r['dice'] for r in single]):.3f} for the single-component ones)" if several and single
             else "no held-out patient has more than one component in its truth mask")
  return (f"- Multi-focal tumours: {figures}; {step}. Where the largest blob is a false positive, the step "
          "deletes the whole tumour: check masks, or pass `largest_component=False` (the component "
          "settings are measured in experiments/results/ensemble/).")


def _dev_patients(source: Source) -> list[str]:
  """Every patient the members saw or were tested on: a run's split.json names all of them; without
  the runs (not in git), the five folds' test patients of the training row are all of them."""
  split_file = source.run_dir(source.folds[0]) / "split.json" if source.runs is not None else None
  if split_file is not None and split_file.is_file():
    split = json.loads(split_file.read_text())
    return sorted(split["train"] + split["val"] + split["test"])
  missing = [source.result_name(source.training_row, k) for k in FOLDS
             if not (source.results / source.result_name(source.training_row, k)).is_file()]
  if missing:
    raise ValueError(f"{source.results}: without the runs, the dev patients are the test patients of all five "
                     f"folds of {source.training_row}; missing {', '.join(missing)}")
  return sorted(r["patient"] for fold in FOLDS for r in source.result(source.training_row, fold)["test_per_patient"])


def _exported_config(folder: pathlib.Path):
  return state.config_from_dict(json.loads((folder / loading.CONFIG_FILE).read_text()),
                                str(folder / loading.CONFIG_FILE))


class _Training(typing.NamedTuple):
  """What the card says about how a member was trained; members must agree on all of it."""
  model: tuple[str, ...]  # export.model_lines
  epochs: int
  seed: int
  config_file: str
  devices: str  # e.g. "1 JAX CPU device"


def members_description(source: Source, folders: list[pathlib.Path]) -> tuple[str, list[str]]:
  """(how the members were trained, the model lines) from the exported configs and the training row's
  files, so that the card cannot drift from what ships; members that differ are an error naming them."""
  trained = [source.result(source.training_row, fold) for fold in source.folds]
  facts = {}
  for folder, result in zip(folders, trained):
    config = _exported_config(folder)
    devices = result.get("provenance", {}).get("devices")
    facts[folder.name] = _Training(
        tuple(export.model_lines(config)), config.num_epochs, config.seed,
        result.get("overrides", {}).get("config", "(config file not recorded)"),
        f"{devices['count']} JAX {devices['kind'].upper()} device{'s' * (devices['count'] != 1)}" if devices
        else "devices not recorded")
  if len(set(facts.values())) > 1:
    raise ValueError(f"{folders[0].parent}: the members were not trained alike: " + "; ".join(
        f"{name}: {t.model[0][2:]}, {t.epochs} epochs, seed {t.seed}, {t.config_file}, {t.devices}"
        for name, t in facts.items()))
  first = next(iter(facts.values()))
  # Result files of one recipe may come from commits that differ in docs and result files only.
  commits = sorted({r.get("provenance", {}).get("git_commit", "?")[:7] for r in trained})
  sweep = f"experiments/{source.results.name}.py"  # the convention: results/<sweep>/ holds <sweep>.py's files
  return (f"with `{first.config_file}` (`python -m experiments.run --sweep={sweep}`, row {source.training_row}: "
          f"{first.epochs} epochs, seed {first.seed}, {first.devices}, git commit{'s' * (len(commits) > 1)} "
          f"{', '.join(commits)})", list(first.model))


def model_card(source: Source, settings: dict, commit: str, folders: list[pathlib.Path]) -> str:
  f = _figures(source)
  trained_with, lines = members_description(source, folders)
  dev = _dev_patients(source)
  worst = sorted(f["rows"], key=lambda r: r["dice"])[:5]
  folds = ", ".join(f"{k}: {source.result(source.row, k)['test']['patient_dice']:.3f}" for k in source.folds)
  missing = [str(k) for k in FOLDS if k not in source.folds]
  members = f"{len(source.folds)} of the 5" if missing else "five"
  shipped = members if missing else "all five"
  training = f"Fold {missing[0]} is" if len(missing) == 1 else f"Folds {', '.join(missing)} are"
  partial = "" if not missing else (
      f" **{training} still training:** this "
      f"is the ensemble of the fold models finished so far (folds {', '.join(str(k) for k in source.folds)}), "
      f"and its figures cover their {len(f['rows'])} held-out patients only.")
  return "\n".join([
      f"# lgg_jax pretrained model: recipe_cpu ({members} fold models of a 5-fold split)", "",
      "**Research use only. Not a medical device:** not validated for clinical use; it must not guide "
      "diagnosis or treatment.", "",
      "```python", "from lgg_jax import Segmenter", 'seg = Segmenter.load("pretrained:recipe_cpu")',
      "masks = seg.predict(volume, masks=True)   # volume: uint8 (S, 256, 256, 3) in slice order; masks: bool (S, 256, 256)", "```",
      "or `python -m lgg_jax.predict --model=pretrained --input=scans/ --out=masks/`.", "",
      "## What it is", "",
      f"One model per patient fold of the {len(dev)} development patients, each trained on the other "
      f"folds {trained_with}; {shipped} are shipped.{partial} The ensemble averages their probabilities "
      f"at 256x256. Shipped at commit {commit or '(not given)'}; each `foldK/` is an `lgg_jax.export` "
      "folder with its own model card (its split and test figures); `SHA256SUMS` is checked at load.", "",
      *lines, "",
      _describe(settings) + " (`inference.json`; override with `Segmenter.predict(..., "
      "largest_component=False)` etc.).", "",
      "## Expected input", "",
      "- A patient's axial slices in slice order, 256x256, uint8, three channels: pre-contrast T1, "
      "FLAIR, post-contrast T1 (the LGG Segmentation Dataset's `kaggle_3m/` form). The component step "
      "and the 2.5-D input need the slices in order.",
      "- A missing sequence: put FLAIR in its channel, as the dataset does for 15 of its 110 patients "
      "(`predict` does this for NIfTI input with a FLAIR volume only, and warns); training simulated it "
      "for a quarter of the samples.",
      "- NIfTI volumes (pre/flair/post, or BraTS names) through `python -m lgg_jax.predict`.", "",
      "## Cross-validated figures (development patients)", "",
      f"Each of the {len(f['rows'])} held-out patients of the shipped folds scored by the one fold model "
      "that held it out (not by this ensemble, which has seen every one of them), per-patient "
      "volumetric Dice at 256x256 with slices in order, with these masks "
      f"(`{_relative(source.results)}/{source.row}-*`). The recipe was tuned on these folds, "
      "so they are development figures; scores of the ensemble on patients outside the project come "
      "from an independent evaluation.", "",
      "| metric | value |", "|---|---|",
      f"| mean per-patient Dice [95% BCa CI] | {f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}] |",
      f"| median per-patient Dice | {f['median']:.3f} |",
      f"| per fold | {folds} |",
      f"| 3-D HD95 (px, mean over defined) | {f['hd95']:.1f} ({f['hd95_undefined']} undefined) |",
      f"| tumour-free slices with a false positive | {f['fp_rate']:.1%} |",
      f"| missed patients (Dice < 0.1) | {f['missed']} of {len(f['rows'])} |", "",
      "## Known failure modes (seen in the cross-validation)", "",
      "- The lowest-scoring patients: " + "; ".join(
          f"{r['patient']} Dice {r['dice']:.2f} ({r['true_pixels']} true pixels in {r['true_components']} "
          f"component{'s' * (r['true_components'] != 1)}, {r['predicted_pixels']} predicted)" for r in worst) + ".",
      _small_tumour_line(f["rows"]),
      _missed_line(f["rows"]),
      _multifocal_line(f["rows"], settings),
      "- Other scanners, protocols, tumour types or preprocessing than TCGA-LGG's were never seen.", "",
      "## Training data, terms and citation", "",
      f"{len(dev)} of the 110 patients of the LGG Segmentation Dataset (FLAIR abnormality masks by Buda et al.) "
      "from The Cancer Imaging Archive's TCGA-LGG collection; TCIA's data usage terms apply (cite the "
      "collection and the papers below). Patients: " + ", ".join(dev) + ".", "",
      "- M. Buda, A. Saha, M. A. Mazurowski. Association of genomic subtypes of lower-grade gliomas "
      "with shape features automatically extracted by a deep learning algorithm. Computers in Biology "
      "and Medicine 109 (2019) 218-225.",
      "- M. A. Mazurowski, K. Clark, N. M. Czarnek, P. Shamsesfandabadi, K. B. Peters, A. Saha. "
      "Radiogenomics of lower-grade glioma: algorithmically-assessed tumor shape is associated with "
      "tumor genomic subtypes and patient outcomes in a multi-institutional study with The Cancer "
      "Genome Atlas data. Journal of Neuro-Oncology 133 (2017) 27-35.",
      "- The Cancer Imaging Archive, TCGA-LGG collection (Pedano et al. 2016); Clark et al., J Digit "
      "Imaging 26 (2013) 1045-1057.", ""])


def _relative(path: pathlib.Path) -> str:
  path = pathlib.Path(path).resolve()
  return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def cross_validated(source: Source) -> dict:
  """shipped.json's figures, for scripts: each held-out patient scored by the fold model that held it out."""
  f = _figures(source)
  small = [r["dice"] for r in f["rows"] if evaluate.is_small_tumour(r)]
  return {"patients": len(f["rows"]), "mean_dice": f["mean"], "median_dice": f["median"],
          "ci95_bca": [f["low"], f["high"]], "hd95_px": f["hd95"], "hd95_undefined": f["hd95_undefined"],
          "false_positive_slice_share": f["fp_rate"], "missed": f["missed"],
          "small_tumours": {"pixels_below": metrics.SMALL_TUMOUR_PIXELS, "patients": len(small),
                            "mean_dice": float(np.mean(small)) if small else None},
          "result_files": f"{_relative(source.results)}/{source.row}-fold*-seed0.json"}


def _write_ensemble_files(source: Source, settings: dict, commit: str, folder: pathlib.Path) -> None:
  """The card (with the review section of a quality.json in `folder`) and shipped.json, from `folder`'s members."""
  card = model_card(source, settings, commit, [folder / f"fold{fold}" for fold in source.folds])
  rule = quality.Rule.load(folder)
  (folder / "model_card.md").write_text(card + ("\n" + quality_section(rule) if rule is not None else ""))
  (folder / SHIPPED_FILE).write_text(json.dumps(
      {"row": source.row, "training_row": source.training_row, "settings": settings, "commit": commit,
       "members": {f"fold{fold}": f"{_relative(source.results)}/{source.result_name(source.row, fold)}"
                   for fold in source.folds},
       "cross_validated": cross_validated(source)}, indent=1))


def ship(source: Source, out: pathlib.Path, commit: str) -> list[str]:
  settings = row_settings(source)
  lines = [f"settings of {source.row}: {settings}"]
  for fold in source.folds:
    check_row_scored_training_run(source, fold)
    difference = check_reproduces(source, fold)
    lines.append(f"fold {fold}: {source.run_dir(fold)} reproduces {source.training_row} to {difference:.2e}")
    if difference > REPRODUCE_TOLERANCE:
      raise ValueError(lines[-1] + f": more than {REPRODUCE_TOLERANCE}")
  with export.written_whole(out, replace=True) as partial:
    for fold in source.folds:
      export.export_run(source.run_dir(fold), partial / f"fold{fold}", forward=False, **settings)
    _write_ensemble_files(source, settings, commit, partial)
    pretrained.write_checksums(partial)
    size = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
    if size > BUDGET_BYTES:
      raise ValueError(f"{out}: {size / 1e6:.1f} MB, over the {BUDGET_BYTES / 1e6:.0f} MB budget")
  lines.append(f"shipped {out}: {size / 1e6:.2f} MB")
  return lines


def _check_is_training_run(source: Source, member: pathlib.Path, fold: int) -> None:
  """Without the runs, what ties a shipped member to the figures: it is its fold's best checkpoint of the
  training row, and the row re-scored that run."""
  trained = source.result(source.training_row, fold)
  saved = json.loads((member / loading.INFERENCE_FILE).read_text())
  config = _exported_config(member)
  run_name = f"{source.training_row}-fold{fold}-seed0"
  if "best_step" not in trained:
    raise ValueError(f"{source.results / source.result_name(source.training_row, fold)}: no best_step, so "
                     f"{member} cannot be checked against it")
  if config.split.fold != fold or saved.get("step") != trained["best_step"]:
    raise ValueError(f"{member}: not the best checkpoint of {run_name} (the member: fold {config.split.fold}, "
                     f"step {saved.get('step')}; the training row's file: fold {fold}, step {trained['best_step']})")
  check_row_scored_training_run(source, fold)


def check_row_scored_training_run(source: Source, fold: int) -> None:
  """The row whose figures ship re-scored the training row's run of this fold
  (the same run name and best checkpoint), or is the training row."""
  if source.row == source.training_row:
    return
  run_name = f"{source.training_row}-fold{fold}-seed0"
  row_file = source.results / source.result_name(source.row, fold)
  scored = source.result(source.row, fold)
  trained = source.result(source.training_row, fold)
  if scored.get("evaluated_from") != run_name or scored.get("best_step") != trained.get("best_step"):
    raise ValueError(f"{row_file}: scored {scored.get('evaluated_from') or 'a training of its own'} at step "
                     f"{scored.get('best_step')}, not the shipped {run_name} at step {trained.get('best_step')}: "
                     "its figures are another model's")


def _set_member_settings(member: pathlib.Path, settings: inference.Settings, chosen_on: str) -> None:
  """The member's inference.json and the masks line of its card; the card's test figures stay the
  training run's own, as they were scored."""
  saved = json.loads((member / loading.INFERENCE_FILE).read_text())
  (member / loading.INFERENCE_FILE).write_text(json.dumps({**saved, **settings.as_dict()}, indent=2))
  card = (member / "model_card.md").read_text().splitlines()
  lines = [i for i, line in enumerate(card) if line.startswith("- masks (inference.json")]
  if len(lines) != 1:
    raise ValueError(f"{member / 'model_card.md'}: want one '- masks (inference.json' line, found {len(lines)}")
  card[lines[0]] = export.masks_line(settings, chosen_on)
  (member / "model_card.md").write_text("\n".join(card) + "\n")


def _member_settings(member: pathlib.Path) -> inference.Settings:
  return inference.Settings.from_dict(json.loads((member / loading.INFERENCE_FILE).read_text()),
                                      inference.Settings())


def refresh(out: pathlib.Path, results: pathlib.Path, row: str = "", commit: str = "") -> list[str]:
  """Rewrites a shipped model's card, shipped.json and SHA256SUMS in place from its foldK/ exports and
  the committed result files: what needs no training run (the runs are not in git). With `row`, another
  row scored from the same training runs (a component rule, say), that row's settings go into each
  member's inference.json and card, and its figures into the card and shipped.json; the masks change, so
  `commit` is then required, and quality.json's threshold is marked as fixed on the old masks."""
  pretrained.verify(out)
  shipped = json.loads((out / SHIPPED_FILE).read_text())
  old_row = shipped["row"]
  source = Source.from_shipped(out, results, row)
  settings = row_settings(source)
  for fold in source.folds:
    _check_is_training_run(source, out / f"fold{fold}", fold)
  new = inference.Settings(**settings)
  stale = [f"fold{fold}" for fold in source.folds if _member_settings(out / f"fold{fold}") != new]
  if stale and not commit:
    raise ValueError(f"--commit is needed: {', '.join(stale)} change their masks to {source.row}'s settings")
  rule = quality.Rule.load(out)
  chosen_on = source.result(source.row, source.folds[0])["inference"].get("threshold_chosen_on", "config")
  with export.written_whole(out, replace=True) as partial:
    shutil.copytree(out, partial, dirs_exist_ok=True)
    for member in stale:
      _set_member_settings(partial / member, new, chosen_on)
    if stale and rule is not None:
      dataclasses.replace(rule, source=f"{rule.source}; fixed on the masks of {old_row}, not measured again "
                                       f"with {source.row}'s settings").save(partial)
    _write_ensemble_files(source, settings, commit or shipped["commit"], partial)
    pretrained.write_checksums(partial)
  lines = [f"{out}: {'settings of ' + source.row + ' written into ' + ', '.join(stale) + ', ' if stale else ''}"
           f"model card, shipped.json ({source.row}, {len(source.folds)} members) and SHA256SUMS rewritten"]
  if stale and rule is not None:
    lines.append(f"{out / quality.QUALITY_FILE}: its review threshold was fixed on the masks of {old_row}; "
                 "measure it again on these settings (benchmarks/quality_estimate.py --ensemble) and write it "
                 "with --add_quality_rule")
  return lines


QUALITY_HEADING = "## Which masks to doubt"
SIGNAL_WORDS = {"member_agreement": "the members' agreement: the mean Dice of each member's mask against the "
                                    "ensemble's",
                "view_and_threshold": "the smaller of two agreements: the mask against the mirrored volume's, "
                                      "and the masks at thresholds 0.3 and 0.7"}


def quality_section(rule: quality.Rule) -> str:
  return "\n".join([
      QUALITY_HEADING, "",
      "Every mask gets a quality estimate in [0, 1] (`lgg_jax.quality`; `Segmenter.assess`, "
      "`predictions.json`, the end of `predict`'s output, evaluate's `per_patient.csv`). For this model "
      f"it is {SIGNAL_WORDS.get(rule.signal, rule.signal.replace('_', ' '))}. A mask "
      f"is flagged for review when it is below `review_threshold` = {rule.review_threshold:.4f} "
      f"(quality.json), or when no tumour is found (a mask under {quality.MIN_VOXELS} voxels).",
      "",
      f"How the threshold was fixed: {rule.source}, by a rule stated before it was computed. The members' "
      "agreement cannot be cross-validated on the dev patients (each trained four of the five members), so "
      "their agreement there is optimistic and this threshold flags more patients outside the project; the "
      "independent evaluation measures it. The single-model estimate it is matched to is cross-validated: "
      "benchmarks/QUALITY.md, \"Which masks to doubt\".", ""])


def add_quality_rule(out: pathlib.Path, rule_file: pathlib.Path) -> list[str]:
  """quality.json, the card's section and SHA256SUMS of a shipped model, in place."""
  rule = quality.Rule.load(rule_file.parent) if rule_file.name == quality.QUALITY_FILE else None
  if rule is None:
    saved = json.loads(rule_file.read_text())
    rule = quality.Rule(saved["signal"], float(saved["review_threshold"]), saved.get("source", ""))
  pretrained.verify(out)
  rule.save(out)
  card = (out / "model_card.md").read_text()
  if QUALITY_HEADING in card:
    card = card[:card.index(QUALITY_HEADING)].rstrip("\n") + "\n"
  (out / "model_card.md").write_text(card.rstrip("\n") + "\n\n" + quality_section(rule))
  pretrained.write_checksums(out)
  return [f"{out}: quality.json ({rule.signal} < {rule.review_threshold:.4f}), model card and SHA256SUMS written"]


_RUNS = flags.DEFINE_string("runs", "runs/sweeps/ensemble", "Folder holding <training_row>-fold{K}-seed0.")
_TRAINING_ROW = flags.DEFINE_string("training_row", "e0-recipe", "The row that trained the runs (its files "
                                    "hold each run's own test scores).")
_ROW = flags.DEFINE_string("row", "e1-recipe-settings", "The result row whose settings are shipped and "
                           "whose figures the card gives (e1: dihedral TTA + largest component; e2-e3 "
                           "TTA; e4-e6 component fractions).")
_COMMIT = flags.DEFINE_string("commit", "", "The commit the model is shipped at (for the card).")
_REFRESH = flags.DEFINE_bool("refresh", False, "Rewrite the shipped model in --out in place from its foldK/ "
                             "exports and the committed result files (no runs): its card, shipped.json, "
                             "SHA256SUMS; with --row, that row's settings (same training runs) as well.")
_ADD_QUALITY_RULE = flags.DEFINE_string("add_quality_rule", "", "Only add this quality rule (a quality.json) "
                                        "to the shipped model in --out, in place.")
# Shared with the sweep runner and the commands: --results (the sweep's
# committed result files), --folds (the folds shipped), --out (the model folder).
command_flags.take("out")
flags.declare_key_flag("results")
flags.declare_key_flag("folds")
DEFAULT_RESULTS = REPO / "experiments" / "results" / "ensemble"
DEFAULT_OUT = REPO / "lgg_jax" / "pretrained" / "recipe_cpu"


def main(argv):
  del argv
  out = pathlib.Path(command_flags.OUT.value or DEFAULT_OUT)
  if _ADD_QUALITY_RULE.value:
    for line in add_quality_rule(out, pathlib.Path(_ADD_QUALITY_RULE.value)):
      print(line)
    return
  results = pathlib.Path(run.RESULTS.value or DEFAULT_RESULTS)
  if _REFRESH.value:
    row = _ROW.value if flags.FLAGS["row"].present else ""
    for line in refresh(out, results, row, _COMMIT.value):
      print(line)
    return
  source = Source(runs=pathlib.Path(_RUNS.value), results=results,
                  row=_ROW.value, training_row=_TRAINING_ROW.value,
                  folds=tuple(int(k) for k in run.FOLDS.value or FOLDS))
  for line in ship(source, out, _COMMIT.value):
    print(line)


if __name__ == "__main__":
  cli.run(main)
