"""The individual-group distance of Chen et al., "Unsupervised Visual Feature Learning Based on
Similarity Guidance" (Eq. 3-8): D = alpha d1 + beta d2 + gamma d3.

Why a module of its own: it is a merge criterion for bottom-up merging (`methods.common.merging`),
made of three terms that each deserve checking on their own, and its sample-level part also drives
the paper's first, DBSCAN-based clustering. The terms:

- d1 (Eq. 3): the Euclidean distance between two samples' features.
- d2 (Eq. 4-6): how different two samples' neighbourhoods are. Each sample i gets a sparse vector
  phi_i over the samples, phi_i[j] = exp(-d1(i, j)) for j in its neighbour set, 0 elsewhere (Eq. 6),
  and d2(i, j) = 1 - sum_l min(phi_i[l], phi_j[l]) / sum_l max(phi_i[l], phi_j[l]) (Eq. 5).
  The neighbour set is the paper's "samples and their neighbours each containing each other"
  (k-reciprocal neighbours) at the depths "(20, 10, 5)", which this module reads as the three
  parameters of the k-reciprocal encoding the paper cites (Zhong et al., CVPR 2017):
  k1 = 20: R(i) = {j in N(i, k1) : i in N(j, k1)}, N(i, k) the k nearest samples (i included);
  k_half = 10: R(i) grows by R_h(q) = the k_half-reciprocal set of each q in R(i) whose overlap
  with R(i) exceeds 2/3 of |R_h(q)| ("we expand the number of neighbour samples");
  k2 = 5: local query expansion, phi'_i = mean of phi_q over q in N(i, k2).
  Unlike the Jaccard distance of `methods.common.jaccard` (Cluster Contrast's form), phi is not
  normalised to sum 1 and uses exp(-d1), not exp(-d1^2), as Eq. 6 is written; so
  sum max = s_i + s_j - sum min with s_i = sum_l phi'_i[l], and pairs whose vectors share no
  sample have d2 = 1 exactly (they are left out of the sparse similarity).
- d3 (Eq. 7): |Q| + |T|, the sizes of the two samples' clusters: the balance term.

Between clusters, the distance is that of their closest pair of members ("we select the sample
pairs of different classes with the smallest joint distance to merge"):
D(A, B) = min over a in A, b in B of (alpha d1 + beta d2)(a, b) + gamma (|A| + |B|).
Sample-pair distances are evaluated in row blocks, so memory is O(C^2 + block * N), never N x N.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import pairwise_distances

from methods.common.jaccard import min_overlap, reverse_positions
from methods.common.knn import FeatureMatrix, check_features, check_normalised, knn
from methods.common.merging import check_labels

DEPTHS = (20, 10, 5)
TERMS = ("d1", "d2", "d3")
_BLOCK_ELEMENTS = 1 << 22  # elements of one dense (rows x N) block of sample distances


def parse_terms(spec: str | Iterable[str]) -> frozenset[str]:
    """'d1+d2+d3' (or an iterable of names) as a set of terms; ValueError for anything else."""
    names = [t.strip() for t in spec.split("+")] if isinstance(spec, str) else list(spec)
    unknown = sorted(set(names) - set(TERMS))
    if not names or unknown or any(not n for n in names):
        raise ValueError(f"distance terms: expected a '+'-joined subset of {TERMS}, got {spec!r}")
    return frozenset(names)


def check_depths(depths: Iterable[int], n: int) -> tuple[int, int, int]:
    """(k1, k_half, k2) clamped to N: 1 <= k_half <= k1, 1 <= k2 <= k1."""
    values = tuple(int(d) for d in depths)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"depths must be three positive integers (k1, k_half, k2), got {depths!r}")
    k1, kh, k2 = (min(v, n) for v in values)
    if kh > k1 or k2 > k1:
        raise ValueError(f"depths {depths!r}: k_half and k2 must not exceed k1")
    return k1, kh, k2


# -- d1 -----------------------------------------------------------------------------------------
def euclidean_term(features: FeatureMatrix, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """d1 (Eq. 3, p = 2) between `features[rows]` and every sample: (len(rows), N) float64."""
    x = check_features(features)
    return pairwise_distances(x[rows].astype(np.float64), x.astype(np.float64))


# -- d2 -----------------------------------------------------------------------------------------
def _reciprocal_sets(ranking: np.ndarray) -> sp.csr_matrix:
    """Row i holds {j in N(i, k) : i in N(j, k)}, k = ranking.shape[1] (boolean CSR)."""
    n, k = ranking.shape
    lists = np.ascontiguousarray(ranking, dtype=np.int64)
    keep = (reverse_positions(lists) < k).ravel()
    rows = np.repeat(np.arange(n, dtype=np.int64), k)[keep]
    return sp.csr_matrix((np.ones(keep.sum(), dtype=bool), (rows, lists.ravel()[keep])),
                         shape=(n, n))


def neighbour_sets(ranking: np.ndarray, k1: int, k_half: int) -> sp.csr_matrix:
    """R*(i): the k1-reciprocal set of i plus the k_half-reciprocal set of every q in it that
    overlaps it by more than 2/3 of its own size (boolean CSR, row i = R*(i))."""
    recip = _reciprocal_sets(ranking[:, :k1]).astype(np.int64)
    half = _reciprocal_sets(ranking[:, :k_half]).astype(np.int64)
    overlap = (recip @ half.T).multiply(recip).tocsr()  # [i, q] = |R(i) & R_h(q)| for q in R(i)
    overlap.eliminate_zeros()
    half_size = np.asarray(half.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(overlap.shape[0]), np.diff(overlap.indptr))
    accept = 3 * overlap.data > 2 * half_size[overlap.indices]
    grow = sp.csr_matrix((np.ones(accept.sum(), dtype=np.int64),
                          (rows[accept], overlap.indices[accept])), shape=overlap.shape)
    out = ((recip + grow @ half) > 0).tocsr()
    out.sort_indices()
    return out


def neighbourhood_vectors(
    features: FeatureMatrix, depths: Iterable[int] = DEPTHS
) -> sp.csr_matrix:
    """phi' of every sample (Eq. 6 on R*, then local query expansion over N(i, k2)): float64 CSR.

    Features must be L2-normalised (neighbours are searched by inner product, which then ranks
    like d1)."""
    x = check_features(features)
    check_normalised(x)
    n = x.shape[0]
    k1, kh, k2 = check_depths(depths, n)
    _, ranking = knn(x, k1)
    sets = neighbour_sets(ranking, k1, kh)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(sets.indptr))
    cols = sets.indices.astype(np.int64)
    d1 = np.empty(rows.size)
    step = max(1, _BLOCK_ELEMENTS // x.shape[1])
    for s in range(0, rows.size, step):
        diff = x[rows[s:s + step]].astype(np.float64) - x[cols[s:s + step]]
        d1[s:s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    phi = sp.csr_matrix((np.exp(-d1), cols, sets.indptr), shape=(n, n))
    if k2 == 1:
        return phi
    expand = sp.csr_matrix(
        (np.full(n * k2, 1.0 / k2), np.ascontiguousarray(ranking[:, :k2]).ravel(),
         np.arange(0, n * k2 + 1, k2)), shape=(n, n),
    )
    out = (expand @ phi).tocsr()
    out.sum_duplicates()
    return out


def neighbourhood_similarity(vectors: sp.csr_matrix) -> sp.csr_matrix:
    """1 - d2 (Eq. 5) for every pair whose vectors share a sample (symmetric CSR; absent = 0,
    i.e. d2 = 1); the diagonal is 1."""
    m = min_overlap(vectors)
    totals = np.asarray(vectors.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    union = totals[rows] + totals[m.indices] - m.data
    sim = m.copy()
    sim.data = np.clip(m.data / union, 0.0, 1.0)
    sim.data[m.indices == rows] = 1.0
    return sim


def neighbourhood_term(features: FeatureMatrix, depths: Iterable[int] = DEPTHS) -> np.ndarray:
    """d2 between every pair of samples as a dense N x N matrix (small N: tests, inspection)."""
    sim = neighbourhood_similarity(neighbourhood_vectors(features, depths))
    return 1.0 - sim.toarray()


# -- d3 -----------------------------------------------------------------------------------------
def size_term(labels: np.ndarray) -> np.ndarray:
    """d3 (Eq. 7) between clusters 0..C-1: |Q| + |T|, zero diagonal (C x C float64)."""
    sizes = np.bincount(check_labels(labels)).astype(np.float64)
    out = sizes[:, None] + sizes[None, :]
    np.fill_diagonal(out, 0.0)
    return out


# -- D ------------------------------------------------------------------------------------------
class SampleDistance:
    """alpha d1 + beta d2 between samples (the pairwise part of Eq. 8), evaluated row block by row
    block; a term whose weight is 0 is not computed."""

    def __init__(
        self, features: FeatureMatrix, *, alpha: float = 0.5, beta: float = 0.5,
        depths: Iterable[int] = DEPTHS,
    ) -> None:
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"alpha, beta must be >= 0 and not both 0, got {alpha}, {beta}")
        self.x = check_features(features)
        self.alpha, self.beta = float(alpha), float(beta)
        self.similarity = (
            neighbourhood_similarity(neighbourhood_vectors(self.x, depths)) if beta else None
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, rows: np.ndarray | slice) -> np.ndarray:
        """(len(rows), N) float64."""
        out = np.zeros((len(np.arange(len(self))[rows]), len(self)))
        if self.alpha:
            out += self.alpha * euclidean_term(self.x, rows)
        if self.similarity is not None:
            out += self.beta * (1.0 - self.similarity[rows].toarray())
        return out

    def blocks(self, order: np.ndarray | None = None):
        """(first position, block) over the rows in `order` (default 0..N-1), columns in the same
        order."""
        n = len(self)
        order = np.arange(n) if order is None else order
        step = max(1, _BLOCK_ELEMENTS // n)
        for start in range(0, n, step):
            yield start, self.rows(order[start:start + step])[:, order]

    def within(self, eps: float) -> sp.csr_matrix:
        """The pairs at distance <= eps as CSR (explicit zeros kept), for DBSCAN's radius graph."""
        parts = []
        for start, block in self.blocks():
            r, c = np.nonzero(block <= eps)
            parts.append((r + start, c, block[r, c]))
        r, c, v = (np.concatenate(p) for p in zip(*parts))
        return sp.csr_matrix((v, (r, c)), shape=(len(self), len(self)))


def group_min_distance(dist: SampleDistance, labels: np.ndarray) -> np.ndarray:
    """min over member pairs of the sample distance, between clusters 0..C-1 (C x C, zero
    diagonal)."""
    labels = check_labels(labels, len(dist))
    order = np.argsort(labels, kind="stable")
    ls = labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    num = starts.size
    out = np.full((num, num), np.inf)
    for start, block in dist.blocks(order):
        rows = ls[start:start + block.shape[0]]
        by_cluster = np.minimum.reduceat(block, starts, axis=1)
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        by_cluster = np.minimum.reduceat(by_cluster, first, axis=0)
        ids = rows[first]
        out[ids] = np.minimum(out[ids], by_cluster)
    out = np.minimum(out, out.T)
    np.fill_diagonal(out, 0.0)
    return out


def individual_group_distance(
    features: FeatureMatrix,
    labels: np.ndarray,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.03,
    depths: Iterable[int] = DEPTHS,
    terms: str | Iterable[str] = TERMS,
) -> np.ndarray:
    """D (Eq. 8) between the clusters of `labels`: the closest member pair's alpha d1 + beta d2,
    plus gamma d3; a term left out of `terms` gets weight 0 (the ablations of Table 4)."""
    use = parse_terms(terms)
    dist = SampleDistance(
        features, alpha=alpha if "d1" in use else 0.0, beta=beta if "d2" in use else 0.0,
        depths=depths,
    ) if use & {"d1", "d2"} else None
    labels = check_labels(labels, check_features(features).shape[0])
    num = int(labels.max()) + 1
    out = group_min_distance(dist, labels) if dist is not None else np.zeros((num, num))
    if "d3" in use:
        out = out + gamma * size_term(labels)
    return out
