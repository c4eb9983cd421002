"""What produced a result: code version, packages, config, data."""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess

import jax

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
             "numpy", "ml-collections", "albumentations", "opencv-python-headless", "tifffile")


def git_commit() -> str:
  repo = pathlib.Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


_ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "asimd", "sve")


def host_cpu() -> str:
  """The host CPU's model and vector extensions: XLA:CPU compiles for them, so
  bit-for-bit reruns hold on one kind of CPU only."""
  model, flags = platform.processor() or platform.machine() or "unknown", set()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name":
        model = value.strip()
      elif key.strip() in ("flags", "Features") and not flags:
        flags = set(value.split())
  except OSError:
    pass
  isa = [f for f in _ISA_FLAGS if f in flags]
  return f"{model} ({' '.join(isa)})" if isa else model


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def collect(config, data) -> dict:
  return {"git_commit": git_commit(), "versions": versions(), "config": config.to_dict(),
          "dataset": {"fingerprint": data.fingerprint, "version": data.version, "manual_dir": data.manual_dir,
                      "slices": int(len(data.patient_ids))},
          "devices": {"backend": jax.default_backend(), "count": jax.device_count(),
                      "kind": jax.devices()[0].device_kind, "processes": jax.process_count(),
                      "host_cpu": host_cpu()}}
