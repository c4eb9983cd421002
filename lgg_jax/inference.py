"""The one loop from weights to probabilities.

A `Member` is one trained model ready for inference (its config, eval
graphdef and variables). A `Predictor` turns a patient's uint8 slices (S,
256, 256, 3), in slice order, into float32 probabilities (S, 256, 256): each
member preprocesses the volume as it was trained (`preprocess.model_inputs`:
size, normalisation, 2.5-D neighbours), runs it in global batches over every
device (each process feeding its rows), maps each TTA view back, and
upsamples to 256x256; an ensemble averages its members' probabilities.
Evaluation, prediction, the Segmenter, reports and the trainer's validation
all go through here.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np

from lgg_jax import parallel, state, steps
from lgg_jax.data import preprocess


@dataclasses.dataclass
class Member:
  config: object      # the run's ConfigDict
  graphdef: object    # eval graphdef
  variables: dict     # {"params": ..., "model_state": ...}, replicated over the mesh
  step: int | None = None
  source: str = ""    # where it came from (a run folder, an export)
  threshold: float | None = None  # the probability threshold it was validated with

  def __post_init__(self):
    if self.threshold is None:
      self.threshold = float(self.config.threshold)


def member_from_run(workdir, checkpoint: str = "best", mesh=None) -> Member:
  """A run's checkpoint, with the threshold the run chose on its validation
  patients (summary.json) or else its config's."""
  config, graphdef, variables, step = state.restore_variables(workdir, checkpoint, mesh)
  summary = pathlib.Path(workdir) / "summary.json"
  threshold = None
  if summary.is_file():
    threshold = json.loads(summary.read_text()).get("inference", {}).get("threshold")
  return Member(config, graphdef, variables, step, str(workdir), threshold)


class Predictor:
  """Probabilities at 256x256 from one or several members (their mean)."""

  def __init__(self, members: Member | list[Member], mesh=None, tta: str = "none"):
    self.members = [members] if isinstance(members, Member) else list(members)
    if not self.members:
      raise ValueError("a Predictor needs at least one trained model")
    self.mesh = mesh or parallel.make_mesh()
    self.tta = tta
    self._steps = [steps.make_probability_step(m.graphdef, tta, preprocess.SOURCE_SIZE) for m in self.members]

  def _batch_size(self, member: Member) -> int:
    devices = self.mesh.devices.size
    return -(-member.config.eval_batch_size // devices) * devices

  def _member_probabilities(self, member: Member, step, inputs: np.ndarray) -> np.ndarray:
    batch, count = self._batch_size(member), len(inputs)
    padded = -(-count // batch) * batch
    inputs = np.concatenate([inputs, np.zeros((padded - count,) + inputs.shape[1:], inputs.dtype)])
    rows = parallel.local_rows(batch)
    out = []
    for start in range(0, padded, batch):
      chunk = parallel.global_batch({"image": inputs[start:start + batch][rows]}, self.mesh)
      out.append(parallel.to_host(step(member.variables, chunk["image"])))
    return np.concatenate(out)[:count]

  def predict_volume(self, volume: np.ndarray) -> np.ndarray:
    """uint8 (S, 256, 256, 3) slices in slice order -> float32 (S, 256, 256)."""
    volume = np.asarray(volume)
    if volume.ndim != 4 or volume.shape[1:] != (preprocess.SOURCE_SIZE, preprocess.SOURCE_SIZE, 3):
      raise ValueError(f"expected uint8 slices (S, 256, 256, 3) in slice order, got shape {volume.shape}")
    if volume.dtype != np.uint8:
      raise ValueError(f"expected uint8 slices, got dtype {volume.dtype}")
    total = np.zeros((len(volume),) + volume.shape[1:3], np.float32)
    for member, step in zip(self.members, self._steps):
      inputs = preprocess.model_inputs(volume, member.config.data)
      total += self._member_probabilities(member, step, inputs)
    return total / len(self.members)

  def predict_patients(self, data, patients: Iterable[str], cache: bool = False
                       ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(patient, probabilities, truth) for each patient of a prepared dataset,
    slices in order. Every process must iterate the same patients."""
    for patient in patients:
      volume, truth = data.volume(patient, cache=cache)
      yield patient, self.predict_volume(volume), truth
