"""Dense k-reciprocal re-ranking, written step by step from the paper (Zhong et al., CVPR 2017).

This is the yardstick for `benchmark.evaluation.rerank.rerank`: the tests compare the two and
`benchmark perf` times them side by side. It keeps every (q+g) x (q+g) matrix of the published
code (original distance, ranking, encoding V and its query expansion), so its memory grows with
(q+g)^2: about 5 * 8 * (q+g)^2 bytes in float64 (15 GB at Market-1501 scale, 3 GB for 8,000
items); use it on small inputs.

Steps (Sec. 3-4 of the paper, with the conventions of the authors' published code):
1. d(i, j): squared Euclidean distance over all q+g items; each column is divided by its maximum
   and the matrix transposed, so row i is d(i, .) / max_k d(k, i).
2. Ranking of every row (ascending); N(i, k) = the first k+1 items (i itself included).
3. R(i, k) = {j in N(i, k) : i in N(j, k)}, the k-reciprocal set.
4. R*(i) = R(i, k1) plus R(c, round(k1/2)) for each c in R(i, k1) with
   |R(c, round(k1/2)) ∩ R(i, k1)| > 2/3 |R(c, round(k1/2))|.
5. V[i, j] = exp(-d(i, j)) for j in R*(i), normalised over the row.
6. Local query expansion (k2 > 1): V[i] <- mean of V[j] over the k2 nearest items j of i.
7. Jaccard distance 1 - sum_k min(V[i,k], V[j,k]) / sum_k max(V[i,k], V[j,k]); since rows of V sum
   to 1, sum max = 2 - sum min.
8. final = (1 - lambda) * Jaccard + lambda * d, on query rows and gallery columns.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike
from scipy.spatial.distance import cdist


def rerank_dense(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    dtype: DTypeLike = np.float64,
) -> np.ndarray:
    """Re-ranked query-gallery distances (q, g) by the dense published algorithm.

    `dtype` is the precision of the dense matrices: float32 is what the published code uses;
    float64 (default) removes rounding-induced ranking flips when comparing implementations.
    """
    q = np.asarray(q_feats, dtype=np.float64)
    g = np.asarray(g_feats, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"need (q, d) and (g, d) features, got {q.shape} and {g.shape}")
    num_query = q.shape[0]
    feats = np.concatenate([q, g])
    num_all = feats.shape[0]

    dist = cdist(feats, feats, metric="sqeuclidean")
    col_max = dist.max(axis=0)
    if np.any(col_max <= 0):
        raise ValueError("all features are identical: the distance normalisation is undefined")
    original = (dist / col_max).T.astype(dtype)
    del dist
    ranking = np.argsort(original, axis=1, kind="stable")

    def nearest(i: int, k: int) -> np.ndarray:
        return ranking[i, : k + 1]

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in nearest(i, k) if i in nearest(int(j), k)}

    half = int(np.around(k1 / 2))
    encoding = np.zeros((num_all, num_all), dtype=dtype)
    for i in range(num_all):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for c in r_i:
            r_c = reciprocal(c, half)
            if len(r_c & r_i) > 2 / 3 * len(r_c):
                expanded |= r_c
        members = np.array(sorted(expanded), dtype=np.int64)
        weight = np.exp(-original[i, members])
        encoding[i, members] = weight / weight.sum()

    if k2 != 1:
        expanded_v = np.zeros_like(encoding)
        for i in range(num_all):
            expanded_v[i] = encoding[ranking[i, :k2]].mean(axis=0)
        encoding = expanded_v

    jaccard = np.ones((num_query, num_all - num_query), dtype=dtype)
    for i in range(num_query):
        support = np.flatnonzero(encoding[i])
        shared = np.minimum(encoding[num_query:, support], encoding[i, support]).sum(axis=1)
        jaccard[i] = 1.0 - shared / (2.0 - shared)

    final = jaccard * (1 - lambda_value) + original[:num_query, num_query:] * lambda_value
    return final.astype(np.float32)
