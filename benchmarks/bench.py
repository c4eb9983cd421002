"""Benchmarks: train steps, convolutions, input paths, beside the PyTorch peer.

Table mode (what benchmarks/RESULTS.md's CPU tables come from):
  python -m benchmarks.bench [--models=resnext_unet] [--batch=4] [--size=256] [--conv_impl=cpu,xla]
prints a markdown table: train-step time and images/s per model (median of
`--steps` steps after compilation), XLA's FLOP count of the compiled step and
the FLOP rate it implies; the convolution micro-benchmark (forward+backward
of a dense and a 32-group 3x3 conv in each `conv_impl`, and torch's beside
them when torch is importable); and the PyTorch peer script run on the same
machine in the same invocation, with our figure as a ratio of the peer's.

Check mode (what benchmarks/gpu_check.sh runs; see there):
  python -m benchmarks.bench --check --out=DIR [--dry_run] [--deadline_s=420] [--workers=16]
runs a fixed list of measurements in priority order (each train step in its
own process, so its peak device memory is its own), rewrites DIR/check.json
and DIR/check.md after each one, and stops cleanly before `--deadline_s`.
`--dry_run` is the same list at tiny sizes on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import nnx

from configs import default
from experiments.common import TINY
from lgg_jax import cli, command_flags, optimizers, parallel, state, steps
from lgg_jax.data import device_pipeline, pipeline
from lgg_jax.models import layers

_BATCH = flags.DEFINE_integer("batch", 4, "Global batch size.")
_SIZE = flags.DEFINE_integer("size", 256, "Image height and width.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per model (after 1 compile step).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
_CONV_IMPL = flags.DEFINE_list("conv_impl", ["auto"], "config.model.conv_impl values to time.")
_CONV = flags.DEFINE_bool("conv", True, "Run the convolution micro-benchmark.")
_PEER = flags.DEFINE_string(
    "peer", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "peers"),
    "Peer script, or a folder holding torch_resnext_unet_{cpu,gpu}.py; '' skips the peer.")
_CHECK = flags.DEFINE_bool("check", False, "Run the prepared check list (benchmarks/gpu_check.sh).")
# Shared flags: --models (architectures to time: unet, fpn, resnext_unet; default
# resnext_unet), --out (check mode: the folder for check.json and check.md).
command_flags.take("models", "out")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check mode at tiny sizes on the CPU.")
_DEADLINE = flags.DEFINE_float("deadline_s", 420.0, "Check mode: stop starting measurements after this.")
_MAX_MEASUREMENTS = flags.DEFINE_integer("max_measurements", 0, "Check mode: stop after this many (0: no limit); "
                                         "the rest are listed as pending.")
_WORKERS = flags.DEFINE_integer("workers", 16, "Check mode: grain workers for the host input path.")
_ONE = flags.DEFINE_string("one", "", "Internal: run one measurement (JSON spec), print its JSON row.")


def _median_time(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --------------------------------------------------------------------------- measurements

def conv_rows(repeats: int) -> list[dict]:
  """fwd+bwd of a ResNeXt layer2 3x3 conv (2x64x64x256: its 256-wide grouped
  conv at 64x64 for a 256x256 input): dense and 32 groups.

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


def _bench_config(model: str, dtype: str, batch: int, size: int, conv_impl: str = "auto", tiny: bool = False):
  config = default.get_config()
  if tiny:
    cli.override(config, TINY)
  config.model.name, config.model.conv_impl, config.compute_dtype = model, conv_impl, dtype
  config.global_batch_size, config.data.image_size = batch, size
  return config


def _device_memory() -> dict:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {"peak_memory_gb": None if peak is None else peak / 2**30}


def train_step_row(model: str, dtype: str, batch: int, size: int, conv_impl: str = "auto", repeats: int = 3,
                   tiny: bool = False) -> dict:
  """One model's train step on random data: time, compile time, XLA FLOPs, peak memory."""
  config = _bench_config(model, dtype, batch, size, conv_impl, tiny)
  mesh = parallel.make_mesh()
  tx, _ = optimizers.make_optimizer(config, total_steps=1000)
  graphdefs, train_state = state.create_state(config, tx)
  train_state = parallel.replicate(train_state, mesh)
  step = steps.make_train_step(graphdefs["train"], tx, config, mesh)
  rng = np.random.default_rng(0)
  batch_arrays = parallel.global_batch({
      "image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
      "mask": (rng.random((batch, size, size, 1)) > 0.9).astype(np.float32),
      "index": np.arange(batch, dtype=np.int32)}, mesh)
  start = time.perf_counter()
  compiled = step.lower(train_state, batch_arrays).compile()
  compile_s = time.perf_counter() - start
  # FLOPs as XLA counts the plain-lax form of the same step: its count of the
  # cpu form misses the iterations of the banded kernel-gradient scans.
  config.model.conv_impl = "xla"
  plain_graphdefs, _ = state.create_state(config, tx)
  cost = steps.make_train_step(plain_graphdefs["train"], tx, config, mesh).lower(train_state, batch_arrays)
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    train_state, stats = compiled(train_state, batch_arrays)
    jax.block_until_ready(stats)
    if i:  # the first call still pays one-off costs
      times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {"model": model, "conv_impl": layers.resolve_conv_impl(conv_impl), "dtype": dtype, "batch": batch,
          "size": size, "step_s": seconds, "images_per_s": batch / seconds, "compile_s": compile_s,
          "gflop_per_image": flops / batch / 1e9, "tflop_per_s": flops / seconds / 1e12,
          "resident_data_counted": False, **_device_memory()}


def peer_script(peer: str) -> pathlib.Path | None:
  path = pathlib.Path(peer).expanduser() if peer else None
  if path is None:
    return None
  if path.is_dir():
    path = path / ("torch_resnext_unet_cpu.py" if jax.default_backend() == "cpu" else "torch_resnext_unet_gpu.py")
  return path if path.is_file() else None


def peer_rows(path: pathlib.Path, args: list[str]) -> list[dict]:
  out = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, check=True).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _synthetic_resident(count: int, size: int) -> pipeline.Resident:
  rng = np.random.default_rng(0)
  masks = np.zeros((count, size, size), np.uint8)
  masks[:, size // 4:size // 2, size // 4:size // 2] = 255
  return pipeline.Resident(images=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), masks=masks,
                           records=np.arange(count), patient=np.zeros(count, np.int32),
                           neighbours=np.arange(count, dtype=np.int32)[:, None], has_tumor=np.ones(count, bool),
                           trainable=np.ones(count, bool), stats=None)


def input_device_row(batch: int, size: int, augment: str, repeats: int = 5) -> dict:
  """Images/s the on-device path makes (gather, augment, normalise) in a jitted step."""
  config = _bench_config("unet", "float32", batch, size)
  config.augment.name = augment
  res = _synthetic_resident(4 * batch, size)
  data = device_pipeline.put_on_devices(res, parallel.make_mesh())
  prepare = jax.jit(device_pipeline.make_prepare(config))
  batches = device_pipeline.host_batches(res, config)
  host = next(batches)
  seconds = _median_time(lambda: prepare(data, host)["image"], steps=repeats)
  return {"input": "on-device (JAX)", "augment": augment, "batch": batch, "size": size, "workers": 0,
          "images_per_s": batch / seconds, "resident_data_gb": (res.images.nbytes + res.masks.nbytes) / 2**30,
          "resident_data_counted": True, **_device_memory()}


def input_host_row(batch: int, size: int, augment: str, workers: int, batches: int = 20) -> dict:
  """Images/s of grain + albumentations on the host with `workers` processes,
  in steady state: the batches the workers made while the first one came
  (grain keeps one per worker) are drained before the clock starts, and the
  timed batches are at least four rounds of the workers."""
  config = _bench_config("unet", "float32", batch, size)
  config.augment.name, config.data.num_workers = augment, workers
  res = _synthetic_resident(4 * batch, size)
  iterator = pipeline.train_dataset(res, config)
  for _ in range(1 + workers * grain.MultiprocessingOptions().per_worker_buffer_size):
    next(iterator)
  batches = max(batches, 4 * workers)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = (time.perf_counter() - start) / batches
  return {"input": "grain + albumentations (host)", "augment": augment, "batch": batch, "size": size,
          "workers": workers, "timed_batches": batches, "images_per_s": batch / seconds}


def training_row(seconds: float, batch: int, size: int, step_s: float | None, tiny: bool, timeout: float) -> dict:
  """A short synthetic training on the on-device path, sized to take about
  `seconds` of steps: `python -m lgg_jax.main` in its own process."""
  patients, low, high = (8, 6, 8) if tiny else (24, 20, 40)
  steps_per_epoch = max(1, int(0.7 * patients * (low + high) / 2) // batch)
  epochs = max(1, int(seconds / ((step_s or 1.0) * steps_per_epoch)))
  overrides = {"model.name": "resnext_unet", "model.conv_impl": "xla",
               "compute_dtype": "float32" if tiny else "bfloat16",
               "global_batch_size": batch, "eval_batch_size": batch, "data.image_size": size,
               "data.on_device": True, "augment.name": "distortions", "optimizer.learning_rate": 3e-4,
               "data.synthetic.num_patients": patients, "data.synthetic.min_slices": low,
               "data.synthetic.max_slices": high, "num_epochs": epochs,
               "schedule.warmup_steps": min(50, steps_per_epoch), "write_report": False}
  if tiny:
    overrides.update({k: v for k, v in TINY.items() if k.startswith("model.")})
  folder = pathlib.Path(tempfile.mkdtemp(prefix="lgg_bench_training_"))
  overrides["data.data_dir"] = str(folder / "data")
  command = [sys.executable, "-m", "lgg_jax.main", f"--config={pathlib.Path(default.__file__)}",
             f"--workdir={folder / 'run'}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  started = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 1))
  wall = time.perf_counter() - started
  if result.returncode:
    raise RuntimeError(f"training exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
  summary = json.loads((folder / "run" / "summary.json").read_text())
  return {"training": "synthetic, on-device input", "model": "resnext_unet", "dtype": overrides["compute_dtype"],
          "batch": batch, "size": size, "epochs": epochs, "steps": summary["step"], "wall_s": wall,
          "images_per_s_overall": summary["step"] * batch / wall, "val_dice": summary["val_dice"],
          "test_dice": summary.get("test_dice"), "resident_data_counted": True,
          "peak_memory_gb": summary.get("peak_device_memory_gb")}


def run_one(spec: dict) -> dict:
  kind = spec.pop("kind")
  if kind == "train_step":
    return train_step_row(**spec)
  if kind == "input_device":
    return input_device_row(**spec)
  if kind == "input_host":
    return input_host_row(**spec)
  raise ValueError(f"--one: unknown measurement kind {kind!r}")


# --------------------------------------------------------------------------- check mode

@dataclasses.dataclass
class Check:
  name: str
  spec: dict | None = None          # a measurement of ours, in its own process
  peer_args: list | None = None     # a peer script run


def check_list(dry_run: bool, workers: int, peer: pathlib.Path | None) -> list[Check]:
  """The fixed grid, most important first (every compile costs GPU time)."""
  size = 64 if dry_run else 256
  b = {64: 4, 128: 8, 32: 4} if dry_run else {64: 64, 128: 128, 32: 32}
  # Every check uses the plain XLA convolutions: what "auto" picks on a GPU
  # (and on the dry run's CPU they compile in a fraction of the time).
  tiny, xla = dry_run, {"conv_impl": "xla"}
  items = [Check("resnext_unet bf16 b64", {"kind": "train_step", "model": "resnext_unet", "dtype": "bfloat16",
                                            "batch": b[64], "size": size, "tiny": tiny, **xla})]
  if peer is not None:
    if dry_run:
      items.append(Check("peer (CPU) b64", peer_args=[str(b[64]), str(size)]))
    else:
      items += [Check("peer bf16 channels_last b64", peer_args=["bf16cl"]),
                Check("peer bf16 channels_last torch.compile b64", peer_args=["bf16cl_compile"])]
  items += [
      Check("input on-device, distortions, b64", {"kind": "input_device", "batch": b[64], "size": size,
                                                   "augment": "distortions"}),
      Check(f"input grain + albumentations, distortions, {min(workers, 2) if dry_run else workers} workers",
            {"kind": "input_host", "batch": b[64], "size": size, "augment": "distortions",
             "workers": min(workers, 2) if dry_run else workers}),
      Check("training 2 min, on-device, resnext_unet", {"kind": "training", "seconds": 20 if dry_run else 120,
                                                        "batch": b[64], "size": size, "tiny": tiny}),
      Check("resnext_unet bf16 b128", {"kind": "train_step", "model": "resnext_unet", "dtype": "bfloat16",
                                       "batch": b[128], "size": size, "tiny": tiny, **xla}),
      Check("resnext_unet fp32 b32", {"kind": "train_step", "model": "resnext_unet", "dtype": "float32",
                                      "batch": b[32], "size": size, "tiny": tiny, **xla}),
  ]
  if peer is not None and not dry_run:
    items.append(Check("peer fp32 b32", peer_args=["fp32"]))
  items += [Check(f"{m} bf16 b64", {"kind": "train_step", "model": m, "dtype": "bfloat16", "batch": b[64],
                                    "size": size, "tiny": tiny, **xla}) for m in ("unet", "fpn")]
  return items


def _in_own_process(spec: dict, timeout: float) -> dict:
  result = subprocess.run([sys.executable, "-m", "benchmarks.bench", f"--one={json.dumps(spec)}"],
                          capture_output=True, text=True, timeout=max(timeout, 1))
  rows = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode or not rows:
    raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:] or ['no output']}")
  return json.loads(rows[-1])


def _markdown(report: dict) -> str:
  lines = [f"# lgg_jax GPU check ({'dry run, ' if report['dry_run'] else ''}{report['device']})", "",
           f"{report['started']}; JAX {report['jax']}, Python {report['python']}; "
           f"XLA_PYTHON_CLIENT_PREALLOCATE={report['preallocate']}.", "",
           "| measurement | s/step | images/s | compile s | peak device memory GB (resident data counted?) | notes |",
           "|---|---|---|---|---|---|"]
  for m in report["measurements"]:
    r = m.get("result", {})
    if "error" in m:
      lines.append(f"| {m['name']} | - | - | - | - | failed: {m['error']} |")
      continue
    if "rows" in r:  # a peer
      for row in r["rows"]:
        if "images_per_s" in row or "step_s" in row:
          step = row.get("step_ms", row.get("step_s", float("nan")) * 1e3) / 1e3
          lines.append(f"| {m['name']} ({row.get('variant', 'cpu')}) | {step:.3f} | "
                       f"{row.get('images_per_s', row.get('batch', 0) / step):.1f} | - | "
                       f"{row.get('peak_mem_gb', '-')} | torch peer |")
      continue
    memory = r.get("peak_memory_gb")
    memory = "n/a" if memory is None else f"{memory:.2f} ({'yes' if r.get('resident_data_counted') else 'no'})"
    step = r.get("step_s")
    notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                      if k in ("val_dice", "epochs", "wall_s", "gflop_per_image", "resident_data_gb", "workers"))
    lines.append(f"| {m['name']} | {'-' if step is None else f'{step:.4f}'} | "
                 f"{r.get('images_per_s', r.get('images_per_s_overall', float('nan'))):.1f} | "
                 f"{r.get('compile_s', float('nan')):.1f} | {memory} | {notes} |")
  if report["pending"]:
    why = (f"after --max_measurements={report['max_measurements']}" if report.get("max_measurements")
           and len(report["measurements"]) >= report["max_measurements"] else "before the deadline")
    lines += ["", f"Not measured ({why}): " + ", ".join(report["pending"])]
  return "\n".join(lines) + "\n"


def run_check(out: pathlib.Path, dry_run: bool, deadline_s: float, workers: int, peer: str,
              max_measurements: int = 0) -> dict:
  if max_measurements < 0:
    raise ValueError(f"--max_measurements={max_measurements} must be >= 0 (0: no limit)")
  started = time.perf_counter()
  out.mkdir(parents=True, exist_ok=True)
  script = peer_script(peer)
  if script is not None:
    try:
      import torch  # noqa: F401
    except ImportError:
      script = None
  items = check_list(dry_run, workers, script)
  report = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} device(s), "
                      f"{os.cpu_count()} CPU cores)", "dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M"),
            "jax": jax.__version__, "python": platform.python_version(),
            "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "(unset)"),
            "peer": str(script) if script else None, "deadline_s": deadline_s,
            "max_measurements": max_measurements, "measurements": [],
            "pending": [c.name for c in items]}
  step_s = None
  for item in items:
    left = deadline_s - (time.perf_counter() - started)
    if left < (5 if dry_run else 30) or (max_measurements and len(report["measurements"]) >= max_measurements):
      break
    entry = {"name": item.name}
    begun = time.perf_counter()
    try:
      if item.peer_args is not None:
        entry["result"] = {"rows": peer_rows(script, item.peer_args)}
      else:
        spec = dict(item.spec)
        kind = spec["kind"]
        if kind == "training":
          spec.pop("kind")
          entry["result"] = training_row(**spec, step_s=step_s, timeout=left)
        else:
          entry["result"] = _in_own_process(spec, left)
        if kind == "train_step" and spec["model"] == "resnext_unet" and step_s is None:
          step_s = entry["result"]["step_s"]
    except subprocess.TimeoutExpired:
      logging.warning("%s did not finish before the deadline; stopping", item.name)
      break  # stays pending: time ran out, nothing failed
    except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as e:
      entry["error"] = f"{type(e).__name__}: {e}"[:300]
    entry["seconds"] = time.perf_counter() - begun
    report["measurements"].append(entry)
    report["pending"].remove(item.name)
    (out / "check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "check.md").write_text(_markdown(report))
  (out / "check.json").write_text(json.dumps(report, indent=2, default=str))
  (out / "check.md").write_text(_markdown(report))
  return report


# --------------------------------------------------------------------------- table mode

def main(argv):
  del argv
  if _ONE.value:
    print(json.dumps(run_one(json.loads(_ONE.value)), default=str))
    return
  if _CHECK.value:
    if not command_flags.OUT.value:
      raise ValueError("--check needs --out=DIR")
    report = run_check(pathlib.Path(command_flags.OUT.value), _DRY_RUN.value, _DEADLINE.value, _WORKERS.value,
                       _PEER.value, _MAX_MEASUREMENTS.value)
    print((pathlib.Path(command_flags.OUT.value) / "check.md").read_text())
    failed = [m["name"] for m in report["measurements"] if "error" in m]
    if failed:
      raise SystemExit(f"error: measurements failed: {', '.join(failed)}")
    return
  print(f"# benchmarks.bench on {jax.devices()[0].device_kind} ({jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU cores), JAX {jax.__version__}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
  if _CONV.value:
    print("\n| 3x3 conv fwd+bwd, 2x64x64x256 | dense s | 32 groups s | grouped time per FLOP vs dense |")
    print("|---|---|---|---|")
    for r in conv_rows(repeats=5):
      print(f"| {r['conv']} | {r['dense_s']:.4f} | {r['grouped_s']:.4f} | {32 * r['grouped_s'] / r['dense_s']:.2f}x |")
  rows = [train_step_row(m, _DTYPE.value, _BATCH.value, _SIZE.value, impl, _STEPS.value)
          for m in command_flags.MODELS.value or ["resnext_unet"] for impl in _CONV_IMPL.value]
  script = peer_script(_PEER.value)
  peer = None
  if script is not None:
    try:
      peer = peer_rows(script, [str(_BATCH.value), str(_SIZE.value)] if "cpu" in script.name else [])
    except (subprocess.SubprocessError, OSError) as e:
      print(f"peer {script} failed: {e}", file=sys.stderr)
  peer_step = next((r["step_s"] for r in peer or [] if "step_s" in r), None)
  cpu_peer = any(r.get("peer") == "torch_cpu" for r in peer or [])  # it trains in float32 only
  print("\n| model | conv_impl | dtype | batch | size | s/step | images/s | GFLOP/image (XLA, plain form) | TFLOP/s | compile s | speed vs peer |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    comparable = r["model"] == "resnext_unet" and (r["dtype"] == "float32" or not cpu_peer)
    ratio = f"{peer_step / r['step_s']:.2f}x" if peer_step and comparable else "-"
    print(f"| {r['model']} | {r['conv_impl']} | {r['dtype']} | {r['batch']} | {r['size']} | {r['step_s']:.3f} | "
          f"{r['images_per_s']:.2f} | {r['gflop_per_image']:.1f} | {r['tflop_per_s']:.3f} | {r['compile_s']:.1f} | {ratio} |")
  if peer:
    print(f"\npeer ({script.name}, same machine, same run): " + "; ".join(json.dumps(r) for r in peer))


if __name__ == "__main__":
  cli.run(main)
