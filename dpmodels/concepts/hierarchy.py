"""A hierarchy over a fitted mixture's components: greedy merges from ``K̂`` components down to one.

A *concept* is a set of components; its responsibility is the sum of its members'
responsibilities, so every level of the hierarchy is again a soft clustering of the points. Two
merge criteria, both read from the posterior:

* ``"entropy"`` (Baudry, Raftery, Celeux, Lo & Gottardo 2010, "Combining mixture components for
  clustering"): merge the pair whose union lowers the total assignment entropy
  ``ENT = -sum_n sum_c t_nc log t_nc`` the most. With ``h(t) = t log t`` the decrease of merging
  ``a`` and ``b`` is ``sum_n h(t_na + t_nb) - h(t_na) - h(t_nb) >= 0``.
* ``"bhattacharyya"``: merge the pair of concepts with the largest overlap of their posterior
  components: the Bhattacharyya coefficient ``BC_ij = exp(-D_B)`` between the Gaussians of the
  posterior mean parameters (``E[mu]``, ``E[Lambda]^-1``; low-rank components: the plug-in
  ``E[W] E[W]^T + diag(E[lambda]^-1)`` of ``MixturePosterior.covariances``), averaged over the
  members of two concepts with their weights (``sum w_i w_j BC_ij / (W_A W_B)``, updated by the
  Lance-Williams rule).

Both record the entropy curve ``ENT(k)`` (nats per point, ``k = 1..K̂`` concepts) along their merges,
from which :mod:`dpmodels.concepts.selection` picks the number of concepts. Linkage heights:
``-log`` of the merge's criterion value (entropy decrease per point, or overlap), made monotone by a
running maximum, so that scipy draws the tree and long stems mean well separated concepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["CRITERIA", "ConceptHierarchy", "bhattacharyya_overlap", "build_hierarchy", "entropy_decrease"]

CRITERIA = ("entropy", "bhattacharyya")
_TINY = 1e-300


def _xlogx(t: np.ndarray) -> np.ndarray:
    return t * np.log(np.maximum(t, _TINY))  # 0 log 0 = 0


def entropy_decrease(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total entropy decrease (nats) of merging responsibility columns ``a (N,)`` with each column
    of ``b (N, M)`` (or one ``(N,)``): ``sum_n h(a + b) - h(a) - h(b)``, ``h(t) = t log t``."""
    b2 = b.reshape(b.shape[0], -1)
    d = (_xlogx(a[:, None] + b2) - _xlogx(a)[:, None] - _xlogx(b2)).sum(0)
    return d if b.ndim == 2 else d[0]


def bhattacharyya_overlap(means, covariances, block_elements: int = 2**22) -> np.ndarray:
    """``(K, K)`` Bhattacharyya coefficients ``exp(-D_B)`` between Gaussians ``N(mu_k, Sigma_k)``.

    ``means (K, D)``; ``covariances (K, D, D)`` (full) or ``(K, D)`` (diagonal variances). Every
    log-determinant comes from a Cholesky factor (no LU, which MKL refuses on some wide batches);
    the ``K (K - 1) / 2`` pairs run in blocks of at most ``block_elements`` float64 values of
    ``(pairs, D, D)``, so memory stays bounded at the widths of raw layers (D = 320: 40 pairs)."""
    mu = torch.as_tensor(means, dtype=torch.float64)
    cov = torch.as_tensor(covariances, dtype=torch.float64)
    if cov.dim() == 2:
        cov = torch.diag_embed(cov)
    K, D = mu.shape

    def logdet(chol: Tensor) -> Tensor:
        return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    own = logdet(torch.linalg.cholesky(cov))  # (K,)
    rows, cols = torch.triu_indices(K, K, offset=1)
    d_b = torch.zeros(K, K, dtype=torch.float64)
    step = max(1, block_elements // max(1, D * D))
    for start in range(0, len(rows), step):
        i, j = rows[start : start + step], cols[start : start + step]
        chol = torch.linalg.cholesky(0.5 * (cov[i] + cov[j]))  # (P, D, D)
        z = torch.linalg.solve_triangular(chol, (mu[i] - mu[j]).unsqueeze(-1), upper=False)
        maha = (z**2).sum((-1, -2))  # (P,)
        value = maha / 8.0 + 0.5 * (logdet(chol) - 0.5 * (own[i] + own[j]))
        d_b[i, j] = value
        d_b[j, i] = value
    return torch.exp(-d_b.clamp_min(0.0)).numpy()


@dataclass
class ConceptHierarchy:
    """Merges of ``K̂`` components into concepts.

    Attributes
    ----------
    criterion : ``"entropy"`` or ``"bhattacharyya"``.
    components : ``(K̂,)`` canonical indices of the merged (active) components; leaf ``i`` of the
        tree is component ``components[i]``.
    weights : ``(K̂,)`` their posterior mean weights.
    linkage : ``(K̂ - 1, 4)`` scipy linkage matrix (``scipy.cluster.hierarchy.dendrogram`` draws it).
    entropy_curve : ``(K̂,)`` assignment entropy (nats per point) with ``k = 1..K̂`` concepts
        (entry ``k - 1``), non-increasing as ``k`` falls.
    """

    criterion: str
    components: np.ndarray
    weights: np.ndarray
    linkage: np.ndarray
    entropy_curve: np.ndarray

    @property
    def num_components(self) -> int:
        return int(len(self.components))

    def _check_k(self, num_concepts: int) -> int:
        k = int(num_concepts)
        if not 1 <= k <= self.num_components:
            raise ValueError(
                f"num_concepts must lie in [1, K̂={self.num_components}] (the hierarchy's components), "
                f"got {num_concepts!r}."
            )
        return k

    def assignment(self, num_concepts: int) -> np.ndarray:
        """``(K̂,)`` concept of each leaf at ``num_concepts`` concepts; concepts are numbered by
        their summed weight, largest first."""
        k = self._check_k(num_concepts)
        K = self.num_components
        group = {i: [i] for i in range(K)}
        for step in range(K - k):
            a, b = int(self.linkage[step, 0]), int(self.linkage[step, 1])
            group[K + step] = group.pop(a) + group.pop(b)
        members = sorted(group.values(), key=lambda m: -float(self.weights[m].sum()))
        out = np.empty(K, dtype=np.int64)
        for c, m in enumerate(members):
            out[m] = c
        return out

    def membership(self, num_concepts: int) -> np.ndarray:
        """``(K̂, k)`` 0/1 matrix: leaf ``i`` belongs to concept ``c``."""
        a = self.assignment(num_concepts)
        return np.eye(int(num_concepts))[a]

    def component_to_concept(self, num_concepts: int, truncation: int) -> np.ndarray:
        """``(K,)`` concept of every canonical component index ``0..truncation-1`` (``-1`` for the
        components left out of the hierarchy)."""
        out = np.full(int(truncation), -1, dtype=np.int64)
        out[self.components] = self.assignment(num_concepts)
        return out

    def merge(self, responsibilities, num_concepts: int) -> np.ndarray:
        """Concept responsibilities ``(N, k)``: the leaves' responsibilities ``(N, K̂)`` summed."""
        r = np.asarray(responsibilities, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != self.num_components:
            raise ValueError(
                f"responsibilities must be (N, K̂={self.num_components}) over the hierarchy's "
                f"components, got {r.shape}."
            )
        a = self.assignment(num_concepts)
        return np.stack([r[:, a == c].sum(1) for c in range(int(num_concepts))], 1)


def _normalised(resp) -> np.ndarray:
    r = np.asarray(resp, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(f"responsibilities must be (N, K) with N, K >= 1, got {r.shape}.")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("responsibilities must be finite and non-negative.")
    s = r.sum(1, keepdims=True)
    if (s <= 0).any():
        raise ValueError("every point needs a positive responsibility for some component.")
    return r / s


def _greedy(r: np.ndarray, score_init: np.ndarray, update, criterion: str) -> tuple[np.ndarray, np.ndarray]:
    """Greedy agglomeration: at each step merge the live pair with the largest score; ``update(a,
    b, new, live)`` returns the new cluster's scores against ``live``. Returns the linkage matrix and
    the entropy curve (nats per point)."""
    N, K = r.shape
    cols = np.zeros((N, 2 * K - 1))
    cols[:, :K] = r
    score = np.full((2 * K - 1, 2 * K - 1), -np.inf)
    score[:K, :K] = score_init
    np.fill_diagonal(score, -np.inf)
    live = list(range(K))
    count = np.ones(2 * K - 1)
    ent = np.empty(K)
    ent[K - 1] = -_xlogx(r).sum() / N
    Z = np.zeros((max(K - 1, 0), 4))
    height = 0.0
    for step in range(K - 1):
        idx = np.array(live)
        sub = score[np.ix_(idx, idx)]
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        a, b = sorted((int(idx[i]), int(idx[j])))
        best = float(sub[i, j])
        new = K + step
        cols[:, new] = cols[:, a] + cols[:, b]
        dec = float(entropy_decrease(cols[:, a], cols[:, b])) / N
        ent[K - 2 - step] = ent[K - 1 - step] - max(dec, 0.0)
        live = [x for x in live if x not in (a, b)]
        if live:
            s = update(a, b, new, live, cols)
            score[new, live] = s
            score[live, new] = s
        value = dec if criterion == "entropy" else best
        height = max(height, -np.log(max(value, 1e-12)))
        count[new] = count[a] + count[b]
        Z[step] = (a, b, height, count[new])
        live.append(new)
    return Z, ent


def build_hierarchy(
    responsibilities,
    *,
    criterion: str = "entropy",
    components=None,
    weights=None,
    means=None,
    covariances=None,
) -> ConceptHierarchy:
    """Merge ``K̂`` components greedily down to one concept.

    ``responsibilities``: ``(N, K̂)`` mean-field responsibilities over the components to merge (rows
    are renormalised). ``components``: their canonical indices (default ``0..K̂-1``); ``weights``:
    their posterior mean weights (default: the responsibilities' column means). ``"bhattacharyya"``
    also needs ``means (K̂, D)`` and ``covariances (K̂, D, D)`` or ``(K̂, D)``."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    r = _normalised(responsibilities)
    N, K = r.shape
    components = np.arange(K) if components is None else np.asarray(components, dtype=np.int64)
    weights = r.mean(0) if weights is None else np.asarray(weights, dtype=np.float64)
    if components.shape != (K,) or weights.shape != (K,):
        raise ValueError(f"components and weights must have one entry per column ({K}).")
    if criterion == "entropy":
        init = np.stack([entropy_decrease(r[:, a], r) for a in range(K)])  # (K, K)

        def update(a, b, new, live, cols):
            return entropy_decrease(cols[:, new], cols[:, live])

    else:
        if means is None or covariances is None:
            raise ValueError("criterion='bhattacharyya' needs the components' means and covariances.")
        init = bhattacharyya_overlap(means, covariances)
        if init.shape != (K, K):
            raise ValueError(f"means/covariances describe {init.shape[0]} components, expected {K}.")
        w = np.zeros(2 * K - 1)
        w[:K] = np.maximum(weights, 1e-300)
        aff = np.zeros((2 * K - 1, 2 * K - 1))
        aff[:K, :K] = init

        def update(a, b, new, live, cols):
            w[new] = w[a] + w[b]
            s = (w[a] * aff[a, live] + w[b] * aff[b, live]) / w[new]  # weighted average linkage
            aff[new, live] = s
            aff[live, new] = s
            return s

    Z, ent = _greedy(r, init, update, criterion)
    return ConceptHierarchy(criterion, components, weights, Z, ent)
