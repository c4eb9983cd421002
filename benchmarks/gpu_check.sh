#!/usr/bin/env bash
# The prepared GPU check (issue: GPU-ready speed), one command:
#
#   bash benchmarks/gpu_check.sh --out=DIR [--wheels=DIR] [--peer=../shared/peers] [--deadline_s=S] [--workers=16]
#   bash benchmarks/gpu_check.sh --out=DIR --dry_run     # the same script on the CPU, tiny sizes, under 2 minutes
#   (--max_measurements=N stops after N measurements, listing the rest as pending)
#
# On a GPU machine that has only jax, flax, optax, orbax and torch (no network),
# --wheels=DIR installs the rest (Python 3.12 wheels that benchmarks/fetch_wheels.sh
# downloads; never committed). Then `python -m benchmarks.bench --check` measures, in
# priority order, rewriting DIR/check.json and DIR/check.md after each measurement:
# the ResNeXt50-UNet train step (bf16 at batch 64 and 128, fp32 at 32) and the
# U-Net and FPN (bf16, 64) with compile times and peak device memory (preallocation
# off), the torch peer eager and torch.compile at the same settings, the input paths
# (grain + albumentations with 16 workers, and on-device), and a 2-minute synthetic
# 256x256 training on the on-device path. It stops cleanly at the deadline (default:
# 8 minutes from the start, installs included). The dry run uses at most 2 workers,
# the CPU peer, no torch.compile and no installs.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
out="" wheels="" peer="../shared/peers" deadline="" workers=16 dry_run=0 max_measurements=0
for arg in "$@"; do
  case "$arg" in
    --out=*) out="${arg#*=}" ;;
    --wheels=*) wheels="${arg#*=}" ;;
    --peer=*) peer="${arg#*=}" ;;
    --deadline_s=*) deadline="${arg#*=}" ;;
    --workers=*) workers="${arg#*=}" ;;
    --dry_run) dry_run=1 ;;
    --max_measurements=*) max_measurements="${arg#*=}" ;;
    *) echo "error: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "error: --out=DIR is required" >&2; exit 2; }
export NO_ALBUMENTATIONS_UPDATE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
extra=()
if [ "$dry_run" = 1 ]; then
  export JAX_PLATFORMS=cpu
  extra+=(--dry_run)
  deadline="${deadline:-110}"
else
  if [ -n "$wheels" ]; then
    # The wheels of distributions this machine lacks, without dependency
    # resolution (the image's own versions stay), then lgg_jax itself, then the
    # carried wheel of any distribution whose image version lgg_jax's
    # requirements exclude (e.g. a newer flax than setup.py allows).
    python - "$wheels" <<'PY'
import importlib.metadata, pathlib, subprocess, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
wheels = {canonicalize_name(w.name.split("-")[0]): w for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl"))}
def installed(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None
pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
missing = [str(w) for name, w in wheels.items() if installed(name) is None]
if missing:
  subprocess.run(pip + missing, check=True)
subprocess.run(pip + ["--no-build-isolation", "-e", "."], check=True)
replace = []
for text in importlib.metadata.requires("lgg_jax") or []:
  req = Requirement(text)
  if req.marker is not None:
    continue  # extras (test, torch)
  have, name = installed(req.name), canonicalize_name(req.name)
  if have is not None and not req.specifier.contains(have, prereleases=True):
    if name not in wheels:
      sys.exit(f"error: the image has {req.name} {have}, lgg_jax needs {req}, and {sys.argv[1]} has no wheel of it")
    print(f"replacing the image's {req.name} {have} with {wheels[name].name} ({req})", flush=True)
    replace.append(str(wheels[name]))
if replace:
  subprocess.run(pip + ["--upgrade"] + replace, check=True)
PY
  fi
  python -c "import lgg_jax" 2>/dev/null || {
    echo "error: lgg_jax does not import here (missing packages?); pass --wheels=DIR from benchmarks/fetch_wheels.sh" >&2
    exit 1; }
  deadline="${deadline:-$(( 480 - 20 - ($(date +%s) - started) ))}"
fi
python -m benchmarks.bench --check --out="$out" --deadline_s="$deadline" --workers="$workers" --peer="$peer" \
  --max_measurements="$max_measurements" "${extra[@]}"
