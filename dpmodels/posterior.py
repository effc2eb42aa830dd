"""The fitted variational posterior of ``B`` mixtures, in canonical order (largest weight first).

Everything a user asks of a fit lives here: expected weights and their draws, component means and
covariances, ``n_active``, responsibilities and their entropy, and the posterior predictive
density, which is a mixture of Student-t densities (the conjugate family integrated over its
parameters), not a plug-in Gaussian mixture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .models.dpgmm import ModelSpec
from .models.family import (
    VariationalParams,
    expected_log_weights,
    expected_weights,
    log_predictive_components,
    predictive_plan,
    quadratic_plan,
    take_components,
)
from .models.guide import assignment_log_probs
from .models.lowrank import lowrank_covariances, lowrank_draws

__all__ = ["MixturePosterior"]


def _normal_wishart_draws(
    p: VariationalParams, S: tuple, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draws of ``(Lambda, Lambda^-1, mu, T)`` from ``q`` by the Bartlett decomposition, computed in
    float64 and returned in ``dtype`` (default: the parameters' dtype); ``T`` is the lower-triangular
    Cholesky factor of ``Lambda = T T^T``.

    ``Lambda = T T^T`` with ``T = chol(Psi^-1) A`` lower triangular, so ``Lambda^-1`` and the mean's
    noise come from triangular solves: no inversion of a nearly singular draw (unused components
    have ``nu`` close to ``D``)."""
    D, f64 = p.num_features, torch.float64
    tril = torch.linalg.cholesky(torch.cholesky_inverse(p.scale_tril.to(f64)))  # chol of W = Psi^-1
    df = p.dof.to(f64).unsqueeze(-1) - torch.arange(D, dtype=f64, device=tril.device)  # (B, K, D)
    diag = torch.sqrt(2.0 * torch._standard_gamma(0.5 * df.expand(S + df.shape)))  # sqrt chi2
    A = torch.randn(S + tril.shape, dtype=f64, device=tril.device).tril(-1) + torch.diag_embed(diag)
    T = tril @ A  # (S, B, K, D, D), lower triangular
    prec = T @ T.transpose(-1, -2)
    cov = torch.cholesky_inverse(T)
    eps = torch.randn(S + p.mean.shape, dtype=f64, device=tril.device).unsqueeze(-1)
    noise = torch.linalg.solve_triangular(T.transpose(-1, -2), eps, upper=True).squeeze(-1)
    means = p.mean.to(f64) + noise / torch.sqrt(p.mean_precision.to(f64)).unsqueeze(-1)
    dtype = dtype or p.mean.dtype
    return prec.to(dtype), cov.to(dtype), means.to(dtype), T.to(dtype)


class MixturePosterior:
    """Posterior of ``B`` fitted mixtures.

    Parameters
    ----------
    params : fitted variational parameters in data coordinates, ``(B, K, ...)``.
    spec : the model (prior, base measure, truncation).
    counts : expected number of fitted points per component, ``(B, K)``.
    num_points : number of fitted points ``N``.
    active_threshold : a component is *active* when it explains more than this share of the
        fitted points (default 1%).
    chunk_size : points per chunk when evaluating new data.
    """

    def __init__(
        self,
        params: VariationalParams,
        spec: ModelSpec,
        counts: Tensor,
        num_points: int,
        active_threshold: float = 0.01,
        chunk_size: int = 8192,
    ):
        if not 0.0 <= active_threshold < 1.0:
            raise ValueError(f"active_threshold must lie in [0, 1), got {active_threshold!r}; try 0.01.")
        self.params, self.spec = params, spec
        self.num_points, self.active_threshold, self.chunk_size = num_points, active_threshold, chunk_size
        # canonical order: by expected weight, largest first  (B, K)
        self.order = expected_weights(params).argsort(dim=-1, descending=True)
        self._counts = counts.to(params.mean.device)

    # ---- globals --------------------------------------------------------------------------
    def _take(self, t: Tensor) -> Tensor:
        return take_components(t, self.order)

    @property
    def batch_size(self) -> int:
        return self.params.batch_size

    @property
    def truncation(self) -> int:
        return self.params.truncation

    @property
    def covariance_type(self) -> str:
        return self.params.covariance

    @property
    def weights(self) -> Tensor:
        """Posterior mean weights ``E[pi]`` ``(B, K)``."""
        return self._take(expected_weights(self.params))

    @property
    def means(self) -> Tensor:
        """Posterior mean of each component mean ``(B, K, D)``."""
        return self._take(self.params.mean)

    @property
    def covariances(self) -> Tensor:
        """``E[Lambda]^-1 = Psi / nu``: ``(B, K, D, D)`` (full) or variances ``(B, K, D)`` (diag);
        low-rank: ``E[W] E[W]^T + diag(E[lambda]^-1)`` ``(B, K, D, D)``."""
        p = self.params
        if p.covariance == "lowrank":
            return self._take(lowrank_covariances(p))
        if p.covariance == "full":
            psi = p.scale_tril @ p.scale_tril.transpose(-1, -2)
            return self._take(psi / p.dof[..., None, None])
        return self._take(p.scale / p.dof.unsqueeze(-1))

    @property
    def counts(self) -> Tensor:
        """Expected number of fitted points per component ``(B, K)``."""
        return self._take(self._counts)

    @property
    def active(self) -> Tensor:
        """Boolean mask of active components ``(B, K)`` (share of fitted points > threshold)."""
        return self.counts / self.num_points > self.active_threshold

    @property
    def n_active(self) -> Tensor:
        """Number of active components per fit ``(B,)``."""
        return self.active.sum(-1)

    @property
    def concentration(self) -> Tensor:
        """``E[alpha]`` per fit ``(B,)`` (the fixed value when not learned)."""
        return self.spec.prior.expected_concentration(self.params, self.params.mean_precision[:, 0])

    # ---- local quantities -------------------------------------------------------------------
    def _as_batch(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=self.params.mean.dtype, device=self.params.mean.device)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.batch_size, -1, -1)
        if x.dim() != 3 or x.shape[0] != self.batch_size or x.shape[-1] != self.params.num_features:
            raise ValueError(
                f"expected points shaped (N, {self.params.num_features}) or "
                f"({self.batch_size}, N, {self.params.num_features}), got {tuple(x.shape)}."
            )
        return x

    def _chunked(self, fn, x: Tensor) -> Tensor:
        x = self._as_batch(x)
        return torch.cat(
            [fn(x[:, i : i + self.chunk_size]) for i in range(0, x.shape[1], self.chunk_size)], 1
        )

    def log_responsibilities(self, x: Tensor) -> Tensor:
        """Mean-field ``log q(z_n = k)`` ``(B, N, K)``, components in canonical order."""
        e_log_pi = expected_log_weights(self.params)
        # float32 on raw data: the whitened form (no cancellation; chunking changes only float32 round-off)
        plan = quadratic_plan(self.params, "whitened" if self.params.covariance == "full" else None)
        log_r = self._chunked(lambda c: assignment_log_probs(self.params, c, e_log_pi, plan), x)
        return torch.gather(log_r, 2, self.order.unsqueeze(1).expand_as(log_r))

    def responsibilities(self, x: Tensor) -> Tensor:
        """``q(z_n = k)`` ``(B, N, K)``."""
        return self.log_responsibilities(x).exp()

    def predict(self, x: Tensor) -> Tensor:
        """Most probable component per point ``(B, N)`` (canonical index)."""
        return self.log_responsibilities(x).argmax(-1)

    def assignment_entropy(self, x: Tensor) -> Tensor:
        """Entropy of ``q(z_n)`` in nats ``(B, N)``: how torn a point is between components."""
        log_r = self.log_responsibilities(x)
        return -torch.where(log_r > -torch.inf, log_r.exp() * log_r, torch.zeros_like(log_r)).sum(-1)

    def log_predictive(self, x: Tensor) -> Tensor:
        """Posterior predictive log density ``log p(x_n | data)`` in nats ``(B, N)``:
        ``log sum_k E[pi_k] St(x_n | component k)``."""
        log_w = torch.log(expected_weights(self.params)).unsqueeze(1)  # (B, 1, K)
        plan = predictive_plan(self.params)  # once for all chunks
        return self._chunked(
            lambda c: torch.logsumexp(log_w + log_predictive_components(self.params, c, plan), dim=-1), x
        )

    # ---- draws ------------------------------------------------------------------------------
    def sample(
        self, num_samples: int, seed: int | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """Draws of all globals from the variational posterior, canonical order.

        Returns ``weights (S, B, K)``, ``log_weights (S, B, K)``, ``means (S, B, K, D)``,
        ``precisions`` ``(S, B, K, D, D)`` or ``(S, B, K, D)``, ``covariances`` likewise,
        ``precision_trils`` ``(S, B, K, D, D)`` (full: lower-triangular ``T`` with
        ``Lambda = T T^T``, exact from the Bartlett draw) and ``concentration (S, B)`` when learned.
        Low-rank components: ``precisions`` and ``covariances`` are the noise's ``(S, B, K, D)``,
        with ``loadings (S, B, K, D, r)`` (a component's covariance is ``W W^T + diag(covariances)``).
        Full-covariance draws are computed in float64 and returned in ``dtype`` (default: the
        parameters' dtype); ask for ``torch.float64`` when nearly singular draws must stay exact.
        """
        if seed is not None:
            torch.manual_seed(seed)
        p, S = self.params, (num_samples,)
        with torch.no_grad():
            log_w = self.spec.prior.sample_posterior_log_weights(p, S)  # (S, B, K)
            tril = loadings = None
            if p.covariance == "full":
                prec, cov, means, tril = _normal_wishart_draws(p, S, dtype)
            elif p.covariance == "lowrank":
                prec, means, loadings = (t.to(dtype or p.mean.dtype) for t in lowrank_draws(p, S))
                cov = 1.0 / prec
            else:
                shape = 0.5 * p.dof.unsqueeze(-1).expand_as(p.scale)
                prec = torch.distributions.Gamma(shape, 0.5 * p.scale).sample(S)  # (S, B, K, D)
                cov = 1.0 / prec
                eps = torch.randn(S + p.mean.shape, dtype=p.mean.dtype, device=p.mean.device)
                means = p.mean + eps * torch.sqrt(cov / p.mean_precision.unsqueeze(-1))
        order = self.order.expand(S + self.order.shape)

        def take(t: Tensor) -> Tensor:
            idx = order.reshape(order.shape + (1,) * (t.dim() - 3)).expand_as(t)
            return torch.gather(t, 2, idx)

        out = {
            "log_weights": take(log_w),
            "weights": take(log_w.exp()),
            "means": take(means),
            "precisions": take(prec),
            "covariances": take(cov),
        }
        if tril is not None:
            out["precision_trils"] = take(tril)
        if loadings is not None:
            out["loadings"] = take(loadings)
        if p.conc_shape is not None:
            out["concentration"] = torch.distributions.Gamma(p.conc_shape, p.conc_rate).sample(S)
        return out

    def select(self, index: int) -> MixturePosterior:
        """The posterior of fit ``index`` alone (``B = 1``)."""
        sl = slice(index, index + 1)
        base = self.spec.base
        base_b = base.map(lambda t: t[sl])
        return MixturePosterior(
            self.params.map(lambda t: t[sl]),
            ModelSpec(self.spec.prior, base_b, self.spec.truncation),
            self._counts[sl],
            self.num_points,
            self.active_threshold,
            self.chunk_size,
        )
