"""How far to trust a patient's mask: a quality estimate from the model's own disagreement.

Each estimate is a number in [0, 1] meant to track the patient's Dice, made
without the truth from what the model itself says:
  view_agreement       Dice between the mask and the mask of the left-right
                       mirrored volume's prediction (one extra forward pass,
                       without TTA, for a single model)
  threshold_stability  Dice between the masks at thresholds 0.3 and 0.7: a
                       mask that moves with the threshold is a doubtful one
  confidence           mean probability inside the mask
  kept_fraction        share of the above-threshold voxels the component
                       step kept (1 without the step)
  expected_dice        soft Dice of the probabilities against the mask: the
                       Dice the mask would score if each voxel were tumour
                       with its probability, so boundary doubt weighs more
                       on a small mask than on a large one
  certainty            1 - the mean binary entropy (bits) of the
                       probabilities inside the mask and a band of BAND
                       pixels around it, where its boundary is decided
  predicted_volume     v / (v + metrics.SMALL_TUMOUR_PIXELS) for a mask of v
                       voxels: small masks score lower, as small tumours
                       score lower Dice
  member_agreement     ensembles only: the members' mean Dice against the
                       ensemble's mask
`view_and_threshold` is the smaller of the first two; `member_and_threshold`,
the smaller of member_agreement and threshold_stability. Which one a model's
estimate uses, and the score under which a mask is flagged for review
(`review_threshold`), are chosen by measurement (benchmarks/quality_estimate.py,
benchmarks/QUALITY.md) and stored with the model (`QUALITY_FILE` of an
export, the shipped ensemble's). A mask of fewer than `MIN_VOXELS` voxels is
"no tumour found": score 0, always flagged.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import scipy.ndimage as ndi

from lgg_jax import inference, metrics, registry

QUALITY_FILE = "quality.json"
MIN_VOXELS = 50  # a mask smaller than this (at 256x256) is reported as "no tumour found"
LOW, HIGH = 0.3, 0.7  # the thresholds of threshold_stability
BAND = 3  # pixels around the mask, in-plane, where certainty is also measured
SINGLE_MODEL_SIGNALS = ("view_agreement", "threshold_stability", "view_and_threshold", "confidence",
                        "kept_fraction", "expected_dice", "certainty", "predicted_volume")
SIGNALS = SINGLE_MODEL_SIGNALS + ("member_agreement", "member_and_threshold")


@dataclasses.dataclass(frozen=True)
class Rule:
  """Which signal is the estimate, and the score under which a mask is flagged.
  `tta`: the test-time views the signals were measured under. Under other
  views they are other quantities (dihedral TTA softens the probabilities,
  so threshold_stability drops and good masks were flagged), so
  `Segmenter.assess` measures them under this one."""
  signal: str = "view_and_threshold"
  review_threshold: float = 0.7
  source: str = "default"  # where the rule was measured
  tta: str = "none"

  def __post_init__(self):
    if self.signal not in SIGNALS:
      raise ValueError(f"quality signal: want one of {SIGNALS}, got {self.signal!r}")
    if not 0.0 <= self.review_threshold <= 1.0:
      raise ValueError(f"review_threshold: want a score in [0, 1], got {self.review_threshold}")
    if self.tta not in registry.names("tta"):
      raise ValueError(f"quality rule tta: want one of {registry.names('tta')}, got {self.tta!r}")

  @classmethod
  def load(cls, folder) -> Rule | None:
    """A model folder's rule (its QUALITY_FILE), or None when it has none."""
    path = pathlib.Path(folder) / QUALITY_FILE
    if not path.is_file():
      return None
    try:
      saved = json.loads(path.read_text())
      # Rules written before they named their views were all measured without TTA.
      return cls(str(saved["signal"]), float(saved["review_threshold"]), str(saved.get("source", "")),
                 str(saved.get("tta", "none")))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a quality rule ({e}); want signal and review_threshold") from e

  def save(self, folder) -> pathlib.Path:
    path = pathlib.Path(folder) / QUALITY_FILE
    path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
    return path


# Used where a model carries no quality.json: measured rules live in
# benchmarks/QUALITY.md ("Which masks to doubt") with their commands.
DEFAULT_SINGLE = Rule("view_and_threshold", 0.9174, "benchmarks/quality_estimate.py: the configs/recipe_cpu.py "
                      "fold models cross-validated on the 62 dev patients")
DEFAULT_ENSEMBLE = Rule("member_agreement", 0.7, "default: not measured for this ensemble")


@dataclasses.dataclass(frozen=True)
class Estimate:
  score: float
  review: bool
  reason: str
  predicted_voxels: int
  signals: dict

  def as_row(self) -> dict:
    return {"quality": round(self.score, 4), "review": self.review, "review_reason": self.reason,
            "predicted_voxels": self.predicted_voxels}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  return float(metrics.dice_from_counts((a & b).sum(), a.sum(), b.sum()))


def _certainty(probabilities: np.ndarray, mask: np.ndarray) -> float:
  if not mask.any():
    return 0.0
  in_plane = np.zeros((3, 3, 3), bool)
  in_plane[1] = ndi.generate_binary_structure(2, 1)
  region = ndi.binary_dilation(mask, in_plane, iterations=BAND)
  p = np.clip(probabilities[region].astype(np.float64), 1e-7, 1 - 1e-7)
  entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  return float(1.0 - entropy.mean())


def signals(probabilities: np.ndarray, mask: np.ndarray, settings: inference.Settings,
            view_masks: list[np.ndarray] = (), member_masks: list[np.ndarray] = ()) -> dict:
  """Every signal that the inputs allow, each in [0, 1]; `view_masks`: the
  post-processed masks of other views (mirrored passes); `member_masks`: an
  ensemble's members' post-processed masks."""
  probabilities, mask = np.asarray(probabilities), np.asarray(mask, bool)
  above = probabilities >= settings.threshold
  out = {"threshold_stability": _dice(probabilities >= LOW, probabilities >= HIGH),
         "confidence": float(probabilities[mask].mean()) if mask.any() else 0.0,
         "kept_fraction": float(mask.sum() / above.sum()) if above.any() else 1.0,
         "expected_dice": float(2 * probabilities[mask].sum() / max(probabilities.sum() + mask.sum(), 1e-9)),
         "certainty": _certainty(probabilities, mask),
         "predicted_volume": float(mask.sum() / (mask.sum() + metrics.SMALL_TUMOUR_PIXELS))}
  if len(view_masks):
    out["view_agreement"] = float(np.mean([_dice(mask, v) for v in view_masks]))
    out["view_and_threshold"] = min(out["view_agreement"], out["threshold_stability"])
  if len(member_masks):
    out["member_agreement"] = float(np.mean([_dice(mask, m) for m in member_masks]))
    out["member_and_threshold"] = min(out["member_agreement"], out["threshold_stability"])
  return out


def estimate(probabilities: np.ndarray, mask: np.ndarray, settings: inference.Settings, rule: Rule,
             view_masks: list[np.ndarray] = (), member_masks: list[np.ndarray] = (),
             delivered_mask: np.ndarray | None = None) -> Estimate:
  """The rule's estimate and flag for one patient's mask. `delivered_mask`:
  the mask the user gets, where the signals come from another pass (the
  rule's views); its size decides "no tumour found"."""
  found = signals(probabilities, mask, settings, view_masks, member_masks)
  voxels = int(np.asarray(mask if delivered_mask is None else delivered_mask).sum())
  if voxels < MIN_VOXELS:
    return Estimate(0.0, True, f"no tumour found (mask of {voxels} voxels, under {MIN_VOXELS})", voxels, found)
  if rule.signal not in found:
    raise ValueError(f"quality signal {rule.signal!r} needs "
                     + ("an ensemble's members" if rule.signal.startswith("member") else "a mirrored view"))
  score = float(np.clip(found[rule.signal], 0.0, 1.0))
  review = score < rule.review_threshold
  reason = (f"{rule.signal.replace('_', ' ')} {score:.2f} < {rule.review_threshold:.2f}" if review else "")
  return Estimate(score, review, reason, voxels, found)


FAILURE_DICE = 0.7  # what the review flag is meant to find


def summarise(scores, dice, review) -> dict:
  """How the estimates of scored patients track their true Dice: Spearman
  rho, ROC AUC for finding Dice < FAILURE_DICE, and the shares flagged."""
  scores, dice, review = np.asarray(scores, float), np.asarray(dice, float), np.asarray(review, bool)
  failed = dice < FAILURE_DICE
  out = {"patients": int(len(dice)), "below_0.7": int(failed.sum()), "flagged": int(review.sum()),
         "flagged_share": float(review.mean()) if len(dice) else float("nan"),
         "failures_flagged_share": float(review[failed].mean()) if failed.any() else float("nan"),
         "spearman_rho": float("nan"), "roc_auc": float("nan")}
  if len(dice) > 2 and np.ptp(scores) > 0 and np.ptp(dice) > 0:
    import scipy.stats  # pylint: disable=import-outside-toplevel  # 1.5 s; only measurement needs it
    out["spearman_rho"] = float(scipy.stats.spearmanr(scores, dice).statistic)
  if failed.any() and (~failed).any():
    wins = (scores[failed][:, None] < scores[~failed][None]).mean() + \
        0.5 * (scores[failed][:, None] == scores[~failed][None]).mean()
    out["roc_auc"] = float(wins)
  return out


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
  """Voxel-wise spread (standard deviation) of (K, S, H, W) probabilities of
  members or views: float32 (S, H, W)."""
  return np.asarray(probabilities, np.float32).std(axis=0)
