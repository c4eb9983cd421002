"""End-to-end runs of `python -m lgg_jax.main` in subprocesses: preemption,
kill -9, and 2 processes x 2 CPU devices against 1 process x 4."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "lgg_jax.main", f"--config={REPO / 'tests' / 'tiny_config.py'}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *extra]


def _run(workdir, data_dir, devices=8, *extra):
  result = subprocess.run(_command(workdir, data_dir, *extra), cwd=REPO, env=_env(devices),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _final_params(workdir):
  """The last checkpoint's parameters, read on this process's first device
  (the checkpoint may come from another device topology)."""
  import jax
  import orbax.checkpoint as ocp
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return step, checkpointer.restore(path, target)["params"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("uninterrupted")
  result = _run(root / "run", root / "cache")
  (root / "terminal.txt").write_text(result.stdout + result.stderr)
  return root / "run", root / "cache"


@pytest.mark.slow
def test_terminal_shows_progress_and_epochs_not_library_chatter(uninterrupted):
  workdir, _ = uninterrupted
  terminal = (workdir.parent / "terminal.txt").read_text()
  assert "epoch   1" in terminal and "done: val per-patient Dice" in terminal and "step/s" in terminal
  info = [line for line in terminal.splitlines() if re.match(r"I\d{4} ", line)]
  assert info == [], info[:5]  # absl INFO lines (Orbax, JAX, ours) go to log.txt
  log = (workdir / "log.txt").read_text()
  assert "orbax" in log.lower() and "steps per epoch" in log


def _wait_for(predicate, proc, timeout=300):
  start = time.time()
  while not predicate():
    assert proc.poll() is None, f"training exited early with status {proc.returncode}"
    assert time.time() - start < timeout
    time.sleep(0.05)


def _start(workdir, cache, log):
  """A training subprocess writing to a file (a full pipe would stall it)."""
  return subprocess.Popen(_command(workdir, cache), cwd=REPO, env=_env(8), stdout=open(log, "w"),
                          stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_saves_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
  reference, cache = uninterrupted
  workdir, log = tmp_path / "run", tmp_path / "run.log"
  proc = _start(workdir, cache, log)
  # Wait until training is under way (first epoch logged), then preempt.
  _wait_for(lambda: (workdir / "metrics.jsonl").exists() and (workdir / "metrics.jsonl").read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  out = log.read_text()
  assert proc.returncode == 0, out[-3000:]
  assert "preempted (SIGTERM): saved step" in out
  saved = int(out.split("saved step ")[1].split(";")[0])
  assert (workdir / "checkpoints" / str(saved)).is_dir()
  _run(workdir, cache)
  assert _records(workdir) == _records(reference)
  (step_a, a), (step_b, b) = _final_params(reference), _final_params(workdir)
  assert step_a == step_b
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_from_last_complete_checkpoint(uninterrupted, tmp_path):
  reference, cache = uninterrupted
  workdir = tmp_path / "run"
  proc = _start(workdir, cache, tmp_path / "run.log")
  # Kill while the first checkpoint may be half-written.
  _wait_for(lambda: (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()), proc)
  proc.kill()
  proc.wait()
  # Orbax renames a save into its numbered folder once it is whole.
  finished = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  _run(workdir, cache)
  assert _records(workdir) == _records(reference)
  log = (workdir / "log.txt").read_text()
  if finished:  # it resumed from the last whole save, not from scratch
    assert f"at step {finished[-1]}" in log and "resumed from" in log, log[-2000:]
  else:
    assert "resumed from" not in log


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  cache = tmp_path / "cache"
  single = tmp_path / "single"
  # SGD: Adam divides by sqrt(v), turning the last-bit differences between
  # an in-process and a cross-process all-reduce into visible ones where a
  # gradient is ~0; the equivalence under test is of the data parallelism.
  same = ("--config.num_epochs=2", "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.05")
  _run(single, cache, 4, *same)
  multi = tmp_path / "multi"
  port = _free_port()
  # Output to files: a full pipe would stall one process and time out the
  # other at JAX's shutdown barrier.
  logs = [open(tmp_path / f"process{i}.log", "w") for i in range(2)]
  procs = [subprocess.Popen(
      _command(multi, cache, *same, "--config.distributed.enabled=True",
               f"--config.distributed.coordinator_address=localhost:{port}",
               "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
      cwd=REPO, env=_env(2), stdout=logs[i], stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for i, p in enumerate(procs):
    p.wait(timeout=600)
    logs[i].close()
    assert p.returncode == 0, (tmp_path / f"process{i}.log").read_text()[-3000:]
  import jax
  (s1, a), (s2, b) = _final_params(single), _final_params(multi)
  assert s1 == s2
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  ra, rb = _records(single), _records(multi)
  assert [r["step"] for r in ra] == [r["step"] for r in rb]
  np.testing.assert_allclose([r["val_dice"] for r in ra], [r["val_dice"] for r in rb], rtol=1e-5)


def test_a_half_given_manual_launch_is_an_error_before_jax_distributed_starts():
  """num_processes and process_id without the coordinator's address used to be
  ignored silently (JAX then looked for a cluster); the address without them
  is refused too."""
  from configs import default
  from lgg_jax import train
  config = default.get_config()
  config.distributed.enabled = True
  config.distributed.num_processes, config.distributed.process_id = 2, 1
  with pytest.raises(ValueError, match="num_processes and process_id need coordinator_address"):
    train.initialize_distributed(config)
  config.distributed.coordinator_address, config.distributed.num_processes = "127.0.0.1:1234", 0
  with pytest.raises(ValueError, match="coordinator_address needs num_processes and process_id"):
    train.initialize_distributed(config)
