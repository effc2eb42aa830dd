"""The width benchmark: dpmodels against scikit-learn at the widths real layers have.

    python -m experiments.benchmark preset=width                  # D = 32..512, N = 50 000 (long)
    python -m experiments.benchmark preset=width width.quick=true # seconds, for tests

For every planted data kind (``gaussian``: Gaussian clusters of the fitted covariance type;
``relu``: the same clusters clipped at zero, like ReLU activations; ``factor``: factor-analyser
clusters of rank ``width.rank`` whatever the fitted type, so that diagonal, low-rank and full fits
meet the same correlated data), width ``D`` and covariance type, it draws ``N`` training and a
held-out set from a :class:`~dpmodels.data.PlantedMixture` and fits :class:`dpmodels.DPGMM` and
scikit-learn's ``BayesianGaussianMixture`` (Dirichlet-process prior, k-means init, same truncation,
same thread count; scikit-learn has no low-rank type, so ``lowrank`` rows have no scikit-learn
row; ``DPGMM(covariance="lowrank", rank=width.rank)``). Each fit runs in a fresh child process (spawned, so both sides start alike),
which reports its wall time (fitting only), its peak resident memory above the level before the fit
(``peak_mib``), the held-out log-likelihood (nats per point), the ARI of the training labels and
``K̂`` (components holding more than 1% of the weight). scikit-learn stops at ``sklearn_cap_s``
seconds; such a row says ``> cap`` and its speedup is a lower bound. One table, ``width.csv`` and
``width.json``.
"""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import queue
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dpmodels.data import PlantedMixture
from dpmodels.io import atomic_write_json
from experiments.bench.engines import BenchmarkSettings, WidthSettings, environment

__all__ = ["WIDTH_FIELDS", "plan_cases", "run", "format_width_table"]

WIDTH_FIELDS = tuple(
    "data D covariance N method wall_seconds capped peak_mib heldout_loglik true_heldout_loglik ari "
    "k_hat converged speedup_vs_sklearn speedup_lower_bound error".split()
)
ACTIVE_SHARE = 0.01
DATA_KINDS = ("gaussian", "relu", "factor")
COVARIANCES = ("diag", "lowrank", "full")
QUICK = {
    "dims": [8, 16],
    "n_points": 3000,
    "heldout_points": 500,
    "n_clusters": 4,
    "truncation": 10,
    "rank": 2,
}


def _effective(w: WidthSettings) -> dict:
    cfg = {
        k: getattr(w, k) for k in ("dims", "n_points", "heldout_points", "n_clusters", "truncation", "rank")
    }
    if w.quick:  # small sizes; the widths too unless chosen
        dims = cfg["dims"]
        cfg.update(QUICK)
        if dims != WidthSettings().dims:
            cfg["dims"] = dims
    return cfg


def plan_cases(w: WidthSettings) -> list[dict]:
    """The ``(data, D, covariance, N)`` grid of a run, in order."""
    bad = [c for c in w.covariances if c not in COVARIANCES] + [d for d in w.data if d not in DATA_KINDS]
    if bad:
        raise ValueError(
            f"width: covariances must come from {COVARIANCES} and data from {DATA_KINDS}, got {bad}."
        )
    cfg = _effective(w)
    small = [
        D for D in cfg["dims"] if ("lowrank" in w.covariances or "factor" in w.data) and D <= cfg["rank"]
    ]
    if small:
        raise ValueError(
            f"width: lowrank fits and factor data need every width above width.rank={cfg['rank']}, "
            f"got dims {small}; lower width.rank or drop those widths."
        )
    cases = []
    for data in w.data:
        for D in cfg["dims"]:
            for cov in w.covariances:
                n = cfg["n_points"]
                if cov == "full" and not w.quick:
                    n = int(w.full_n_points.get(str(D), n))
                cases.append({"data": data, "D": int(D), "covariance": cov, "N": n})
    return cases


def _draw(case: dict, cfg: dict, seed: int) -> dict:
    """Training and held-out points of one case (float64), labels and the true held-out density."""
    planted = "lowrank" if case["data"] == "factor" else case["covariance"]
    mixture = PlantedMixture(cfg["n_clusters"], case["D"], covariance=planted, seed=seed, rank=cfg["rank"])
    X, y = mixture.sample(case["N"], seed=seed + 1)
    X_test, _ = mixture.sample(cfg["heldout_points"], seed=seed + 2)
    true_ll = None
    if case["data"] == "relu":
        X, X_test = np.maximum(X, 0.0), np.maximum(X_test, 0.0)
    else:
        true_ll = float(mixture.log_density(X_test).mean())
    return {"X": X, "y": y, "X_test": X_test, "true_ll": true_ll}


def _child(job: dict, out: mp.Queue) -> None:
    """One fit in a fresh process: load the points, say "started", fit, report."""
    try:
        from experiments.bench.engines import _rss_breakdown_mib, _RssSampler

        X = np.load(job["train"])
        X_test = np.load(job["test"])
        y = np.load(job["labels"])
        out.put(("started", None))
        before = _rss_breakdown_mib().get("RssAnon", 0.0)
        if job["method"] == "dpmodels":
            result = _fit_dpmodels(job, X, X_test, _RssSampler)
        else:
            result = _fit_sklearn(job, X, X_test, _RssSampler)
        from sklearn.metrics import adjusted_rand_score

        peak = result.pop("peak_anon")
        result["peak_mib"] = max(0.0, peak - before) if peak else None
        result["ari"] = float(adjusted_rand_score(y, result.pop("labels")))
        out.put(("done", result))
    except Exception as err:  # noqa: BLE001 - reported in the table
        out.put(("error", f"{type(err).__name__}: {err}"))


def _fit_dpmodels(job: dict, X, X_test, sampler_cls) -> dict:
    import torch

    from dpmodels import DPGMM
    from dpmodels.infer import ConvergenceWarning
    from dpmodels.infer.degenerate import DegenerateDataWarning
    from dpmodels.threads import set_threads

    if job["threads"] is not None:  # the count scikit-learn gets, whatever else fits on the machine
        torch.set_num_threads(int(job["threads"]))
        set_threads(int(job["threads"]))
    x = torch.as_tensor(X, dtype=torch.float32)
    rank = job["rank"] if job["covariance"] == "lowrank" else None
    model = DPGMM(truncation=job["truncation"], covariance=job["covariance"], rank=rank, seed=job["seed"])
    with warnings.catch_warnings(), sampler_cls() as sampler:
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateDataWarning)  # clipped data may hold constant channels
        start = time.perf_counter()
        model.fit(x)
        seconds = time.perf_counter() - start
    return {
        "wall_seconds": seconds,
        "peak_anon": sampler.peak.get("RssAnon"),
        "heldout_loglik": model.score(X_test),
        "labels": model.predict(x),
        "k_hat": int((model.weights_ > ACTIVE_SHARE).sum()),
        "converged": model.converged_,
    }


def _fit_sklearn(job: dict, X, X_test, sampler_cls) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    model = BayesianGaussianMixture(
        n_components=job["truncation"],
        covariance_type=job["covariance"],
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0,
        init_params="kmeans",
        max_iter=300,
        random_state=job["seed"],
    )
    with threadpool_limits(limits=job["threads"]), warnings.catch_warnings(), sampler_cls() as sampler:
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(X)
        seconds = time.perf_counter() - start
    return {
        "wall_seconds": seconds,
        "peak_anon": sampler.peak.get("RssAnon"),
        "heldout_loglik": float(model.score(X_test)),
        "labels": model.predict(X),
        "k_hat": int((model.weights_ > ACTIVE_SHARE).sum()),
        "converged": bool(model.converged_),
    }


def _run_child(job: dict, cap: float | None) -> dict:
    """Run ``_child`` in a spawned process; stop it ``cap`` seconds after its data are loaded."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, out), daemon=True)
    proc.start()
    try:
        kind, payload = out.get(timeout=600)  # imports and loading
        if kind == "started":
            kind, payload = out.get(timeout=cap if cap is not None else None)
    except queue.Empty:
        proc.terminate()
        proc.join()
        return {"capped": True}
    proc.join()
    if kind == "error":
        return {"error": payload}
    return {**payload, "capped": False}


def _row(case: dict, method: str, **values) -> dict:
    row = dict.fromkeys(WIDTH_FIELDS)
    row.update(case, method=method, **values)
    return row


def run(
    settings: BenchmarkSettings, output_dir, log=lambda s: print(s, file=sys.stderr, flush=True)
) -> list[dict]:
    """Run the width grid of ``settings.width``; print the table, write ``width.csv`` and ``width.json``
    into ``output_dir``; returns the rows."""
    w = settings.width
    cfg = _effective(w)
    cap = min(60.0, float(w.sklearn_cap_s)) if w.quick else float(w.sklearn_cap_s)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dpmodels-width-") as tmp:
        for case in plan_cases(w):
            drawn = _draw(case, cfg, w.seed)
            paths = {k: str(Path(tmp) / f"{k}.npy") for k in ("train", "test", "labels")}
            np.save(paths["train"], drawn["X"])
            np.save(paths["test"], drawn["X_test"])
            np.save(paths["labels"], drawn["y"])
            job = {
                **paths,
                "covariance": case["covariance"],
                "truncation": cfg["truncation"],
                "rank": cfg["rank"],
                "seed": w.seed,
                "threads": settings.threads,
            }
            methods = ["dpmodels"] + (["sklearn"] if w.sklearn and case["covariance"] != "lowrank" else [])
            case_rows = []
            for method in methods:
                res = _run_child({**job, "method": method}, cap if method == "sklearn" else None)
                row = _row(case, method, true_heldout_loglik=drawn["true_ll"], **res)
                if row["capped"]:
                    row["wall_seconds"] = cap
                case_rows.append(row)
                log(_line(row))
            dp, sk = case_rows[0], case_rows[-1]
            if sk["method"] == "sklearn" and dp["error"] is None and sk["error"] is None:
                dp["speedup_vs_sklearn"] = sk["wall_seconds"] / dp["wall_seconds"]
                dp["speedup_lower_bound"] = bool(sk["capped"])
            rows.extend(case_rows)
    table = format_width_table(rows)
    print(table)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(WIDTH_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "width.csv").write_text(buf.getvalue())
    atomic_write_json(
        out / "width.json",
        {"settings": asdict(w), "threads": settings.threads, "environment": environment(), "rows": rows},
    )
    return rows


def _line(row: dict) -> str:
    head = f"[width] {row['data']:<8} D={row['D']:<4} {row['covariance']:<7} N={row['N']} {row['method']:<8}"
    if row["error"]:
        return f"{head} FAILED: {row['error']}"
    if row["capped"]:
        return f"{head} > cap ({row['wall_seconds']:.0f} s)"
    return (
        f"{head} {row['wall_seconds']:.1f} s, held-out {row['heldout_loglik']:.3f}, ARI {row['ari']:.3f}, "
        f"K={row['k_hat']}, peak {row['peak_mib'] or 0:.0f} MiB"
    )


def _cell(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    if key == "wall_seconds" and row.get("capped"):
        return f">{value:.0f}"
    if key == "speedup_vs_sklearn" and value is not None:
        return (">" if row.get("speedup_lower_bound") else "") + f"{value:.1f}"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


_COLUMNS = (
    ("data", "data", ""),
    ("D", "D", "d"),
    ("cov", "covariance", ""),
    ("N", "N", "d"),
    ("method", "method", ""),
    ("wall s", "wall_seconds", ".1f"),
    ("peak MiB", "peak_mib", ".0f"),
    ("loglik/pt", "heldout_loglik", ".2f"),
    ("true/pt", "true_heldout_loglik", ".2f"),
    ("ARI", "ari", ".3f"),
    ("K^", "k_hat", "d"),
    ("conv", "converged", ""),
    ("x sklearn", "speedup_vs_sklearn", ""),
)


def format_width_table(rows: list[dict]) -> str:
    """One line per (data, width, covariance, method); capped scikit-learn runs read ``>cap``."""
    cells = [[h for h, _, _ in _COLUMNS]] + [[_cell(r, k, s) for _, k, s in _COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.rjust(wd) for c, wd in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        f"FAILED {r['data']}/D={r['D']}/{r['covariance']}/{r['method']}: {r['error']}"
        for r in rows
        if r["error"]
    ]
    return "\n".join(lines)
