import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lgg_jax import losses, metrics


def _loss_config(name="dice_bce", **block):
  return ml_collections.ConfigDict({"name": name, name: block})


def test_dice_bce_against_hand_computation():
  logits = jnp.array([0.0, 2.0, -2.0, 0.0]).reshape(1, 2, 2, 1)
  masks = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
  p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -2.0, 0.0])))
  y = np.array([1.0, 1.0, 0.0, 0.0])
  bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
  dice = (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
  got = losses.per_sample_loss(logits, masks, _loss_config(bce_weight=0.3, dice_weight=2.0))
  np.testing.assert_allclose(got, [0.3 * bce + 2.0 * (1 - dice)], rtol=1e-5)


def test_bce_and_dice_alone_against_hand_computation():
  logits = jnp.array([0.5, 1.5, -1.0, -3.0]).reshape(1, 2, 2, 1)
  masks = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  p = 1 / (1 + np.exp(-np.array([0.5, 1.5, -1.0, -3.0])))
  y = np.array([1.0, 0.0, 1.0, 0.0])
  bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
  dice = (2 * (p * y).sum() + 0.25) / (p.sum() + y.sum() + 0.25)
  np.testing.assert_allclose(losses.per_sample_loss(logits, masks, _loss_config("bce")), [bce], rtol=1e-5)
  np.testing.assert_allclose(losses.per_sample_loss(logits, masks, _loss_config("dice", smooth=0.25)), [1 - dice],
                             rtol=1e-5)
  probs = jnp.asarray(p.reshape(1, 2, 2))
  np.testing.assert_allclose(losses.probability_loss(probs, masks[..., 0], _loss_config("dice", smooth=0.25)),
                             [1 - dice], rtol=1e-5)


def test_soft_dice_on_empty_truth_rewards_predicting_nothing():
  masks = jnp.zeros((2, 4, 4, 1))
  logits = jnp.stack([jnp.full((4, 4, 1), -20.0), jnp.full((4, 4, 1), 20.0)])
  dice = losses.soft_dice(logits, masks, smooth=1.0)
  assert dice[0] > 0.99 and dice[1] < 0.1


def test_unknown_loss_is_named():
  with pytest.raises(ValueError, match="config.loss.name: unknown value 'focal'"):
    losses.per_sample_loss(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), _loss_config("focal"))


def _counts(pred, true):
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  axes = tuple(range(1, pred.ndim))
  return {"intersection": (pred & true).sum(axes), "predicted": pred.sum(axes), "true": true.sum(axes)}


def test_slice_counts_threshold_logits():
  logits = jnp.array([[3.0, -3.0], [0.1, -0.1]]).reshape(1, 2, 2, 1)
  masks = jnp.array([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 2, 1)
  c = metrics.slice_counts(logits, masks, threshold=0.5)
  assert (int(c["intersection"][0]), int(c["predicted"][0]), int(c["true"][0])) == (1, 2, 2)


def test_slice_dice_and_empty_rule():
  pred = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
  true = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
  d = metrics.dice_from_counts(**_counts(pred, true))
  # 2*1/(2+1); both empty -> 1; prediction on empty truth -> 0; missed -> 0.
  np.testing.assert_allclose(d, [2 / 3, 1.0, 0.0, 0.0])


def test_patient_dice_is_volumetric_not_mean_of_slices():
  # Patient a: slice 1 perfect (2 px), slice 2 misses 1 px entirely.
  pred = [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
  true = [[1, 1, 0], [0, 0, 1], [1, 1, 1]]
  counts = _counts(pred, true)
  ids = np.array(["a", "a", "b"])
  per_patient = metrics.per_patient_dice(ids, counts)
  assert per_patient["a"] == pytest.approx(2 * 2 / (2 + 3))  # volume: 4/5, slice mean would be 0.5
  assert per_patient["b"] == 1.0
  s = metrics.summarise(ids, counts)
  assert s["patient_dice"] == pytest.approx((0.8 + 1.0) / 2)
  assert s["tumour_slice_dice"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
  assert s["pooled_dice"] == pytest.approx(2 * 5 / (5 + 6))
  assert s["empty_false_positive_rate"] == 0.0  # no tumour-free slices here


def test_false_positive_rate_on_tumour_free_slices():
  pred = [[0, 0], [1, 0], [0, 0], [1, 1]]
  true = [[0, 0], [0, 0], [0, 0], [1, 1]]
  s = metrics.summarise(np.array(["a"] * 4), _counts(pred, true))
  assert s["empty_false_positive_rate"] == pytest.approx(1 / 3)
