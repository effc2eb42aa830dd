"""The extraction benchmark runs in quick mode and writes valid JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.bench.extraction import ROW_FIELDS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~10 s on a quiet 2-core machine (a child process, ResNet-18 geometry probes)
def test_quick_benchmark_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "experiments.bench.extraction", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert [r["kind"] for r in rows] == ["throughput", "throughput", "throughput", "store"]
    assert rows[2]["net"] == "efficientnet_lite0"
    assert all(list(r) == ROW_FIELDS for r in rows)
    for r in rows:
        assert r["wall_seconds"] > 0 and math.isfinite(r["images_per_s"]) and r["positions"] > 0
    store = rows[-1]
    assert store["n_images"] == 40 and store["positions"] == 40 * 16 * 16 and store["peak_rss_mib"] > 0
    assert store["stored_gib"] * 2**30 >= 40 * 16 * 16 * 64 * 4  # the whole layer went to disk
    assert "positions_per_s" in proc.stdout and "store" in proc.stdout
