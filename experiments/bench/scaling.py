"""The scaling benchmark: one fit in 1, 2, ... data-parallel processes (torch.distributed, gloo).

    python -m experiments.benchmark preset=scaling                     # 2 x 500 000 x 32, full covariance
    python -m experiments.benchmark preset=scaling scaling.quick=true  # seconds, for tests

It draws one planted data set into a ``.npy`` file, then for each process count ``P`` launches
``torchrun --standalone --nproc_per_node=P`` on this module's worker: every rank memory-maps the file,
copies its contiguous share of the rows (rank 0 the first), and fits :class:`dpmodels.DPGMM` on it
inside the process group (the threads of the machine are divided among the ranks). Each rank
reports the wall time of ``fit``, its peak anonymous resident memory above the level before it loaded
its shard (and in total), and the communication of the fit: all-reduce calls, bytes per call and in
all, bytes gathered, seconds inside collectives. The table compares every ``P`` with ``P = 1``:
n_active, ARI of the held-out labels, held-out log-likelihood and ELBO per point, memory per rank.
Writes ``scaling.csv`` and ``scaling.json``; :func:`cost_model` turns the measurements into the
per-pass model ``compute ~ N K D^2 / P`` plus ``all-reduce ~ K D^2`` used to extrapolate.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dpmodels.data import PlantedMixture
from dpmodels.io import atomic_write_json
from experiments.bench.engines import BenchmarkSettings, ScalingSettings, environment

__all__ = ["SCALING_FIELDS", "run", "format_scaling_table", "compare", "cost_model"]

SCALING_FIELDS = tuple(
    "processes rank shard_points threads wall_seconds n_iter n_active elbo_per_point heldout_loglik "
    "peak_mib peak_total_mib reduce_calls largest_reduce_bytes bytes_reduced bytes_gathered "
    "seconds_communicating error".split()
)
QUICK = {"n_points": 4000, "n_features": 4, "n_clusters": 4, "truncation": 10, "heldout_points": 500}


def _effective(s: ScalingSettings) -> dict:
    cfg = {k: getattr(s, k) for k in ("n_points", "n_features", "n_clusters", "truncation", "heldout_points")}
    if s.quick:
        cfg.update(QUICK)
    return cfg


def run(
    settings: BenchmarkSettings, output_dir, log=lambda s: print(s, file=sys.stderr, flush=True)
) -> list[dict]:
    """Run the process counts of ``settings.scaling``; print the table, write ``scaling.csv`` and
    ``scaling.json`` into ``output_dir``; returns one row per process and rank."""
    s = settings.scaling
    if not s.processes or any(p < 1 for p in s.processes):
        raise ValueError(f"scaling.processes must be process counts >= 1, got {s.processes}; try [1, 2].")
    if s.covariance not in ("full", "diag"):
        raise ValueError(f"scaling.covariance must be 'full' or 'diag', got {s.covariance!r}.")
    cfg = _effective(s)
    cores = settings.threads or os.cpu_count() or 1
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dpmodels-scaling-") as tmp:
        mixture = PlantedMixture(cfg["n_clusters"], cfg["n_features"], covariance=s.covariance, seed=s.seed)
        X, _ = mixture.sample(cfg["n_points"], seed=s.seed + 1)
        X_test, _ = mixture.sample(cfg["heldout_points"], seed=s.seed + 2)
        np.save(Path(tmp) / "train.npy", X.astype(np.float32))
        np.save(Path(tmp) / "test.npy", X_test.astype(np.float32))
        del X, X_test
        labels = {}
        for procs in s.processes:
            job = {
                "folder": tmp, "processes": procs, "threads": max(1, cores // procs),
                "truncation": cfg["truncation"], "covariance": s.covariance, "seed": s.seed,
                "timeout_s": s.timeout_s,
            }  # fmt: skip
            log(f"[scaling] {procs} process(es), {job['threads']} thread(s) each, N={cfg['n_points']}")
            found = _launch(job, Path(tmp), s.backend)
            for row in found:
                row["processes"] = procs
                log(_line(row))
            rows.extend(found)
            lab = Path(tmp) / f"labels{procs}.npy"
            if lab.exists():
                labels[procs] = np.load(lab)
        comparison = compare(rows, labels)
    print(format_scaling_table(rows, comparison))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SCALING_FIELDS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (out / "scaling.csv").write_text(buf.getvalue())
    atomic_write_json(
        out / "scaling.json",
        {
            "settings": asdict(s),
            "effective": cfg,
            "environment": environment(),
            "rows": rows,
            "comparison": comparison,
            "cost_model": cost_model(rows, cfg),
        },
    )
    return rows


def _launch(job: dict, folder: Path, backend: str) -> list[dict]:
    """One ``torchrun`` launch; the rows its ranks wrote (or one error row)."""
    procs = job["processes"]
    for old in folder.glob("rank*.json"):
        old.unlink()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        "-m", "experiments.bench.scaling", json.dumps({**job, "backend": backend}),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2]
    )
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    if proc.returncode != 0 or len(rows) != procs:
        tail = (proc.stderr or proc.stdout)[-800:].strip().replace("\n", " | ")
        return [{"processes": procs, "rank": None, "error": f"torchrun exit {proc.returncode}: {tail}"}]
    return sorted(rows, key=lambda r: r["rank"])


def compare(rows: list[dict], labels: dict[int, np.ndarray]) -> list[dict]:
    """Every process count against ``P = 1`` (per the P16 rule in PROTOCOLS.md)."""
    from sklearn.metrics import adjusted_rand_score

    by_p: dict[int, list[dict]] = {}
    for row in rows:
        if row.get("error") is None:
            by_p.setdefault(row["processes"], []).append(row)
    if 1 not in by_p:
        return []
    base = by_p[1][0]
    out = []
    for procs, ranks in sorted(by_p.items()):
        if procs == 1:
            continue
        r0 = ranks[0]
        out.append(
            {
                "processes": procs,
                "same_n_active": r0["n_active"] == base["n_active"],
                "ari": float(adjusted_rand_score(labels[1], labels[procs])) if procs in labels else None,
                "heldout_diff": abs(r0["heldout_loglik"] - base["heldout_loglik"]),
                "elbo_per_point_diff": abs(r0["elbo_per_point"] - base["elbo_per_point"]),
                "ranks_identical": all(
                    r["heldout_loglik"] == r0["heldout_loglik"]
                    and r["elbo_per_point"] == r0["elbo_per_point"]
                    for r in ranks
                ),
                "memory_ratio": max(r["peak_mib"] for r in ranks) / base["peak_mib"]
                if base["peak_mib"]
                else None,
                "speedup": base["wall_seconds"] / max(r["wall_seconds"] for r in ranks),
                "largest_reduce_bytes": max(r["largest_reduce_bytes"] for r in ranks),
            }
        )
    return out


def cost_model(rows: list[dict], cfg: dict) -> dict:
    """Seconds per point-component-D^2 of compute and seconds per all-reduced byte, measured, and the
    per-pass time they predict at larger process counts with the same shard size per process."""
    ok = [r for r in rows if r.get("error") is None and r["processes"] > 1]
    single = [r for r in rows if r.get("error") is None and r["processes"] == 1]
    if not ok or not single:
        return {}
    K, D = cfg["truncation"], cfg["n_features"]
    one = single[0]
    compute = one["wall_seconds"] / (one["n_iter"] * cfg["n_points"] * K * D * D)  # s per n K D^2, 1 process
    worst = max(ok, key=lambda r: r["seconds_communicating"])
    per_byte = worst["seconds_communicating"] / max(worst["bytes_reduced"] + worst["bytes_gathered"], 1)
    payload = worst["largest_reduce_bytes"]
    return {
        "seconds_per_point_component_dsq": compute,
        "communication_seconds_per_byte_upper_bound": per_byte,
        "largest_reduce_bytes": payload,
        "note": (
            "per pass: compute = c * (N / P) * K * D^2 on each rank, all-reduce = payload * 2 (P - 1) / P / "
            "bandwidth (ring); the measured seconds_communicating include waiting for the slower rank, so "
            "the per-byte figure is an upper bound on this machine's gloo cost."
        ),
    }


def _line(row: dict) -> str:
    if row.get("error"):
        return f"[scaling] P={row['processes']} error: {row['error']}"
    return (
        f"[scaling] P={row['processes']} rank {row['rank']}: {row['shard_points']} points, "
        f"{row['wall_seconds']:.1f} s, peak {row['peak_mib']:.0f} MiB, n_active {row['n_active']}, "
        f"held-out {row['heldout_loglik']:.5f}, {row['reduce_calls']} all-reduces "
        f"(largest {row['largest_reduce_bytes']} B)"
    )


def format_scaling_table(rows: list[dict], comparison: list[dict]) -> str:
    head = (
        f"{'P':>2} {'rank':>4} {'points':>9} {'thr':>3} {'fit s':>7} {'iter':>4} {'K^':>3} {'held-out':>10} "
        f"{'peak MiB':>8} {'reduces':>7} {'max B':>8} {'comm s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['processes']:>2} error: {r['error'][:100]}")
            continue
        lines.append(
            f"{r['processes']:>2} {r['rank']:>4} {r['shard_points']:>9} {r['threads']:>3} {r['wall_seconds']:>7.1f} "
            f"{r['n_iter']:>4} {r['n_active']:>3} {r['heldout_loglik']:>10.5f} {r['peak_mib']:>8.0f} "
            f"{r['reduce_calls']:>7} {r['largest_reduce_bytes']:>8} {r['seconds_communicating']:>6.1f}"
        )
    for c in comparison:
        lines.append(
            f"P={c['processes']} vs 1: same K^ {c['same_n_active']}, ARI {c['ari']}, "
            f"|d held-out| {c['heldout_diff']:.2e}, |d ELBO/pt| {c['elbo_per_point_diff']:.2e}, "
            f"memory/rank {c['memory_ratio']:.2f}x, speed-up {c['speedup']:.2f}x, ranks identical {c['ranks_identical']}"
        )
    return "\n".join(lines)


def _worker(job: dict) -> None:
    """One rank (run by torchrun): load this rank's rows, fit in the group, write ``rank<r>.json``."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from dpmodels import DPGMM
    from dpmodels.distributed import DataParallel
    from experiments.bench.engines import _rss_breakdown_mib, _RssSampler

    torch.set_num_threads(job["threads"])
    dist.init_process_group(job["backend"], timeout=timedelta(seconds=job["timeout_s"]))
    rank, size = dist.get_rank(), dist.get_world_size()
    folder = Path(job["folder"])
    row: dict = {"rank": rank, "threads": job["threads"], "error": None}
    try:
        before = _rss_breakdown_mib().get("RssAnon", 0.0)
        with _RssSampler() as sampler:
            mapped = np.load(folder / "train.npy", mmap_mode="r")
            n = len(mapped)
            lo, hi = rank * n // size, (rank + 1) * n // size
            shard = torch.from_numpy(np.array(mapped[lo:hi]))
            del mapped
            group = DataParallel("cpu")  # counts the communication; one process fits alone (the plain path)
            model = DPGMM(truncation=job["truncation"], covariance=job["covariance"], seed=job["seed"])
            start = time.perf_counter()
            model.fit(shard, distributed=group if size > 1 else False)
            seconds = time.perf_counter() - start
        test = np.load(folder / "test.npy")
        row.update(
            shard_points=hi - lo,
            wall_seconds=seconds,
            n_iter=model.n_iter_,
            n_active=model.n_active_,
            elbo_per_point=model.elbo_ / model.fit_result_.num_points,
            heldout_loglik=model.score(test),
            peak_mib=max(0.0, sampler.peak.get("RssAnon", 0.0) - before),
            peak_total_mib=sampler.peak.get("RssAnon", 0.0) + sampler.peak.get("RssFile", 0.0),
            reduce_calls=group.reduce_calls,
            largest_reduce_bytes=group.largest_reduce,
            bytes_reduced=group.bytes_reduced,
            bytes_gathered=group.bytes_gathered,
            seconds_communicating=group.seconds_communicating,
        )
        if rank == 0:
            np.save(folder / f"labels{size}.npy", model.predict(test))
    except Exception as err:  # noqa: BLE001 - reported in the table
        row["error"] = f"{type(err).__name__}: {err}"
    (folder / f"rank{rank}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
