"""The main job is deterministic on CPU: the same command twice (each with a fresh network cache, so
the small CNN is trained twice) writes the same metrics.json byte for byte apart from wall times,
and the same maps; another seed writes other results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp: Path, name: str, *overrides: str) -> Path:
    out = tmp / name
    env = {
        **os.environ,
        "DPMODELS_CACHE": str(tmp / f"cache_{name}"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DPMODELS_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.analyze", "experiment=tiny", f"hydra.run.dir={out}", *overrides],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _without_timings(text: str) -> str:
    """metrics.json's text with every wall time (``timings``, ``*seconds``) set to 0, nothing else touched."""

    def zero(value, key=""):
        if key == "timings" or key.endswith("seconds"):
            return 0 if not isinstance(value, dict) else {k: 0 for k in value}
        if isinstance(value, dict):
            return {k: zero(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [zero(v) for v in value]
        return value

    return json.dumps(zero(json.loads(text)), indent=2)


@pytest.mark.slow  # three tiny CLI runs
def test_the_same_seed_twice_writes_the_same_metrics_and_maps(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    text_a, text_b = (p.joinpath("metrics.json").read_text() for p in (a, b))
    assert text_a != text_b  # the wall times differ ...
    assert _without_timings(text_a) == _without_timings(text_b)  # ... and nothing else
    assert re.search(r'"seconds"|_seconds"', text_a)  # the timings were there to be ignored
    maps = sorted(p.relative_to(a / "maps") for p in (a / "maps").rglob("*.npz"))  # both levels
    assert maps and any(m.parts[0] == "concepts" for m in maps)
    for layer in maps:
        with np.load(a / "maps" / layer) as za, np.load(b / "maps" / layer) as zb:
            assert za.files == zb.files
            for key in za.files:
                assert np.array_equal(za[key], zb[key]), (layer, key)
    other = _run(tmp_path, "other", "seed=1")
    assert _without_timings(other.joinpath("metrics.json").read_text()) != _without_timings(text_a)
