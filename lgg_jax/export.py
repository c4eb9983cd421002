"""Export a trained run as a model that needs neither the training state nor,
for its forward pass, this codebase.

python -m lgg_jax.export --workdir=RUN [--checkpoint=best] --out=DIR [--onnx]
python -m lgg_jax.export --model=pretrained --onnx --out=DIR   # one DIR/<member>.onnx per shipped member

DIR gets
  config.json          the run's config (what `Segmenter.load(DIR)` rebuilds the model from)
  weights.safetensors  parameters and BatchNorm statistics only ("params/...", "model_state/...")
  inference.json       how probabilities become masks, as the run was scored (threshold, TTA,
                       component step; `--tta` etc. override them), and the checkpoint step
  quality.json         the quality estimate's signal and `review_threshold` (lgg_jax.quality)
  forward.jax          a serialized `jax.export` (StableHLO) of the forward pass, for the cpu
                       and cuda platforms, batch size symbolic, weights inside, plain XLA
                       convolutions: float32 model inputs (b, size, size, channels), prepared
                       as `lgg_jax.data.preprocess.model_inputs` does -> probabilities (b, 256, 256)
  model_card.md        data, split, metrics and their protocol, threshold, provenance,
                       intended use and limits

Running the forward pass needs only jax and numpy:
    import jax, numpy as np
    forward = jax.export.deserialize(open("DIR/forward.jax", "rb").read())
    probabilities = forward.call(inputs)   # inputs: float32 (b, size, size, channels)
The folder is written under a temporary name and renamed when complete,
with ordinary file modes. It is made to be shared, so it names no path of
the machine that trained it: config.json keeps the dataset's folder name
only, and settings that point at local files (cache, split file, encoder
weights) are reset to their defaults.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
from absl import flags
from safetensors.numpy import save_file

from lgg_jax import cli, command_flags, inference, loading, models, onnx_export, quality, state
from lgg_jax.data import preprocess

FORWARD_FILE = "forward.jax"
# What an export's quality.json says: the single-model rule measured on the recipe's fold models.
EXPORT_QUALITY_RULE = quality.Rule(quality.DEFAULT_SINGLE.signal, quality.DEFAULT_SINGLE.review_threshold,
                                   "the single-model default (" + quality.DEFAULT_SINGLE.source + "), not "
                                   "measured on this model")
PLATFORMS = ("cpu", "cuda")


def export_forward(member: inference.Member) -> jax.export.Exported:
  """The forward pass with the weights inside, lowered with the plain XLA conv forms."""
  config = member.config.copy_and_resolve_references()
  config.model.conv_impl = "xla"
  graphdef, _ = state.abstract_variables(config)
  probabilities = inference.make_probability_step(graphdef, "none", preprocess.SOURCE_SIZE)
  variables = jax.device_get(member.variables)
  size, channels = config.data.image_size, state.in_channels(config)
  batch, = jax.export.symbolic_shape("b")
  return jax.export.export(jax.jit(lambda images: probabilities(variables, images)), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32))


# Settings that name files on the training machine, and what an export keeps of them.
_LOCAL_PATHS = {"data.manual_dir": lambda v: pathlib.Path(v).name if v else "",
                "data.data_dir": lambda v: "~/.cache/lgg_jax", "split.file": lambda v: "",
                "model.pretrained_path": lambda v: ""}


def shareable_config(config):
  """The config without the trainer's local paths (see _LOCAL_PATHS)."""
  config = config.copy_and_resolve_references()
  for dotted, keep in _LOCAL_PATHS.items():
    section, key = dotted.split(".")
    config[section][key] = keep(config[section][key])
  return config


def _metric(block: dict, key: str, fmt: str = "{:.4f}") -> str:
  value = block.get(key)
  return "n/a" if value is None else fmt.format(value)


def model_lines(config) -> list[str]:
  """The model, its input and its normalisation, as a card states them (here and on a shipped ensemble's card)."""
  size = config.data.image_size
  crop = config.data.get("crop_size", 0)
  return [
      f"- {config.model.name} ({', '.join(f'{k}={v}' for k, v in sorted(models.block(config.model).items()))}), "
      + (f"trained on {crop}x{crop} crops of the {size}x{size} slices" if crop else f"trained at {size}x{size}")
      + f"; {count_parameters(config):,} parameters; input {state.in_channels(config)} channels (the slice and "
      f"{config.data.neighbours} neighbour(s) on each side, 3 MRI channels each)",
      f"- normalisation: {config.data.normalization}"
      + (f" (per channel over the patient's brain voxels: clip at percentiles "
         f"{tuple(config.data.normalization_percentiles)}, then z-score)"
         if config.data.normalization == "patient" else ""),
  ]


def count_parameters(config) -> int:
  """The inference model's parameters (no auxiliary heads), from shapes alone."""
  _, shapes = state.abstract_variables(config)
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def masks_line(settings: inference.Settings, threshold_chosen_on: str = "config") -> str:
  """What `Segmenter` and `predict` apply, as a member's card states it."""
  return (f"- masks (inference.json, what `Segmenter` and `predict` apply): threshold {settings.threshold:.2f} "
          f"({threshold_chosen_on}); TTA {settings.tta}; largest 3-D component {settings.largest_component}"
          + (f", also components >= {settings.component_fraction:g} of it" if settings.component_fraction else "")
          + (f", ranked by {settings.component_rank.replace('_', ' ')}" if settings.component_rank != "volume"
             else ""))


def model_card(member: inference.Member, summary: dict) -> str:
  config, test, settings = member.config, summary.get("test", {}), member.settings
  inf = summary.get("inference", {})
  prov = summary.get("provenance", {})
  patients = summary.get("split_patients", {})
  dataset = prov.get("dataset", {})
  lines = [
      f"# lgg_jax model: {config.model.name}, exported {datetime.date.today().isoformat()}", "",
      "Segments FLAIR abnormality (low-grade glioma) in axial brain MRI slices of the LGG Segmentation "
      "Dataset's form: 256x256 uint8 slices with three channels (pre-contrast, FLAIR, post-contrast), a "
      "patient's slices in order.", "",
      "**Not a medical device.** A research model: it has not been validated for clinical use and must not "
      "guide diagnosis or treatment.", "",
      "## Model", "",
      *model_lines(config),
      f"- checkpoint: step {member.step} of {summary.get('step')} (best validation per-patient Dice "
      f"{_metric(summary, 'best_val_dice')})",
      masks_line(settings, inf.get("threshold_chosen_on", "config")),
      f"- review flag (quality.json, `review_threshold`): a mask whose {EXPORT_QUALITY_RULE.signal.replace('_', ' ')} "
      f"is below {EXPORT_QUALITY_RULE.review_threshold:g}, or with no tumour found, is flagged for review "
      "(lgg_jax.quality; the rule was measured on configs/recipe_cpu.py's fold models, benchmarks/QUALITY.md, "
      "not on this model)",
      "- the test figures below were scored with: " + ", ".join(
          f"{k} {inf[k]}" for k in inference.Settings.names() if k in inf), "",
      "## Data and split", "",
      f"- dataset: {pathlib.Path(dataset.get('manual_dir') or config.data.manual_dir).name or 'synthetic'} "
      f"({dataset.get('slices', '?')} slices, fingerprint {dataset.get('fingerprint', '?')}, "
      f"version {dataset.get('version', '?')})",
      f"- split by patient ({config.split.protocol}), {config.split.num_folds} folds, test fold "
      f"{config.split.fold}, seed {config.split.seed}: "
      + ", ".join(f"{k} {len(v)} patients" for k, v in patients.items()), "",
  ]
  for name, ids in patients.items():
    lines.append(f"- {name}: {', '.join(ids)}")
  lines += ["", "## Metrics on the held-out test patients", ""]
  scored_step = summary.get("best_step")
  if scored_step is not None and scored_step != member.step:
    lines += [f"**These are the best checkpoint's figures (step {scored_step}), not this export's (step "
              f"{member.step}).** `python -m lgg_jax.evaluate --workdir=RUN --checkpoint={member.step}` scores "
              "this one.", ""]
  lines += ["Per-patient volumetric Dice at 256x256 with the slices in order (both masks empty: 1), "
            "3-D HD95 in pixels (medpy's definition; undefined when one mask is empty), tumour-free "
            "slices with any predicted pixel.", "",
            "| metric | value |", "|---|---|"]
  for key in ("patient_dice", "patient_dice_median", "hd95_px", "hd95_undefined", "hd95_px_penalised",
              "empty_false_positive_rate", "missed_patients", "patients"):
    value = test.get(key)
    lines.append(f"| {key} | {value if not isinstance(value, float) else f'{value:.4f}'} |")
  lines += ["", "## Provenance", "",
            f"- git commit {prov.get('git_commit', '?')}; packages: "
            + ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items() if v),
            f"- trained on {prov.get('devices', {}).get('count', '?')} {prov.get('devices', {}).get('backend', '?')} "
            f"device(s); run {pathlib.Path(member.source).name}", "",
            "## Intended use and limits", "",
            "- Research on LGG FLAIR segmentation, on data prepared like the LGG Segmentation Dataset "
            "(skull-stripped is not required; intensities as uint8 slices).",
            "- Trained on few patients of one public collection (TCGA-LGG); other scanners, sequences, "
            "tumour types or preprocessing may give much worse results.",
            "- Figures above come from the run's own held-out patients, a few dozen at most; expect wide "
            "intervals."]
  return "\n".join(lines) + "\n"


def _ordinary_modes(folder: pathlib.Path) -> None:
  """Files as open() makes them (0666 less the umask): safetensors writes 0600."""
  umask = os.umask(0)
  os.umask(umask)
  for path in folder.iterdir():
    path.chmod(0o666 & ~umask)


def export_run(workdir, out, checkpoint: str = "best", forward: bool = True, onnx: bool = False,
               **overrides) -> pathlib.Path:
  """The run's checkpoint as an export; `overrides` (threshold, tta,
  largest_component, component_fraction) replace the settings the run was
  scored with in inference.json. `forward=False` leaves out forward.jax
  (it holds a second copy of the weights). `onnx=True` adds model.onnx
  and onnx_predict.py (lgg_jax.onnx_export; needs the [onnx] extra)."""
  workdir, out = pathlib.Path(workdir).expanduser().resolve(), pathlib.Path(out).expanduser().resolve()
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"--out={out} exists and is not empty")
  member = loading.member_from_run(workdir, checkpoint)
  member.settings = member.settings.replace(**overrides)
  summary_path = workdir / "summary.json"
  summary = state.read_json(summary_path) if summary_path.is_file() else {}
  lowered = export_forward(member) if forward else None
  with written_whole(out) as partial:
    (partial / loading.CONFIG_FILE).write_text(shareable_config(member.config).to_json_best_effort(indent=2))
    save_file(loading.flatten_variables(member.variables), str(partial / loading.WEIGHTS_FILE),
              # One key: safetensors writes its metadata map in hash order, so
              # two keys made two exports of one run differ byte for byte.
              metadata={"lgg_jax_checkpoint_step": str(member.step)})
    (partial / loading.INFERENCE_FILE).write_text(json.dumps(
        {**member.settings.as_dict(), "step": member.step,
         "input_size": member.config.data.image_size, "input_channels": state.in_channels(member.config)},
        indent=2))
    EXPORT_QUALITY_RULE.save(partial)
    if onnx:
      onnx_export.export_onnx(member, partial / onnx_export.ONNX_FILE)
      onnx_export.copy_predict_script(partial)
    if lowered is not None:
      (partial / FORWARD_FILE).write_bytes(lowered.serialize())
    (partial / "model_card.md").write_text(model_card(member, summary) + (ONNX_CARD if onnx else ""))
    _ordinary_modes(partial)
  return out


@contextlib.contextmanager
def written_whole(out: pathlib.Path, replace: bool = False):
  """Yields a hidden sibling folder to write into. On success it becomes `out`
  (which must be absent or empty, unless `replace`); on any error it is
  removed: nothing half-written is left behind."""
  partial, old = out.parent / f".{out.name}.partial", out.parent / f".{out.name}.old"
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  try:
    yield partial
    if out.exists() and replace:
      shutil.rmtree(old, ignore_errors=True)
      out.rename(old)  # kept until the new folder is in place, so a failed rename loses nothing
      try:
        partial.rename(out)
      except BaseException:
        old.rename(out)
        raise
      shutil.rmtree(old)
    else:
      if out.exists():
        out.rmdir()
      partial.rename(out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


ONNX_CARD = """
## ONNX

`model.onnx` is the forward pass from the normalised model input to the
probabilities at 256x256: float32 NHWC (batch, input_size, input_size,
3 * (2k + 1)) -> (batch, 256, 256), batch symbolic. Pre-processing stays
outside the graph: resize each 256x256 slice to the input size (area
interpolation), normalise as the graph's metadata says (`lgg_jax.*` keys),
stack each slice with its k neighbours on each side (edge slices repeat;
channels pre-contrast, FLAIR, post-contrast of slice s-k first). The graph
is one view: the test-time views (`lgg_jax.tta`: none; flips: identity, left-
right, up-down; dihedral: the 4 rotations by 90 degrees, each with and
without a transpose), the threshold and the 3-D component step
(`lgg_jax.largest_component`, `lgg_jax.component_rank`,
`lgg_jax.component_fraction`) are outside it, and its metadata carries
them. `python onnx_predict.py model.onnx SLICES.npy MASKS.npy` (numpy,
scipy and onnxruntime) applies all of them: its masks are the scored ones.
"""


def export_members_onnx(models, out) -> list[pathlib.Path]:
  """Each member of exports or a pretrained model as <out>/<member folder>.onnx,
  with onnx_predict.py; `out` must be absent or empty, and is written whole."""
  out = pathlib.Path(out).expanduser().resolve()
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"--out={out} exists and is not empty")
  paths = [pathlib.Path(p) for p in loading.model_paths(loading.cli_models(list(models)))]
  names = [p.name for p in paths]
  shared = sorted({n for n in names if names.count(n) > 1})
  if shared:
    raise ValueError(f"members {', '.join(str(p) for p in paths if p.name in shared)} share a folder name, and "
                     "each is written as <folder name>.onnx: copy or link them to folders of their own names")
  with written_whole(out) as partial:
    for path in paths:
      onnx_export.export_onnx(loading.load_member(path), partial / f"{path.name}.onnx")
    onnx_export.copy_predict_script(partial)
  return [out / f"{name}.onnx" for name in names]


_FORWARD = flags.DEFINE_bool("forward", True, "Write forward.jax (--noforward: leave it out).")
command_flags.take("workdir", "checkpoint", "out", "onnx", "model", *command_flags.INFERENCE)
# --workdir: one run folder; --out: the folder to write (must not exist, or be
# empty); --model, with --onnx: exports or 'pretrained', one <member>.onnx each.
# The inference flags' unset values keep the run's.


def main(argv):
  del argv
  f = command_flags
  if not f.OUT.value:
    raise ValueError("give --out=FOLDER (it must not exist, or be empty)")
  if f.MODEL.value:
    if not f.ONNX.value:
      raise ValueError("--model exports models that are already exported: give --onnx (or use --workdir=RUN)")
    ignored = [f"--{name}" for name in ("checkpoint", "workdir", "forward", *f.INFERENCE) if flags.FLAGS[name].present]
    if ignored:
      raise ValueError(f"--model with --onnx converts exports as they are: {', '.join(ignored)} would be ignored")
    written = export_members_onnx(f.MODEL.value, f.OUT.value)
    print(f"exported to {f.OUT.value}: {', '.join(p.name for p in written)} and {onnx_export.PREDICT_SCRIPT.name}")
    return
  workdir = f.one(f.WORKDIR, "run folder")
  if not workdir:
    raise ValueError("give --workdir=RUN (or --model=EXPORT|pretrained with --onnx)")
  out = export_run(workdir, f.OUT.value, f.CHECKPOINT.value, forward=_FORWARD.value, onnx=f.ONNX.value,
                   **f.inference_overrides())
  print(f"exported to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
  cli.run(main)
