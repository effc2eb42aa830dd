"""The benchmark entry point: composed in-process, run from the command line, presets and errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.bench.engines import ROW_FIELDS, BenchmarkSettings, resolve_device
from experiments.benchmark import run

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))


def tiny_case(methods: str, **extra: int) -> str:
    """A ``cases=[...]`` override with one small, quickly converging case."""
    fields = {"name": "tiny", "n_points": 500, "n_features": 4, "n_clusters": 3, "truncation": 8, **extra}
    body = ",".join(f"{k}:{v}" for k, v in fields.items())
    return f"cases=[{{{body},methods:[{methods}]}}]"


TINY = ["heldout_points=200", "threads=1", "warmup=false", "fail_fast=true"]


@pytest.fixture
def keep_threads():
    """The benchmark sets torch's thread count for the whole process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_benchmark(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="benchmark", overrides=overrides)


def check_rows(rows: list[dict]) -> None:
    sklearn_ran = any(r["method"] == "sklearn" for r in rows)
    for row in rows:
        assert row["error"] in (None, ""), row
        assert float(row["wall_seconds"]) > 0
        assert -1.0 <= float(row["ari"]) <= 1.0
        assert math.isfinite(float(row["heldout_loglik"]))
        assert float(row["n_active"]) >= 1
        if sklearn_ran:
            assert float(row["speedup_vs_sklearn"]) > 0
        else:
            assert row["speedup_vs_sklearn"] in (None, "")


# 20 Pyro SVI steps leave every component in use: that row rightly warns, the test checks the plumbing
@pytest.mark.filterwarnings("ignore:all 8 components are active:dpmodels.TruncationWarning")
def test_composed_run_writes_rows_for_every_method(tmp_path, keep_threads):
    cfg = compose_benchmark(
        [tiny_case("natural,natural_batched,pyro,sklearn", n_fits=2, pyro_steps=20), *TINY]
    )
    rows = run(cfg, tmp_path)
    methods = [r["method"] for r in rows]
    assert methods == ["natural", "natural_single", "natural_batched", "pyro", "sklearn"]
    check_rows(rows)
    batched = rows[2]
    assert batched["B"] == 2 and batched["batched_over_single"] > 0
    # the planted clusters are far apart: the fast engine and scikit-learn both recover them
    assert rows[0]["ari"] > 0.9 and rows[-1]["ari"] > 0.9
    payload = json.loads((tmp_path / "benchmark.json").read_text())
    assert [r["method"] for r in payload["rows"]] == methods
    assert payload["settings"]["cases"][0]["n_points"] == 500
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files behind


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_cli_run_writes_csv_and_json(tmp_path):
    cmd = [sys.executable, "-m", "experiments.benchmark", f"hydra.run.dir={tmp_path}"]
    cmd += [tiny_case("natural,sklearn"), *TINY]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "natural" in proc.stdout and "vs sklearn" in proc.stdout  # the table
    with open(tmp_path / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["natural", "sklearn"]
    assert list(rows[0]) == list(ROW_FIELDS)
    check_rows(rows)
    assert float(rows[1]["speedup_vs_sklearn"]) == pytest.approx(1.0)
    payload = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(payload["rows"]) == 2 and payload["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_to_valid_settings(preset):
    settings = OmegaConf.to_object(compose_benchmark([f"preset={preset}"]))
    assert isinstance(settings, BenchmarkSettings) and (
        settings.cases
        or settings.extraction.enabled
        or settings.width.enabled
        or settings.scaling.enabled
        or settings.contention.enabled
    )
    names = [case.name for case in settings.cases]
    assert len(set(names)) == len(names)


def test_default_preset_is_quick_and_presets_cover_the_issue():
    assert OmegaConf.to_object(compose_benchmark([])).cases[0].name.startswith("quick")
    assert {"full_cov", "diag", "pyro", "batched", "gpu", "memmap"} <= set(PRESETS)
    gpu = OmegaConf.to_object(compose_benchmark(["preset=gpu"]))
    assert gpu.device == "cuda" and gpu.cases[0].n_points == 1_000_000
    memmap = OmegaConf.to_object(compose_benchmark(["preset=memmap"])).cases[0]
    assert memmap.methods == ["natural_memmap"] and memmap.n_points == 10_000_000


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_extraction_preset_runs_the_extraction_benchmark(tmp_path):
    from experiments.benchmark import run

    cfg = compose_benchmark(["preset=extraction", "extraction.quick=true", "extraction.store_images=8"])
    rows = run(cfg, tmp_path)
    assert {r["kind"] for r in rows} == {"throughput", "store"}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert (tmp_path / "extraction.json").is_file()


def test_misspelled_keys_and_unknown_methods_are_errors():
    with pytest.raises(Exception, match="n_point"):
        compose_benchmark(["cases=[{name:x,n_point:5}]"])
    with pytest.raises(Exception, match="thread"):
        compose_benchmark(["thread=2"])
    with pytest.raises(ValueError, match="methods must be"):
        OmegaConf.to_object(compose_benchmark(["cases=[{name:x,methods:[natrual]}]"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_run_on_gpu(tmp_path, keep_threads):
    cfg = compose_benchmark([tiny_case("natural,natural_batched,sklearn", n_fits=2), *TINY, "device=cuda"])
    rows = run(cfg, tmp_path)
    check_rows(rows)
    assert {r["device"] for r in rows if r["method"] != "sklearn"} == {"cuda"}


def test_memmap_fit_runs_in_a_child_and_removes_its_file(tmp_path, keep_threads, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where TemporaryDirectory puts the file
    cfg = compose_benchmark([tiny_case("natural,natural_memmap", n_points=3000), *TINY])
    rows = run(cfg, tmp_path / "out")
    check_rows(rows)
    natural, memmap = rows
    assert memmap["method"] == "natural_memmap" and natural["peak_rss_mib"] is None
    assert memmap["peak_rss_mib"] > 0 and memmap["wall_seconds"] > 0
    assert -1.0 <= memmap["ari"] <= 1.0
    # the file holds the very points the in-memory fit saw (as float32): the same clusters come back
    assert memmap["ari"] > 0.9 and memmap["n_active"] == natural["n_active"]
    assert not list(scratch.iterdir())  # the temporary directory and its .npy file are gone


@pytest.mark.slow  # child processes
def test_contention_preset_times_one_process_against_two_at_once(tmp_path):
    """Both thread rules, 1 and 2 processes: rows, ratios against the one-process run, files."""
    from experiments.benchmark import run

    rows = run(compose_benchmark(["preset=contention", "contention.quick=true"]), tmp_path)
    assert [(r["threads"], r["processes"]) for r in rows] == [
        ("auto", 1), ("auto", 2), ("all_cores", 1), ("all_cores", 2)
    ]  # fmt: skip
    assert all(r["error"] == "" and r["wall_seconds"] > 0 for r in rows), rows
    assert all(r["ratio"] == 1.0 for r in rows if r["processes"] == 1)
    assert all(len(r["n_active"].split()) == 2 for r in rows)  # every fit of every process reported
    written = json.loads((tmp_path / "contention.json").read_text())
    assert len(written["rows"]) == 4 and (tmp_path / "contention.csv").read_text().startswith("threads,")
    with pytest.raises(ValueError, match="divide contention.fits"):
        run(
            compose_benchmark(["preset=contention", "contention.quick=true", "contention.processes=[3]"]),
            tmp_path,
        )
