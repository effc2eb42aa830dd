"""Planted-cluster Gaussian mixtures with known truth, for tests, benchmarks and demos."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedMixture"]


@dataclass
class PlantedMixture:
    """A Gaussian mixture with ``n_clusters`` components in ``n_features`` dimensions.

    Centres are drawn until every pair is at least ``separation`` within-cluster standard
    deviations apart (so the truth is recoverable); weights are unequal (largest about
    ``imbalance`` times the smallest); covariances are random rotations and scalings (``"full"``),
    axis-aligned (``"diag"``), or factor analysers (``"lowrank"``: ``W W^T + diag(s^2)`` with
    ``rank`` standard-normal loadings per feature, so features are strongly correlated within a
    cluster). Everything is determined by ``seed``.
    """

    n_clusters: int
    n_features: int
    covariance: str = "full"
    separation: float = 6.0
    imbalance: float = 3.0
    seed: int = 0
    rank: int = 16

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.n_features < 1:
            raise ValueError("n_clusters and n_features must be >= 1.")
        if self.covariance not in ("full", "diag", "lowrank"):
            raise ValueError(f"covariance must be 'full', 'diag' or 'lowrank', got {self.covariance!r}.")
        if self.covariance == "lowrank" and not 1 <= self.rank < self.n_features:
            raise ValueError(f"rank must lie in [1, n_features) = [1, {self.n_features}), got {self.rank}.")
        rng = np.random.default_rng(self.seed)
        K, D = self.n_clusters, self.n_features
        raw = np.linspace(1.0, self.imbalance, K)
        self.weights = rng.permutation(raw / raw.sum())
        scales = rng.uniform(0.6, 1.4, size=(K, D))  # per-axis standard deviations
        if self.covariance == "full":
            rot = np.stack([np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(K)])
            self.chol = rot * scales[:, None, :]  # (K, D, D): x = mu + chol @ eps
        elif self.covariance == "lowrank":
            loadings = rng.normal(size=(K, D, self.rank))
            cov = loadings @ loadings.transpose(0, 2, 1) + np.stack([np.diag(s**2) for s in scales])
            self.chol = np.linalg.cholesky(cov)
        else:
            self.chol = np.stack([np.diag(s) for s in scales])
        self.covariances = self.chol @ self.chol.transpose(0, 2, 1)
        largest_sd = np.sqrt(np.linalg.eigvalsh(self.covariances)[:, -1].max())
        self.means = self._centres(
            rng, K, D, max_sd=scales.max() if self.covariance != "lowrank" else largest_sd
        )

    def _centres(self, rng: np.random.Generator, K: int, D: int, max_sd: float) -> np.ndarray:
        need = self.separation * max_sd
        radius = need * max(1.0, K ** (1.0 / D))
        for _ in range(10_000):
            c = rng.uniform(-radius, radius, size=(K, D))
            dist = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(K) * 1e9
            if dist.min() >= need:
                return c
            radius *= 1.05
        raise RuntimeError("could not place separated centres; lower separation")

    def sample(self, n_points: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(X (n, D) float64, labels (n,))``; ``seed`` defaults to the mixture's own seed."""
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        labels = rng.choice(self.n_clusters, size=n_points, p=self.weights)
        X = rng.normal(size=(n_points, self.n_features))
        for k in range(self.n_clusters):  # one cluster at a time: no (n, D, D) temporary
            sel = labels == k
            X[sel] = self.means[k] + X[sel] @ self.chol[k].T
        return X, labels

    def log_density(self, X: np.ndarray) -> np.ndarray:
        """True log density of the mixture at ``X`` (nats per point)."""
        from scipy.stats import multivariate_normal

        comps = [
            np.log(w) + multivariate_normal(m, c).logpdf(X)
            for w, m, c in zip(self.weights, self.means, self.covariances, strict=True)
        ]
        return np.logaddexp.reduce(np.stack(comps, -1), axis=-1)
