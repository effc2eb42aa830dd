"""The contention benchmark: fits in one process against the same fits split over processes that
run at the same time, with the library's thread default and with every process on all the cores.

    python -m experiments.benchmark preset=contention                      # 6 fits of 20 000 x 16, full
    python -m experiments.benchmark preset=contention contention.quick=true  # seconds, for tests

Each row is one arrangement: ``processes`` child processes started together, each fitting
``fits / processes`` planted data sets one after the other with :class:`dpmodels.DPGMM`. The
processes draw their data, wait at a common start line, and report when their first fit began and
their last ended; ``wall_seconds`` is the span from the first start to the last end. ``threads``
``auto`` is the library's default (:mod:`dpmodels.threads`: the cores shared among the processes
that fit); ``all_cores`` sets ``DPMODELS_THREADS`` to the machine's cores in every process (what
torch does by itself, the behaviour before). ``ratio`` divides each row's wall time by that of one
process doing all the fits with the same thread rule: 1.0 is a fair share of the cores.
Writes ``contention.csv`` and ``contention.json``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from dpmodels.io import atomic_write_json
from experiments.bench.engines import BenchmarkSettings, ContentionSettings, environment

__all__ = ["CONTENTION_FIELDS", "format_contention_table", "run"]

CONTENTION_FIELDS = ("threads", "processes", "fits_per_process", "wall_seconds", "ratio", "n_active", "error")
QUICK = {"fits": 2, "n_points": 2000, "n_features": 4, "n_clusters": 3, "truncation": 10}
THREAD_RULES = ("auto", "all_cores")


def _effective(s: ContentionSettings) -> dict:
    cfg = {k: getattr(s, k) for k in ("fits", "n_points", "n_features", "n_clusters", "truncation")}
    if s.quick:
        cfg.update(QUICK)
    return cfg


def _worker(spec_file: str, index: int) -> None:
    """One child: draw its data sets, wait for the start line, fit them one after the other, write
    ``result-<index>.json`` beside ``spec_file``."""
    import warnings

    from dpmodels import DPGMM
    from dpmodels.data import PlantedMixture

    spec = json.loads(Path(spec_file).read_text())
    folder = Path(spec_file).parent
    data = [
        PlantedMixture(spec["n_clusters"], spec["n_features"], spec["covariance"], seed=seed).sample(
            spec["n_points"]
        )[0]
        for seed in spec["seeds"][index]
    ]
    (folder / f"ready-{index}").touch()
    go = folder / "go"
    while not go.exists():
        time.sleep(0.005)
    start, active = time.time(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for X, seed in zip(data, spec["seeds"][index], strict=True):
            model = DPGMM(truncation=spec["truncation"], covariance=spec["covariance"], seed=seed)
            active.append(model.fit(X).n_active_)
    out = {"start": start, "end": time.time(), "n_active": active}
    (folder / f"result-{index}.json").write_text(json.dumps(out))


def _arrangement(cfg: dict, processes: int, rule: str, s: ContentionSettings) -> dict:
    """Run ``processes`` children together, each with ``fits / processes`` fits; one row."""
    per = cfg["fits"] // processes
    seeds = [[s.seed + p * per + i for i in range(per)] for p in range(processes)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DPMODELS_THREADS")}
    if rule == "all_cores":
        env["DPMODELS_THREADS"] = str(os.cpu_count() or 1)
    row = {"threads": rule, "processes": processes, "fits_per_process": per, "error": ""}
    with tempfile.TemporaryDirectory(prefix="dpmodels-contention-") as folder:
        spec_file = Path(folder) / "spec.json"
        spec_file.write_text(json.dumps({**cfg, "covariance": s.covariance, "seeds": seeds}))
        code = "import sys; from experiments.bench.contention import _worker; _worker(sys.argv[1], int(sys.argv[2]))"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(spec_file), str(p)], env=env, stderr=subprocess.PIPE
            )
            for p in range(processes)
        ]
        deadline = time.monotonic() + s.timeout_s
        while not all((Path(folder) / f"ready-{p}").exists() for p in range(processes)):
            if any(c.poll() not in (None, 0) for c in children) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        (Path(folder) / "go").touch()
        errors = []
        for child in children:
            try:
                _, err = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                _, err = child.communicate()
                errors.append(f"timed out after {s.timeout_s:g} s")
                continue
            if child.returncode != 0:
                errors.append(err.decode(errors="replace").strip().splitlines()[-1:][0] if err else "failed")
        results = [Path(folder) / f"result-{p}.json" for p in range(processes)]
        if errors or not all(r.exists() for r in results):
            row.update(wall_seconds=float("nan"), n_active="", error="; ".join(errors) or "no result")
            return row
        parts = [json.loads(r.read_text()) for r in results]
    row["wall_seconds"] = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    row["n_active"] = " ".join(str(k) for p in parts for k in p["n_active"])
    return row


def run(
    settings: BenchmarkSettings, output_dir, log=lambda s: print(s, file=sys.stderr, flush=True)
) -> list[dict]:
    """Every arrangement of ``settings.contention``, for both thread rules; prints the table, writes
    ``contention.csv`` and ``contention.json`` into ``output_dir``; returns the rows."""
    s = settings.contention
    cfg = _effective(s)
    counts = sorted({1, *s.processes})
    bad = [p for p in counts if p < 1 or cfg["fits"] % p]
    if bad:
        raise ValueError(
            f"contention.processes must divide contention.fits={cfg['fits']} into whole shares; got {bad}."
        )
    rows = []
    for rule in THREAD_RULES:
        for processes in counts:
            log(f"contention: {processes} process(es) x {cfg['fits'] // processes} fits, threads={rule}")
            rows.append(_arrangement(cfg, processes, rule, s))
        alone = next(r["wall_seconds"] for r in rows if r["threads"] == rule and r["processes"] == 1)
        for r in rows:
            if r["threads"] == rule:
                r["ratio"] = r["wall_seconds"] / alone
    out = Path(output_dir)
    with open(out / "contention.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CONTENTION_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_json(
        out / "contention.json",
        {"settings": {**asdict(s), **cfg}, "rows": rows, "environment": environment("cpu")},
    )
    print(format_contention_table(rows))
    return rows


def format_contention_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'threads':<10} {'processes':>9} {'fits each':>9} {'wall s':>8} {'ratio':>6}  error"]
    for r in rows:
        lines.append(
            f"{r['threads']:<10} {r['processes']:>9} {r['fits_per_process']:>9} {r['wall_seconds']:>8.2f} "
            f"{r.get('ratio', float('nan')):>6.2f}  {r['error']}"
        )
    return "\n".join(lines)
