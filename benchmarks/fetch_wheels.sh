#!/usr/bin/env bash
# Python 3.12 wheels of what the GPU image lacks, for benchmarks/gpu_check.sh --wheels=DIR:
#
#   bash benchmarks/fetch_wheels.sh DIR        (needs python3.12 and the package index)
#
# The GPU image has Python 3.12, jax, flax, optax, orbax-checkpoint, torch,
# torchvision, opencv, tifffile and tensorboard; this downloads lgg_jax's other
# dependencies with theirs, then deletes the wheels of packages the image has.
# flax, optax and orbax-checkpoint are kept at CI's versions: gpu_check.sh
# installs them only where the image's version is outside setup.py's bounds.
# Never commit DIR. Carry it to the device (its tree may hold 64 MiB in all).
set -euo pipefail
dir="${1:?usage: fetch_wheels.sh DIR}"
python="${PYTHON312:-python3.12}"
cd "$(dirname "$0")/.."
mkdir -p "$dir"
"$python" -m pip download --quiet --dest "$dir" --prefer-binary \
  "tensorflow-datasets>=4.9.9" importlib_resources "array-record>=0.8" "grain>=0.2.12" \
  "albumentations>=2.0.8,<2.1" "ml-collections>=1.0" "tensorboardX>=2.6" "safetensors>=0.4" \
  "flatbuffers>=24.3" "imageio>=2.28,<3" "nibabel>=5.0" "matplotlib>=3.7" "tqdm>=4.60" "absl-py>=2.0"
"$python" -m pip download --quiet --dest "$dir" --no-deps --only-binary=:all: \
  flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
# sdists (pure Python ones) become wheels so that installing needs no build.
for sdist in "$dir"/*.tar.gz; do
  [ -e "$sdist" ] || continue
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$dir" "$sdist" && rm "$sdist"
done
# What the GPU image already has, and pyarrow (53 MB: tensorflow-datasets lists
# it, but nothing lgg_jax runs imports it; gpu_check.sh installs without deps).
for present in pyarrow numpy scipy jax jaxlib jax_cuda* jax_plugins torch torchvision \
               nvidia_* triton opencv_python* tifffile tensorboard tensorboard_data_server protobuf grpcio \
               ml_dtypes opt_einsum msgpack rich markdown_it_py mdurl pygments typing_extensions \
               setuptools pillow fsspec sympy networkx jinja2 markupsafe mpmath filelock humanize; do
  rm -f "$dir"/${present}-*.whl
done
du -sh "$dir"
ls "$dir"
