"""The statistics of Buda et al. 2019: Fisher exact tests of dichotomised
features against genomic clusters with a Bonferroni correction, ROC AUCs
with bootstrap intervals, and manual-versus-automatic agreement.

Fisher tests are exact: a 2xk table (feature above / not above a threshold,
by cluster) is tested by enumerating every table with its margins
(Freeman-Halton: the p-value sums the probabilities of the tables no more
likely than the observed one), so p resolves 0.0002 and needs no seed. For a
2x2 table this is scipy.stats.fisher_exact's two-sided test.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

# scipy.stats.fisher_exact's tolerance for "as likely as the observed table".
_RELATIVE_TOLERANCE = 1 + 1e-7
MAX_TABLES = 20_000_000


def fisher_exact_2xk(table: np.ndarray) -> float:
  """Two-sided exact p-value of a 2xk contingency table (exact enumeration)."""
  table = np.asarray(table, np.int64)
  if table.ndim != 2 or table.shape[0] != 2 or (table < 0).any():
    raise ValueError(f"need a 2xk table of non-negative counts, got {table.tolist()}")
  columns = table.sum(axis=0)
  table, columns = table[:, columns > 0], columns[columns > 0]
  top, n = int(table[0].sum()), int(columns.sum())
  if len(columns) < 2 or top in (0, n):
    return 1.0
  count = math.prod(int(c) + 1 for c in columns)
  if count > MAX_TABLES:
    raise ValueError(f"a 2x{len(columns)} table with margins {columns.tolist()} has too many tables to "
                     f"enumerate ({count:.1e} > {MAX_TABLES:.0e})")

  def log_choose(c, x):
    return special.gammaln(c + 1) - special.gammaln(x + 1) - special.gammaln(c - x + 1)

  # First-row counts column by column, kept only while they can still add up to `top`.
  sums, log_p = np.zeros(1, np.int64), np.zeros(1)
  remaining = int(columns.sum())
  for c in columns:
    remaining -= int(c)
    x = np.arange(int(c) + 1)
    sums = (sums[:, None] + x[None, :]).ravel()
    log_p = (log_p[:, None] + log_choose(c, x)[None, :]).ravel()
    keep = (sums <= top) & (sums + remaining >= top)
    sums, log_p = sums[keep], log_p[keep]
  log_p -= special.gammaln(n + 1) - special.gammaln(top + 1) - special.gammaln(n - top + 1)
  observed = float(np.sum(log_choose(columns, table[0])) - (special.gammaln(n + 1) - special.gammaln(top + 1)
                                                              - special.gammaln(n - top + 1)))
  p = float(np.exp(log_p[log_p <= observed + math.log(_RELATIVE_TOLERANCE)]).sum())
  return min(1.0, p)


def dichotomised_tests(values: np.ndarray, labels: np.ndarray, quantiles) -> list[dict]:
  """One Fisher exact test per threshold: patients whose value is above the
  threshold (the `q` quantile of `values`) against the rest, by label."""
  values, labels = np.asarray(values, float), np.asarray(labels)
  classes = np.unique(labels)
  results = []
  for q in quantiles:
    threshold = float(np.quantile(values, q))
    above = values > threshold
    table = np.array([[np.sum(above & (labels == c)) for c in classes],
                      [np.sum(~above & (labels == c)) for c in classes]])
    results.append({"quantile": float(q), "threshold": threshold, "p": fisher_exact_2xk(table),
                    "table": table})
  return results


def _pairwise_auc(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
  """AUC of each row: the share of (positive, negative) pairs ordered right, ties half."""
  difference = positives[..., :, None] - negatives[..., None, :]
  return (np.sum(difference > 0, axis=(-2, -1)) + 0.5 * np.sum(difference == 0, axis=(-2, -1))) / (
      positives.shape[-1] * negatives.shape[-1])


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """ROC AUC: the Mann-Whitney U statistic over n_pos * n_neg."""
  scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
  if positive.all() or not positive.any():
    return math.nan
  return float(_pairwise_auc(scores[positive], scores[~positive]))


def bootstrap_auc(scores, positive, resamples: int, rng: np.random.Generator,
                  level: float = 0.95) -> tuple[float, float, float]:
  """AUC and its percentile interval, resampling positives and negatives
  separately (stratified) so every resample has both."""
  scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
  point = auc(scores, positive)
  if math.isnan(point):
    return point, math.nan, math.nan
  pos, neg = scores[positive], scores[~positive]
  draws = _pairwise_auc(rng.choice(pos, (resamples, len(pos))), rng.choice(neg, (resamples, len(neg))))
  low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
  return point, float(low), float(high)


def icc_agreement(a: np.ndarray, b: np.ndarray) -> float:
  """ICC(A,1): two-way random effects, absolute agreement, single measure
  (McGraw and Wong 1996), of paired measurements a and b."""
  data = np.column_stack([a, b]).astype(float)
  n, k = data.shape
  if n < 2:
    return math.nan
  grand = data.mean()
  ms_rows = k * np.sum((data.mean(axis=1) - grand) ** 2) / (n - 1)
  ms_cols = n * np.sum((data.mean(axis=0) - grand) ** 2) / (k - 1)
  residual = data - data.mean(axis=1, keepdims=True) - data.mean(axis=0, keepdims=True) + grand
  ms_error = np.sum(residual ** 2) / ((n - 1) * (k - 1))
  denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
  return float((ms_rows - ms_error) / denominator) if denominator > 0 else math.nan


def spearman(a, b) -> float:
  a, b = np.asarray(a, float), np.asarray(b, float)
  if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return math.nan
  return float(stats.spearmanr(a, b).statistic)


def bootstrap_paired(statistic, a, b, resamples: int, rng: np.random.Generator,
                     level: float = 0.95) -> tuple[float, float, float]:
  """`statistic(a, b)` and its percentile interval over patients resampled in pairs."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  point = statistic(a, b)
  if math.isnan(point):
    return point, math.nan, math.nan
  draws = []
  for _ in range(resamples):
    idx = rng.integers(0, len(a), len(a))
    draws.append(statistic(a[idx], b[idx]))
  draws = np.asarray(draws)
  draws = draws[~np.isnan(draws)]
  if not len(draws):
    return point, math.nan, math.nan
  low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
  return point, float(low), float(high)
