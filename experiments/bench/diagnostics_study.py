"""Measured targets of the diagnostics (``python -m experiments.bench.diagnostics_study``).

(a) Prior comparison by PSIS-LOO on data generated from each weight-prior family: DP sticks,
    Pitman–Yor sticks (power-law cluster sizes) and a finite mixture with a known ``K``. Counts
    the seeds in which ``az.compare`` ranks the generating family first.
(b) Pareto ``k_hat`` of the variational fit against ``N`` on well-specified Gaussian clusters,
    and on heavy-tailed Student-t clusters (a misspecified model).
(c) Simulation-based calibration of the Gibbs sampler, and of a deliberately broken copy (the
    component means drawn with too much spread) to show that the test has power.

Writes ``results.json`` and ``results.md`` to ``--out``. Quick settings by default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dpmodels.diagnostics.gibbs import GibbsKernel
from dpmodels.diagnostics.inference_data import to_inference_data
from dpmodels.diagnostics.psis import vi_pareto_k
from dpmodels.diagnostics.sbc import rank_uniformity_pvalue, sbc_ranks
from dpmodels.diagnostics.summaries import compare
from dpmodels.estimator import DPGMM
from dpmodels.models.base_measure import BaseMeasure
from dpmodels.priors import WeightPrior

__all__ = ["main", "generate_clusters", "prior_comparison", "pareto_vs_n", "sbc_power"]


def generate_clusters(family: str, n: int, seed: int, D: int = 2) -> np.ndarray:
    """``(n, D)`` points of unit-variance Gaussian clusters whose weights come from ``family``:
    ``"dp"`` (sticks Beta(1, 2)), ``"pitman_yor"`` (Beta(1 - 0.5, 1 + 0.5 k), power-law sizes),
    ``"finite"`` (4 clusters, weights Dirichlet(5)); centres uniform in a box of side 40."""
    rng = np.random.default_rng(seed)
    if family == "finite":
        w = rng.dirichlet(np.full(4, 5.0))
    else:
        d, alpha = (0.5, 1.0) if family == "pitman_yor" else (0.0, 2.0)
        k = np.arange(1, 60)
        v = rng.beta(1 - d, alpha + k * d)
        w = np.append(v, 1.0) * np.concatenate([[1.0], np.cumprod(1 - v)])
    centres = rng.uniform(-20, 20, size=(len(w), D))
    z = rng.choice(len(w), size=n, p=w / w.sum())
    return centres[z] + rng.standard_normal((n, D))


def prior_comparison(seeds: int, n: int = 400, restarts: int = 2, truncation: int = 20) -> dict:
    """Per generating family, how often LOO ranks the generating prior first (and the tables)."""
    out = {}
    for family in ("dp", "pitman_yor", "finite"):
        wins, rows = 0, []
        for seed in range(seeds):
            X = generate_clusters(family, n, seed)
            variants = {
                "dp": {"prior": "dp", "truncation": truncation, "concentration": 2.0},
                "pitman_yor": {"prior": "pitman_yor", "truncation": truncation, "discount": 0.5},
                "finite": {"prior": "finite", "truncation": 4, "concentration": 20.0},
            }
            idatas = {
                name: to_inference_data(
                    [DPGMM(seed=seed * 100 + r, **kw).fit(X) for r in range(restarts)], X, num_draws=100
                )
                for name, kw in variants.items()
            }
            table = compare(idatas)
            wins += int(table.index[0] == family)
            rows.append(
                {"seed": seed, "order": list(table.index), "elpd": table["elpd_loo"].round(2).tolist()}
            )
        out[family] = {"wins": wins, "seeds": seeds, "runs": rows}
    return out


def pareto_vs_n(seeds: int, sizes=(100, 200, 500, 1000, 2000), num_draws: int = 500) -> dict:
    """``k_hat`` per ``N`` for well-specified (Gaussian) and misspecified (Student-t, df 1.5) data."""
    from dpmodels.data.synthetic import PlantedMixture

    out: dict = {"gaussian": {}, "student_t": {}}
    for N in sizes:
        for kind in out:
            ks = []
            for seed in range(seeds):
                if kind == "gaussian":
                    X, _ = PlantedMixture(3, 2, seed=seed).sample(N)
                else:
                    rng = np.random.default_rng(seed)
                    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
                    X = centres[rng.integers(0, 3, N)] + rng.standard_t(1.5, size=(N, 2))
                fit = DPGMM(truncation=10, seed=seed).fit(X)
                ks.append(round(vi_pareto_k(fit, X, num_draws=num_draws, seed=seed).k_hat, 3))
            out[kind][N] = ks
    return out


class _WideMeans(GibbsKernel):
    """A deliberately wrong sampler: component means get extra N(0, 0.3^2) noise."""

    def components(self, z):
        means, prec, cov = super().components(z)
        return means + 0.3 * torch.randn_like(means), prec, cov


def sbc_power(replications: int = 150) -> dict:
    """SBC p-values (chi-square, 10 bins) of the correct and the broken sampler, K = 1 and K = 3."""
    f64 = torch.float64
    base = BaseMeasure(
        "diag",
        torch.zeros(1, 1, dtype=f64),
        torch.ones(1, dtype=f64),
        torch.full((1,), 3.0, dtype=f64),
        torch.ones(1, 1, dtype=f64),
    )
    out = {}
    for label, cls in (("correct", GibbsKernel), ("broken", _WideMeans)):
        for K in (1, 3):
            ranks = sbc_ranks(
                WeightPrior("dp"), base, K, 15, replications=replications, seed=K, kernel_cls=cls
            )
            out[f"{label}_K{K}"] = {name: rank_uniformity_pvalue(r, 19) for name, r in ranks.items()}
    return out


def _markdown(results: dict) -> str:
    lines = ["# Diagnostics study", "", "## (a) LOO prefers the generating weight prior", ""]
    for fam, r in results["prior_comparison"].items():
        lines.append(f"- data from **{fam}**: ranked first in {r['wins']} of {r['seeds']} seeds")
    lines += [
        "",
        "## (b) Pareto k_hat of the variational fit against N (per seed)",
        "",
        "| N | Gaussian | Student-t |",
        "|---|---|---|",
    ]
    pk = results["pareto_k"]
    for N in pk["gaussian"]:
        lines.append(f"| {N} | {pk['gaussian'][N]} | {pk['student_t'][N]} |")
    lines += ["", "## (c) SBC chi-square p-values", ""]
    for key, ps in results["sbc"].items():
        lines.append(f"- {key}: " + ", ".join(f"{n} {p:.3g}" for n, p in ps.items()))
    lines += ["", f"Wall time: {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Run the study; ``--seeds`` (default 5 for (a), 3 for (b)), ``--out`` folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the prior comparison")
    parser.add_argument("--pareto-seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("diagnostics_study"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {
        "prior_comparison": prior_comparison(args.seeds),
        "pareto_k": pareto_vs_n(args.pareto_seeds),
        "sbc": sbc_power(),
    }
    results["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    return results


if __name__ == "__main__":
    main()
