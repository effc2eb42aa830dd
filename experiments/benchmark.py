"""Benchmark the DPGMM engines against scikit-learn on planted-cluster data.

    python -m experiments.benchmark                   # quick cases
    python -m experiments.benchmark preset=full_cov   # one of the presets in conf/preset/
    python -m experiments.benchmark preset=width      # D = 32..512 against scikit-learn (experiments/bench/width.py)
    python -m experiments.benchmark preset=scaling    # 1 and 2 data-parallel processes (experiments/bench/scaling.py)
    python -m experiments.benchmark preset=contention # fits in 1 process vs 2 at once (experiments/bench/contention.py)
    python -m experiments.benchmark device=cuda 'cases=[{name:big,n_points:200000,methods:[natural]}]'

Prints a table and writes ``benchmark.csv`` and ``benchmark.json`` into the Hydra run directory.
The work happens in :mod:`experiments.bench.engines`; ``conf/benchmark.yaml`` lists presets and keys.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dpmodels.io import atomic_write_json
from experiments.bench import extraction as bench_extraction
from experiments.bench.engines import BenchmarkSettings, format_table, run_benchmark, write_results

from .common import guard_argv, job

# Typed schema: conf/benchmark.yaml names it first in its defaults list, so unknown keys are errors.
ConfigStore.instance().store(name="benchmark_schema", node=BenchmarkSettings)


def run(cfg: DictConfig, output_dir: str | os.PathLike) -> list[dict]:
    """Run the benchmark that ``cfg`` describes, print its table, write its files; returns the rows."""
    settings = OmegaConf.to_object(cfg)
    if not isinstance(settings, BenchmarkSettings):
        raise TypeError(f"expected a config built on benchmark_schema, got {type(settings).__name__}.")
    if not (
        settings.cases
        or settings.extraction.enabled
        or settings.width.enabled
        or settings.scaling.enabled
        or settings.contention.enabled
    ):
        raise ValueError("no cases to run; choose a preset (preset=quick) or pass cases=[{name:...}].")
    if settings.extraction.enabled:
        extraction_rows = bench_extraction.run(
            settings.extraction.quick,
            settings.extraction.store_images,
            log=lambda s: print(s, file=sys.stderr),
            zoo=settings.extraction.zoo,
            zoo_images=settings.extraction.zoo_images,
        )
        print(bench_extraction.format_table(extraction_rows))
        atomic_write_json(Path(output_dir) / "extraction.json", {"rows": extraction_rows})
        if not settings.cases:
            return extraction_rows
    if settings.width.enabled:
        from experiments.bench import width

        width_rows = width.run(settings, output_dir)
        if not settings.cases:
            return width_rows
    if settings.scaling.enabled:
        from experiments.bench import scaling

        scaling_rows = scaling.run(settings, output_dir)
        if not settings.cases:
            return scaling_rows
    if settings.contention.enabled:
        from experiments.bench import contention

        contention_rows = contention.run(settings, output_dir)
        if not settings.cases:
            return contention_rows
    rows = run_benchmark(settings)
    print(format_table(rows))
    csv_path, json_path = write_results(rows, output_dir, settings)
    print(f"wrote {csv_path} and {json_path}", file=sys.stderr)
    return rows


@guard_argv
@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python -m experiments.benchmark [preset=NAME] [key=value ...]``."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with job(cfg, out_dir, lock=False) as threads:  # one line per user error, schema check, threads
        cfg.threads = threads  # null: the process's share of the cores, also for scikit-learn
        run(cfg, out_dir)


if __name__ == "__main__":
    main()
