"""How good a method's pseudo labels are against the hidden identities (diagnostics only).

The harness computes this itself, per epoch, from the pseudo labels an adapter reports and the
labels it never shows the adapter; nothing here feeds back into training or model selection.

Definitions (all over the *clustered* samples, i.e. those whose pseudo label is not
`outlier_label`; outliers are only counted, in "num_outliers" / "outlier_fraction"):
- pairs: an unordered pair of clustered samples is predicted positive when both carry the same
  pseudo label, and a true positive when they also carry the same true label;
  precision = TP / predicted pairs, recall = TP / true pairs (pairs of clustered samples that share
  the true label; pairs involving an outlier count nowhere), F-score = 2 TP / (predicted pairs +
  true pairs), which is the harmonic mean of the two where both exist. A ratio with nothing to
  count (no predicted pairs, e.g. all singletons; no true pairs) is NaN, not 0 or 1.
  All counts come from the identity x cluster contingency table: sum of C(n, 2) over its cells,
  rows and columns, so the cost is O(N + cells), never O(N^2).
- expansion: the paper that plots it (Li et al., "Pseudo labels refinement with intra-camera
  similarity", Fig. 2) does not define it in its text. We use the definition of the
  face-clustering evaluation code the metric comes from (precision / recall / F-score /
  expansion): for each true identity, the number of distinct pseudo labels its samples received;
  averaged over identities (unweighted). 1 is ideal; larger means identities are split.
  Here it counts clusters among the identity's clustered samples, over identities that have at
  least one clustered sample.
- NMI (arithmetic normalisation, recorded) and ARI, by scikit-learn, on the clustered samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

NMI_AVERAGE = "arithmetic"
OUTLIER_RULE = "outliers excluded from every pair, expansion, NMI and ARI; counted in outlier_fraction"


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


def pseudo_label_quality(pseudo: Any, truth: Any, outlier_label: int | None = -1) -> dict[str, Any]:
    """Quality of `pseudo` (one label per sample; `outlier_label` = not clustered) against `truth`.

    Returns num_samples, num_clusters, num_outliers, outlier_fraction, precision, recall, fscore,
    expansion, NMI, ARI, NMI_average and outlier_rule (see the module docstring).
    """
    p = np.asarray(pseudo)
    t = np.asarray(truth)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f"pseudo and truth labels must be 1-D, got {p.shape} and {t.shape}")
    if p.size != t.size:
        raise ValueError(f"{p.size} pseudo labels but {t.size} true labels")
    if p.size == 0:
        raise ValueError("no samples to evaluate")
    clustered = np.ones(p.size, dtype=bool) if outlier_label is None else p != outlier_label
    num_outliers = int(p.size - clustered.sum())
    result: dict[str, Any] = {
        "num_samples": int(p.size),
        "num_outliers": num_outliers,
        "outlier_fraction": num_outliers / p.size,
        "NMI_average": NMI_AVERAGE,
        "outlier_rule": OUTLIER_RULE,
    }
    if not clustered.any():
        nan = float("nan")
        result.update(num_clusters=0, precision=nan, recall=nan, fscore=nan, expansion=nan, NMI=nan, ARI=nan)
        return result

    p, t = p[clustered], t[clustered]
    table = contingency_matrix(t, p, sparse=True).tocsr()  # identities x clusters
    table.eliminate_zeros()
    true_positive = _pairs(table.data)
    predicted = _pairs(np.asarray(table.sum(axis=0)).ravel())
    actual = _pairs(np.asarray(table.sum(axis=1)).ravel())
    result.update(
        num_clusters=int(table.shape[1]),
        precision=_ratio(true_positive, predicted),
        recall=_ratio(true_positive, actual),
        fscore=_ratio(2 * true_positive, predicted + actual),
        expansion=float(np.diff(table.indptr).mean()),
        NMI=float(normalized_mutual_info_score(t, p, average_method=NMI_AVERAGE)),
        ARI=float(adjusted_rand_score(t, p)),
    )
    return result
