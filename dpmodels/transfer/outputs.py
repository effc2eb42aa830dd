"""Read access to a finished run of ``python -m experiments.transfer`` (either kind: the small CNN's
scenarios, or ``net=...``, which stage of a pretrained network transfers), refused clearly when the
directory holds another kind of run, an unfinished run or no run (:func:`~dpmodels.analysis.kinds.require_run`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..analysis.kinds import require_run
from ..io import MANIFEST, manifest_error, manifest_problems

__all__ = ["TransferRun"]


class TransferRun:
    """One finished transfer run: ``kind`` (``"transfer"``: scenarios of the small CNN;
    ``"transfer_pretrained"``: ``net=...``), ``metrics`` (``metrics.json``), ``table``
    (``transfer_table.csv``: one row per condition or target and layer), ``correlations``
    (``correlations.csv``), ``figures`` (the saved PNG paths) and ``summary`` (``summary.md``)."""

    def __init__(self, run_dir: str | Path, reader: str = "TransferRun"):
        self.run_dir = Path(run_dir)
        self.kind = require_run(self.run_dir, ("transfer", "transfer_pretrained"), reader)
        record = json.loads((self.run_dir / MANIFEST).read_text())
        problems = manifest_problems(self.run_dir, record["files"])
        if problems:
            raise manifest_error(self.run_dir, problems)
        self.record = record
        self.metrics = json.loads((self.run_dir / "metrics.json").read_text())
        self.table = pd.read_csv(self.run_dir / "transfer_table.csv")
        self.correlations = pd.read_csv(self.run_dir / "correlations.csv")

    @property
    def figures(self) -> list[Path]:
        return sorted((self.run_dir / "figures").glob("*.png"))

    @property
    def summary(self) -> str:
        return (self.run_dir / "summary.md").read_text()
