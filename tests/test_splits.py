import numpy as np
import pytest

from lgg_jax.data import splits


def _records(n_patients=23, seed=0):
  rng = np.random.default_rng(seed)
  ids, tumour = [], []
  for p in range(n_patients):
    n = int(rng.integers(5, 15))
    frac = rng.uniform(0.1, 0.7)
    ids += [f"P{p:03d}"] * n
    tumour += list(rng.random(n) < frac)
  return np.array(ids), np.array(tumour)


def test_patient_split_has_no_overlap_and_covers_everything():
  ids, tumour = _records()
  s = splits.make_split(ids, tumour, num_folds=5, fold=2, val_fraction=0.2, seed=1)
  sets = [set(ids[getattr(s, name)]) for name in ("train", "val", "test")]
  assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
  assert sorted(np.concatenate([s.train, s.val, s.test])) == list(range(len(ids)))
  assert sets[2] == set(s.patients["test"])


def test_same_seed_same_split_other_seed_other_split():
  ids, tumour = _records()
  a = splits.make_split(ids, tumour, seed=4)
  b = splits.make_split(ids, tumour, seed=4)
  c = splits.make_split(ids, tumour, seed=5)
  assert a.patients == b.patients
  assert a.patients != c.patients
  # Depends on the patients, not on the order records come in.
  perm = np.random.default_rng(0).permutation(len(ids))
  d = splits.make_split(ids[perm], tumour[perm], seed=4)
  assert d.patients == a.patients


def test_folds_partition_patients_and_are_stratified():
  ids, tumour = _records(n_patients=40)
  tests = [set(splits.make_split(ids, tumour, num_folds=5, fold=k).patients["test"]) for k in range(5)]
  assert set().union(*tests) == set(ids)
  assert sum(len(t) for t in tests) == len(set(ids))
  fractions = {p: tumour[ids == p].mean() for p in set(ids)}
  fold_means = [np.mean([fractions[p] for p in t]) for t in tests]
  overall = np.mean(list(fractions.values()))
  # Stratified: each fold's mean tumour fraction is close to the overall one.
  assert max(abs(m - overall) for m in fold_means) < 0.06


def test_slice_protocol_leaks_patients_across_splits():
  ids, tumour = _records()
  s = splits.make_split(ids, tumour, protocol="slice")
  assert set(ids[s.train]) & set(ids[s.test])  # the leak the ablation measures


@pytest.mark.parametrize("kwargs,message", [
    (dict(fold=5), "config.split.fold"), (dict(num_folds=1), "num_folds"),
    (dict(val_fraction=0.0), "val_fraction"), (dict(protocol="random"), "protocol")])
def test_bad_split_settings_are_named(kwargs, message):
  ids, tumour = _records()
  with pytest.raises(ValueError, match=message):
    splits.make_split(ids, tumour, **kwargs)


@pytest.mark.parametrize("protocol", ["patient", "slice"])
def test_a_validation_fraction_leaving_no_training_data_is_an_error(protocol):
  """8 patients, 5 folds, val_fraction 0.95 (patients; 0.999 slices) gave an empty training split, which
  failed later in the input pipeline with an unrelated concatenate error."""
  ids, tumour = _records(n_patients=8)
  fraction = {"patient": 0.95, "slice": 0.999}[protocol]
  with pytest.raises(ValueError, match=rf"config.split.val_fraction={fraction} leaves no training"):
    splits.make_split(ids, tumour, protocol=protocol, val_fraction=fraction)
  assert len(splits.make_split(ids, tumour, protocol=protocol, val_fraction=0.5).train)
