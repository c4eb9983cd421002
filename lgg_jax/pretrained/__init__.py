"""Trained models that ship inside lgg_jax, loaded by a name no path can be mistaken for.

`resolve(RECIPE_CPU)` gives the member folders of the named ensemble (exports
as lgg_jax/export.py writes them: config.json, weights.safetensors,
inference.json, model_card.md, forward.jax) after checking every file of the
model against its SHA256SUMS (`sha256sum -c` reads it too), so a corrupted or
partly copied install is an error naming the file rather than a wrong mask.

A model lives in `<root>/<name>/`, one subfolder per member; `<root>` is this
package's folder, or $LGG_JAX_PRETRAINED_DIR when set (tests, a local copy).
`write_checksums(model_dir)` writes the list when the weights are shipped.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re

from lgg_jax.data import kaggle

PREFIX = "pretrained:"
RECIPE_CPU = PREFIX + "recipe_cpu"
DEFAULT = RECIPE_CPU  # what `--model=pretrained` means
MODELS = {
    "recipe_cpu": "configs/recipe_cpu.py trained on the patient folds of the 62 dev patients (its "
                  "model_card.md says which folds ship); the members' mean probability",
}
CHECKSUMS_FILE = "SHA256SUMS"
ROOT_ENV = "LGG_JAX_PRETRAINED_DIR"
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def is_pretrained_name(name) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def known_names() -> list[str]:
  return [PREFIX + model for model in MODELS]


def root() -> pathlib.Path:
  override = os.environ.get(ROOT_ENV)
  return pathlib.Path(override).expanduser() if override else pathlib.Path(__file__).resolve().parent


def model_dir(name: str, models_root: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder of a known model name (installed or not); an unknown name is an error listing the known ones."""
  model = name[len(PREFIX):] if is_pretrained_name(name) else None
  if model not in MODELS:
    raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(known_names())}")
  return (pathlib.Path(models_root) if models_root is not None else root()) / model


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _model_files(folder: pathlib.Path) -> list[str]:
  """Every file under `folder` but the checksum list, as sorted POSIX paths relative to it."""
  return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS_FILE)


def write_checksums(folder: str | os.PathLike) -> pathlib.Path:
  """`<folder>/SHA256SUMS` for every file under it, in `sha256sum` format."""
  folder = pathlib.Path(folder)
  files = _model_files(folder)
  if not files:
    raise FileNotFoundError(f"{folder} holds no files to list")
  path = folder / CHECKSUMS_FILE
  path.write_text("".join(f"{_sha256(folder / f)}  {f}\n" for f in files))
  return path


def _read_checksums(path: pathlib.Path) -> dict[str, str]:
  listed = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    match = _CHECKSUM_LINE.match(line)
    relative = match and pathlib.PurePosixPath(match.group(2))
    if not match or relative.is_absolute() or ".." in relative.parts:
      raise ValueError(f"{path}:{number}: not a '<sha256>  <relative path>' line: {line[:120]!r}")
    listed[relative.as_posix()] = match.group(1).lower()
  return listed


def verify(folder: str | os.PathLike) -> dict[str, str]:
  """Every file under `folder` against its SHA256SUMS: {relative path: sha256}.
  A changed, missing or unlisted file is an error naming it."""
  folder = pathlib.Path(folder)
  checksums = folder / CHECKSUMS_FILE
  if not checksums.is_file():
    raise FileNotFoundError(f"{checksums} is missing: the model's files cannot be checked")
  listed = _read_checksums(checksums)
  for relative, expected in listed.items():
    path = folder / relative
    if not path.is_file():
      raise FileNotFoundError(f"{path} is listed in {checksums} but missing: the install is incomplete")
    if _sha256(path) != expected:
      raise ValueError(f"{path} does not match its sha256 in {checksums}: the file is corrupted or was changed")
  unlisted = [f for f in _model_files(folder) if f not in listed]
  if unlisted:
    raise ValueError(f"{folder / unlisted[0]} is not listed in {checksums}"
                     + (f" (nor {len(unlisted) - 1} more)" if len(unlisted) > 1 else "")
                     + "; a model folder holds only the files it ships with")
  return listed


def resolve(name: str, models_root: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """The member folders of a pretrained model (in natural order: fold0, fold1, ...),
  each an export for `Segmenter.load`, after `verify` passes on the whole model."""
  folder = model_dir(name, models_root)
  if not (folder / CHECKSUMS_FILE).is_file():
    raise FileNotFoundError(f"pretrained model {name!r} is not installed: {folder / CHECKSUMS_FILE} is missing "
                            "(its files ship as lgg_jax package data)")
  listed = verify(folder)
  members = sorted({relative.split("/")[0] for relative in listed if "/" in relative}, key=kaggle.natural_key)
  if not members:
    raise ValueError(f"{folder / CHECKSUMS_FILE} lists no member folders")
  return [folder / member for member in members]
