"""The library never chooses matplotlib's backend: that is the entry points' and notebooks' business
(``matplotlib.use("Agg")`` on import replaced Jupyter's inline backend, so notebooks showed no figures)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_library_module_calls_matplotlib_use():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "dpmodels").rglob("*.py")
        if "matplotlib.use(" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


@pytest.mark.slow  # a subprocess importing matplotlib and torch
def test_importing_the_plotting_modules_keeps_the_backend_a_user_chose():
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import dpmodels.viz, dpmodels.viz.maps, dpmodels.viz.fit, dpmodels.viz.diagnostics\n"
        "import dpmodels.diagnostics.plots, dpmodels.analysis.report\n"
        "import matplotlib.pyplot as plt\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, check=True
    )
    assert out.stdout.strip().lower() == "svg", out.stderr[-2000:]
