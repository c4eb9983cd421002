"""The one path from weights to probabilities to masks.

A `Member` is one trained model ready for inference (its config, eval
graphdef, variables and the `Settings` it was scored with). A `Predictor`
turns a patient's uint8 slices (S, 256, 256, 3), in slice order, into
float32 probabilities (S, 256, 256): each member preprocesses the volume as
it was trained (`preprocess.model_inputs`: size, normalisation, 2.5-D
neighbours), runs it in global batches over every device (each process
feeding its rows), maps each TTA view back, and upsamples to 256x256; an
ensemble averages its members' probabilities. `postprocess` is the one
function from probabilities to masks (threshold, then the component step).
Evaluation, prediction, the Segmenter, exports, reports and the trainer's
validation all go through here, so the masks a user gets are the masks that
were scored.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

from lgg_jax import choices, metrics, parallel, registry, state
from lgg_jax.data import preprocess

_TAIL_QUANTUM = 8  # rows the last batch of a patient is rounded up to
COMPONENT_RANKS = choices.COMPONENT_RANKS


_CASTS = {"float": float, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class Settings:
  """How probabilities become masks, and the TTA that makes them.

  largest_component keeps each patient's largest 3-D component (faces
  touching, slices in order); with component_fraction > 0 it also keeps every
  component of at least that fraction of the largest (multi-focal tumours),
  so 0 means the largest alone. component_rank says what "largest" means:
  "volume" (voxels), or the model's confidence, "probability_sum" (the
  component's summed probability) or "probability_max" (its most confident
  voxel), so that a large but doubtful false positive need not outrank a
  confident tumour.
  """
  threshold: float = 0.5
  tta: str = "none"
  largest_component: bool = False
  component_fraction: float = 0.0
  component_rank: str = "volume"

  def __post_init__(self):
    if self.tta not in registry.names("tta"):
      raise ValueError(f"inference tta: want one of {registry.names('tta')}, got {self.tta!r}")
    if not 0.0 <= self.component_fraction <= 1.0:
      raise ValueError(f"inference component_fraction: want a fraction in [0, 1], got {self.component_fraction}")
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"inference threshold: want a probability in (0, 1), got {self.threshold}")
    if self.component_rank not in COMPONENT_RANKS:
      raise ValueError(f"inference component_rank: want one of {COMPONENT_RANKS}, got {self.component_rank!r}")

  @classmethod
  def from_config(cls, config, threshold: float | None = None) -> Settings:
    """A config's `inference` block (its threshold unless one is given)."""
    inf = config.inference
    return cls(float(config.inference.threshold if threshold is None else threshold), str(inf.tta),
               bool(inf.largest_component), float(inf.get("component_fraction", 0.0)),
               str(inf.get("component_rank", "volume")))

  @classmethod
  def from_dict(cls, saved: dict, fallback: Settings) -> Settings:
    """Settings saved as JSON (summary.json's or inference.json's block); keys it lacks take `fallback`'s."""
    return fallback.replace(**{k: saved[k] for k in cls.names() if saved.get(k) is not None})

  def replace(self, **overrides) -> Settings:
    """These settings with every override that is not None."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(self.names())
    if unknown:
      raise ValueError(f"unknown inference settings {sorted(unknown)}; known: {list(self.names())}")
    types = {f.name: f.type for f in dataclasses.fields(self)}  # "float", ...: annotations are strings here
    return dataclasses.replace(self, **{k: _CASTS[types[k]](v) for k, v in overrides.items()})

  @classmethod
  def names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the probability step

def upsample_probabilities(probs: jax.Array, size: int) -> jax.Array:
  """(N, h, w) -> (N, size, size), bilinear (half-pixel centres, as
  cv2.INTER_LINEAR): how every score reaches the dataset's 256x256."""
  if probs.shape[1:] == (size, size):
    return probs
  return jax.image.resize(probs, (probs.shape[0], size, size), "linear")


@functools.lru_cache(maxsize=8)
def upsample_matrix(size: int, out_size: int) -> jax.Array:
  """(out_size, size) matrix M with M @ p @ M.T = upsample_probabilities(p):
  column j is the resize of the j-th unit vector. The ONNX graph upsamples
  this way (jax.image.resize does not convert with a symbolic batch)."""
  basis = jnp.eye(size, dtype=jnp.float32)[None]
  return jax.image.resize(basis, (1, out_size, size), "linear")[0]


# Test-time views, registered by name (registry "tta"): (forward, inverse)
# pairs on the spatial axes of NHWC arrays.
_IDENTITY = (lambda x: x, lambda x: x)


def no_views():
  return [_IDENTITY]


def flip_views():
  hflip = lambda x: jnp.flip(x, axis=2)
  vflip = lambda x: jnp.flip(x, axis=1)
  return [_IDENTITY, (hflip, hflip), (vflip, vflip)]


def dihedral_views():
  transpose = lambda x: jnp.swapaxes(x, 1, 2)
  views = []
  for k in range(4):
    rot = functools.partial(jnp.rot90, k=k, axes=(1, 2))
    unrot = functools.partial(jnp.rot90, k=-k, axes=(1, 2))
    views.append((rot, unrot))
    views.append((lambda x, rot=rot: rot(transpose(x)), lambda y, unrot=unrot: transpose(unrot(y))))
  return views


@functools.lru_cache(maxsize=32)
def make_probability_step(graphdef, tta: str = "none", out_size: int = 256):
  """jit(variables, images) -> sigmoid probabilities (N, out_size, out_size),
  averaged over the TTA views (each mapped back before averaging), then
  upsampled. Built once per (graphdef, tta, size)."""
  views = registry.get("tta", tta)()

  @jax.jit
  def probabilities(variables, images):
    model = state.merge(graphdef, variables["params"], variables["model_state"])
    total = 0.0
    for forward, inverse in views:
      total = total + inverse(jax.nn.sigmoid(model(forward(images))))
    return upsample_probabilities(total[..., 0] / len(views), out_size)

  return probabilities


# --------------------------------------------------------------------------- masks

def validation_settings(config) -> Settings:
  """The trainer's per-epoch validation: the config's threshold, no TTA, no
  component step, so checkpoint selection and training time do not depend on
  the inference options being measured."""
  return Settings(float(config.inference.threshold))


def component_scores(labels: np.ndarray, sizes: np.ndarray, rank: str = "volume",
                     probabilities: np.ndarray | None = None) -> np.ndarray:
  """Each component's score under `rank` (COMPONENT_RANKS), components 1..n in order."""
  if rank == "volume":
    return np.asarray(sizes, np.float64)
  if probabilities is None:
    raise ValueError(f"component_rank={rank!r} ranks components by the model's probabilities: give them")
  index = np.arange(1, sizes.size + 1)
  reduce = ndi.sum_labels if rank == "probability_sum" else ndi.maximum
  return np.asarray(reduce(np.asarray(probabilities, np.float64), labels, index), np.float64)


def keep_components(mask: np.ndarray, fraction: float = 0.0, rank: str = "volume",
                    probabilities: np.ndarray | None = None) -> np.ndarray:
  """The top 3-D component of an ordered volume by `rank` (its voxels, or
  its probabilities' sum or maximum), and with `fraction` > 0 every component
  scoring at least `fraction` times the top one's score."""
  labels, sizes = metrics.components(mask)
  if sizes.size <= 1:
    return np.asarray(mask, bool)
  scores = component_scores(labels, sizes, rank, probabilities)
  keep = scores >= fraction * scores.max() if fraction > 0 else np.arange(sizes.size) == int(np.argmax(scores))
  return np.concatenate([[False], keep])[labels]


def postprocess(probabilities: np.ndarray, settings: Settings) -> np.ndarray:
  """Probabilities (S, 256, 256) of one patient, slices in order -> bool masks."""
  mask = np.asarray(probabilities) >= settings.threshold
  if settings.largest_component:
    mask = keep_components(mask, settings.component_fraction, settings.component_rank, probabilities)
  return mask


def ensemble_settings(members: list, **overrides) -> Settings:
  """One setting for the whole ensemble: each field is the override when one
  is given, else the members' shared value; members that disagree on a field
  nobody overrode are an error naming them (an average threshold or a
  majority TTA would be a model that nobody scored)."""
  chosen = {}
  for field in Settings.names():
    if overrides.get(field) is not None:
      continue
    values = {m.source or f"member {i}": getattr(m.settings, field) for i, m in enumerate(members)}
    if len(set(values.values())) > 1:
      raise ValueError(f"the ensemble's members disagree on inference {field} ("
                       + ", ".join(f"{k}: {v}" for k, v in values.items())
                       + f"); give one {field} for the ensemble")
    chosen[field] = next(iter(values.values()))
  return Settings(**chosen).replace(**overrides)


@dataclasses.dataclass
class Member:
  config: object      # the run's ConfigDict
  graphdef: object    # eval graphdef
  variables: dict     # {"params": ..., "model_state": ...}, replicated over the mesh
  step: int | None = None
  source: str = ""    # where it came from (a run folder, an export)
  settings: Settings | None = None  # what it was scored with; None: its config's

  def __post_init__(self):
    if self.settings is None:
      self.settings = Settings.from_config(self.config)

  @property
  def threshold(self) -> float:
    return self.settings.threshold


class Predictor:
  """Probabilities at 256x256 from one or several members (their mean), and
  masks from them with one `Settings` (default: the members' own, see
  `ensemble_settings`)."""

  def __init__(self, members: Member | list[Member], mesh=None, settings: Settings | None = None):
    self.members = [members] if isinstance(members, Member) else list(members)
    if not self.members:
      raise ValueError("a Predictor needs at least one trained model")
    self.mesh = mesh or parallel.make_mesh()
    self.settings = settings or ensemble_settings(self.members)
    self._steps = [make_probability_step(m.graphdef, self.settings.tta, preprocess.SOURCE_SIZE)
                   for m in self.members]

  def _chunks(self, member: Member, count: int) -> list[int]:
    """Batch sizes covering `count` slices: full eval batches, then a last
    one rounded up to a multiple of 8 rows (and of the devices) rather than
    to a whole batch (a 40-slice patient in batches of 32 computed 64)."""
    devices = self.mesh.devices.size
    batch = -(-member.config.eval_batch_size // devices) * devices
    quantum = min(batch, -(-_TAIL_QUANTUM // devices) * devices)
    full, rest = divmod(count, batch)
    return [batch] * full + ([min(batch, -(-rest // quantum) * quantum)] if rest else [])

  def _member_probabilities(self, member: Member, step, inputs: np.ndarray) -> np.ndarray:
    count = len(inputs)
    sizes = self._chunks(member, count)
    inputs = np.concatenate([inputs, np.zeros((sum(sizes) - count,) + inputs.shape[1:], inputs.dtype)])
    out, start = [], 0
    for size in sizes:
      chunk = parallel.global_batch({"image": inputs[start:start + size][parallel.local_rows(size)]}, self.mesh)
      out.append(parallel.to_host(step(member.variables, chunk["image"])))
      start += size
    return np.concatenate(out)[:count]

  def predict_volume(self, volume: np.ndarray) -> np.ndarray:
    """uint8 (S, 256, 256, 3) slices in slice order -> float32 (S, 256, 256)."""
    return self.mean(self.member_probabilities(volume))

  @staticmethod
  def mean(member_probabilities: list[np.ndarray]) -> np.ndarray:
    """The ensemble's probabilities: its members' summed in order, then divided."""
    total = np.zeros_like(member_probabilities[0])
    for probabilities in member_probabilities:
      total += probabilities
    return total / len(member_probabilities)

  def member_probabilities(self, volume: np.ndarray) -> list[np.ndarray]:
    """Each member's float32 (S, 256, 256) probabilities, before the ensemble's mean."""
    volume = np.asarray(volume)
    if volume.ndim != 4 or volume.shape[1:] != (preprocess.SOURCE_SIZE, preprocess.SOURCE_SIZE, 3):
      raise ValueError(f"expected uint8 slices (S, 256, 256, 3) in slice order, got shape {volume.shape}")
    if volume.dtype != np.uint8:
      raise ValueError(f"expected uint8 slices, got dtype {volume.dtype}")
    return [self._member_probabilities(member, step, preprocess.model_inputs(volume, member.config.data))
            for member, step in zip(self.members, self._steps)]

  def mirrored_probabilities(self, volume: np.ndarray) -> np.ndarray:
    """The probabilities of the left-right mirrored volume, mirrored back: a
    second view of the patient for the quality estimate when there is no TTA."""
    return self.predict_volume(np.ascontiguousarray(np.asarray(volume)[:, :, ::-1]))[:, :, ::-1]

  def masks(self, probabilities: np.ndarray) -> np.ndarray:
    return postprocess(probabilities, self.settings)

  def segment(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, post-processed masks) of one patient's ordered slices."""
    probabilities = self.predict_volume(volume)
    return probabilities, self.masks(probabilities)

  def predict_patients(self, data, patients: Iterable[str], cache: bool = False
                       ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(patient, probabilities, truth) for each patient of a prepared dataset,
    slices in order. Every process must iterate the same patients."""
    for patient in patients:
      volume, truth = data.volume(patient, cache=cache)
      yield patient, self.predict_volume(volume), truth
