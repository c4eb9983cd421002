"""Benchmarks: python -m lgg_jax.bench [--models=resnext_unet] [--batch=4] [--size=256]

Prints one markdown table: train-step time and images/s per model (median of
`--steps` steps after compilation), XLA's FLOP count of the compiled step and
the FLOP rate it implies; the convolution micro-benchmark (forward+backward
of a dense and a 32-group 3x3 conv in each `conv_impl`, and torch's
channels-last convs beside them when torch is importable); and, when torch
is importable, the PyTorch peer script run in the same process tree on the
same machine, with our figure as a ratio of the peer's. Figures go to
benchmarks/RESULTS.md by hand, with the command and the machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from configs import default
from lgg_jax import parallel, state, steps
from lgg_jax.models import layers

_MODELS = flags.DEFINE_list("models", ["resnext_unet"], "Models to time (unet, fpn, resnext_unet).")
_BATCH = flags.DEFINE_integer("batch", 4, "Global batch size.")
_SIZE = flags.DEFINE_integer("size", 256, "Image height and width.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per model (after 1 compile step).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
_CONV_IMPL = flags.DEFINE_list("conv_impl", ["auto"], "config.model.conv_impl values to time.")
_CONV = flags.DEFINE_bool("conv", True, "Run the convolution micro-benchmark.")
_PEER = flags.DEFINE_string(
    "peer", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "peers"),
    "Peer script, or a folder holding torch_resnext_unet_{cpu,gpu}.py; '' skips the peer.")


def _median_time(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def conv_rows(repeats: int) -> list[dict]:
  """fwd+bwd of a ResNeXt layer1 3x3 conv (2x64x64x256): dense and 32 groups.

  "per FLOP vs dense" divides each grouped time by 1/32 of the dense time of
  the same implementation (the grouped conv does 1/32 of the FLOPs).
  """
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 256))
  rows = []
  for impl in ("xla", "cpu"):
    times = {}
    for groups in (1, 32):
      module = (layers.Conv(256, 256, 3, impl=impl, padding=1, use_bias=False, rngs=nnx.Rngs(0)) if groups == 1
                else layers.GroupedConv(256, 256, 3, groups=32, padding=1, impl=impl, rngs=nnx.Rngs(0)))
      graphdef, params = nnx.split(module)
      grad = jax.jit(jax.grad(lambda p, x, g=graphdef: jnp.sum(nnx.merge(g, p)(x) ** 2), argnums=(0, 1)))
      times[groups] = _median_time(grad, params, x, steps=repeats)
    rows.append({"conv": f"lgg_jax, conv_impl={impl}", "dense_s": times[1], "grouped_s": times[32]})
  try:
    import torch
  except ImportError:
    return rows
  xt = torch.randn(2, 256, 64, 64).contiguous(memory_format=torch.channels_last).requires_grad_()
  times = {}
  for groups in (1, 32):
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, groups=groups, bias=False).to(memory_format=torch.channels_last)

    def step(conv=conv):
      conv.zero_grad()
      xt.grad = None
      (conv(xt) ** 2).sum().backward()
    times[groups] = _median_time(step, steps=repeats)
  rows.append({"conv": f"torch {torch.__version__} (channels_last)", "dense_s": times[1], "grouped_s": times[32]})
  return rows


def train_step_row(model: str, conv_impl: str) -> dict:

  config = default.get_config()
  config.model.name = model
  config.model.conv_impl = conv_impl
  config.compute_dtype = _DTYPE.value
  config.global_batch_size = _BATCH.value
  config.data.image_size = _SIZE.value
  mesh = parallel.make_mesh()
  tx, _ = state.make_optimizer(config, total_steps=1000)
  graphdefs, train_state = state.create_state(config, tx)
  train_state = parallel.replicate(train_state, mesh)
  step = steps.make_train_step(graphdefs["train"], tx, config, mesh)
  rng = np.random.default_rng(0)
  batch = parallel.global_batch({
      "image": rng.standard_normal((_BATCH.value, _SIZE.value, _SIZE.value, 3)).astype(np.float32),
      "mask": (rng.random((_BATCH.value, _SIZE.value, _SIZE.value, 1)) > 0.9).astype(np.float32),
      "index": np.arange(_BATCH.value, dtype=np.int32)}, mesh)
  start = time.perf_counter()
  compiled = step.lower(train_state, batch).compile()
  compile_s = time.perf_counter() - start
  # FLOPs as XLA counts the plain-lax form of the same step: its count of the
  # cpu form misses the iterations of the banded kernel-gradient scans.
  config.model.conv_impl = "xla"
  plain_graphdefs, _ = state.create_state(config, tx)
  cost = steps.make_train_step(plain_graphdefs["train"], tx, config, mesh).lower(train_state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  times = []
  for i in range(_STEPS.value + 1):
    start = time.perf_counter()
    train_state, stats = compiled(train_state, batch)
    jax.block_until_ready(stats)
    if i:  # the first call still pays one-off costs
      times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {"model": model, "conv_impl": conv_impl,
          "dtype": _DTYPE.value, "batch": _BATCH.value, "size": _SIZE.value, "step_s": seconds,
          "images_per_s": _BATCH.value / seconds, "compile_s": compile_s,
          "gflop_per_image": flops / _BATCH.value / 1e9, "tflop_per_s": flops / seconds / 1e12}


def peer_row() -> dict | None:
  path = pathlib.Path(_PEER.value) if _PEER.value else None
  if path is None:
    return None
  if path.is_dir():
    path = path / ("torch_resnext_unet_cpu.py" if jax.default_backend() == "cpu" else "torch_resnext_unet_gpu.py")
  if not path.is_file():
    print(f"peer script {path} not found; pass --peer=PATH", file=sys.stderr)
    return None
  try:
    import torch  # noqa: F401
  except ImportError:
    print("torch is not installed: no peer figure", file=sys.stderr)
    return None
  args = [sys.executable, str(path)] + ([str(_BATCH.value), str(_SIZE.value)] if "cpu" in path.name else [])
  out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  return {"script": path.name, "rows": rows}


def main(argv):
  del argv
  print(f"# lgg_jax.bench on {jax.devices()[0].device_kind} ({jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU cores), JAX {jax.__version__}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
  if _CONV.value:
    print("\n| 3x3 conv fwd+bwd, 2x64x64x256 | dense s | 32 groups s | grouped time per FLOP vs dense |")
    print("|---|---|---|---|")
    for r in conv_rows(repeats=5):
      print(f"| {r['conv']} | {r['dense_s']:.4f} | {r['grouped_s']:.4f} | {32 * r['grouped_s'] / r['dense_s']:.2f}x |")
  rows = [train_step_row(m, impl) for m in _MODELS.value for impl in _CONV_IMPL.value]
  peer = peer_row()
  peer_step = None
  if peer:
    for r in peer["rows"]:
      if "step_s" in r:
        peer_step = r["step_s"]
  print("\n| model | conv_impl | dtype | batch | size | s/step | images/s | GFLOP/image (XLA, plain form) | TFLOP/s | compile s | speed vs peer |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = f"{peer_step / r['step_s']:.2f}x" if peer_step and r["model"] == "resnext_unet" else "-"
    print(f"| {r['model']} | {r['conv_impl']} | {r['dtype']} | {r['batch']} | {r['size']} | {r['step_s']:.3f} | "
          f"{r['images_per_s']:.2f} | {r['gflop_per_image']:.1f} | {r['tflop_per_s']:.3f} | {r['compile_s']:.1f} | {ratio} |")
  if peer:
    print(f"\npeer ({peer['script']}, same machine, same run): " + "; ".join(json.dumps(r) for r in peer["rows"]))


if __name__ == "__main__":
  app.run(main)
