"""A trained model people can use from Python.

    from lgg_jax import Segmenter
    seg = Segmenter.load("runs/recipe_cpu")           # a run folder, an export, or a list (ensemble)
    seg = Segmenter.load("pretrained:recipe_cpu")     # the ensemble shipped with lgg_jax
    probabilities = seg.predict(volume)                # uint8 (S, 256, 256, 3), slices in order
    masks = seg.predict(volume, masks=True)            # bool, post-processed exactly as the model was scored
    assessed = seg.assess(volume)                      # masks, probabilities, uncertainty map, quality estimate

A thin wrapper over the inference layer (models loaded by `lgg_jax.loading`): normalisation, input size and 2.5-D
neighbours come from each model's own config, and masks from
`inference.postprocess` with the settings the model was scored with (a
run's summary.json, an export's inference.json: threshold, TTA, component
step), so a user gets the masks that were measured. Only parameters and
BatchNorm statistics are restored.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from lgg_jax import inference, loading, parallel, quality


@dataclasses.dataclass
class Assessment:
  """What `Segmenter.assess` returns for one patient."""
  masks: np.ndarray          # bool (S, 256, 256), post-processed as the model was scored
  probabilities: np.ndarray  # float32 (S, 256, 256)
  uncertainty: np.ndarray    # float32 (S, 256, 256): the members' spread, or the two views' for one model
  estimate: quality.Estimate


class Segmenter:
  """Probabilities and masks for a patient's slices; several models: their
  mean, with one setting for the ensemble (`inference.ensemble_settings`)."""

  def __init__(self, members: list[inference.Member], mesh=None, rule: quality.Rule | None = None,
               settings: inference.Settings | None = None):
    self.members = list(members)
    self.mesh = mesh or parallel.make_mesh()
    self.settings = settings or inference.ensemble_settings(self.members)
    self.rule = rule or (quality.DEFAULT_ENSEMBLE if len(self.members) > 1 else quality.DEFAULT_SINGLE)
    self._predictors = {}

  @classmethod
  def load(cls, path: str | os.PathLike | list, checkpoint: str = "best", **overrides) -> Segmenter:
    """Keyword overrides (threshold, tta, largest_component, ...) set the
    ensemble's settings: members that disagree on a setting need it given."""
    mesh = parallel.make_mesh()
    members = loading.load_members(path, checkpoint, mesh)
    return cls(members, mesh, loading.quality_rule(path, len(members)),
               inference.ensemble_settings(members, **overrides))

  @property
  def threshold(self) -> float:
    return self.settings.threshold

  @property
  def tta(self) -> str:
    return self.settings.tta

  def segment(self, volume: np.ndarray, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """(float32 probabilities, bool masks), each (S, 256, 256), of uint8 (S,
    256, 256, 3) slices in slice order; keyword overrides (threshold, tta,
    largest_component, component_fraction, component_rank) replace the models' settings."""
    settings = self.settings.replace(**overrides)
    probabilities = self._probabilities(volume, settings.tta)
    return probabilities, inference.postprocess(probabilities, settings)

  def _predictor(self, tta: str) -> inference.Predictor:
    if tta not in self._predictors:  # one compiled step per TTA mode
      self._predictors[tta] = inference.Predictor(self.members, self.mesh, self.settings.replace(tta=tta))
    return self._predictors[tta]

  def _probabilities(self, volume: np.ndarray, tta: str) -> np.ndarray:
    return self._predictor(tta).predict_volume(volume)

  def assess(self, volume: np.ndarray, **overrides) -> Assessment:
    """Masks, probabilities, a voxel-wise uncertainty map and the quality
    estimate of one patient (`lgg_jax.quality`). An ensemble's members are
    run one by one, as for its mean: no extra pass; a single model runs once
    more, without TTA, on the mirrored volume (its second view: with the
    dihedral TTA's own views the mirrored volume would give the same mean).
    Under other views than its rule's (`quality.Rule.tta`), the models run
    once more under the rule's, which the signals are measured from."""
    settings = self.settings.replace(**overrides)
    predictor = self._predictor(settings.tta)
    # The quality signals are measured under the views the rule was measured
    # under: with others, one more pass gives them (and its masks are judged
    # in place of the delivered ones, which differ from them by the views only).
    measured = settings.replace(tta=self.rule.tta)
    if len(self.members) > 1:
      members = predictor.member_probabilities(volume)
      probabilities = predictor.mean(members)  # what predict_volume gives, bit for bit
      masks = inference.postprocess(probabilities, settings)
      spread = quality.uncertainty(np.stack(members))
      judged, judged_masks = probabilities, masks
      if measured != settings:
        members = self._predictor(measured.tta).member_probabilities(volume)
        judged = predictor.mean(members)
        judged_masks = inference.postprocess(judged, measured)
      estimate = quality.estimate(judged, judged_masks, measured, self.rule,
                                  member_masks=[inference.postprocess(p, measured) for p in members],
                                  delivered_mask=masks)
    else:
      probabilities = predictor.predict_volume(volume)
      mirrored = self._predictor("none").mirrored_probabilities(volume)
      masks = inference.postprocess(probabilities, settings)
      spread = quality.uncertainty(np.stack([probabilities, mirrored]))
      judged, judged_masks = probabilities, masks
      if measured != settings:
        judged = self._predictor(measured.tta).predict_volume(volume)
        judged_masks = inference.postprocess(judged, measured)
      estimate = quality.estimate(judged, judged_masks, measured, self.rule,
                                  view_masks=[inference.postprocess(mirrored, measured)], delivered_mask=masks)
    return Assessment(masks, probabilities, spread, estimate)

  def predict(self, volume: np.ndarray, *, masks: bool = False, tta: str | None = None,
              threshold: float | None = None, largest_component: bool | None = None,
              component_fraction: float | None = None, component_rank: str | None = None) -> np.ndarray:
    """Probabilities, or with `masks=True` the post-processed masks."""
    if not masks:  # no post-processing to pay for
      return self._probabilities(volume, self.settings.tta if tta is None else tta)
    return self.segment(volume, tta=tta, threshold=threshold, largest_component=largest_component,
                        component_fraction=component_fraction, component_rank=component_rank)[1]
