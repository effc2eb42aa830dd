"""Which entry point made a run directory, and one clear refusal when a reader is pointed at the
wrong kind of run, an unfinished one, a sweep directory or no run at all.

The kind is read from the run's own record (``run_complete.json``, or ``run_started.json`` while it
is unfinished): the files it lists and the shape of its config. Readers (:class:`RunOutputs`, the
notebooks, :class:`dpmodels.transfer.outputs.TransferRun`) call :func:`require_run` first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..io import MANIFEST

__all__ = ["KINDS", "RunKindError", "find_run", "require_run", "run_kind"]

STARTED = "run_started.json"


@dataclass(frozen=True)
class Kind:
    """A kind of run: the entry point that writes it and a quick command that makes one."""

    name: str
    entry: str  # python -m <entry>
    example: str  # a command that makes one quickly
    root: str  # where its runs go by default

    def what(self) -> str:
        return f"a run of `python -m {self.entry}`" + (
            " net=..." if self.name == "transfer_pretrained" else ""
        )


KINDS = {
    "analyze": Kind("analyze", "experiments.analyze", "python -m experiments.analyze experiment=tiny", "outputs/analyze"),
    "transfer": Kind("transfer", "experiments.transfer", "python -m experiments.transfer", "outputs/transfer"),
    "transfer_pretrained": Kind(
        "transfer_pretrained", "experiments.transfer", "python -m experiments.transfer net=efficientnet_lite0",
        "outputs/transfer",
    ),
    "benchmark": Kind("benchmark", "experiments.benchmark", "python -m experiments.benchmark", "outputs/benchmark"),
    "demo": Kind("demo", "experiments.demo", "python -m experiments.demo", "outputs/demo"),
}  # fmt: skip


class RunKindError(ValueError):
    """A reader was pointed at another kind of run (or a sweep directory) than it reads."""


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kind_of(record: dict) -> str | None:
    files = set(record.get("files", {}))
    config = record.get("config", {}) or {}
    if "images.npz" in files or {"layers", "infer", "data"} <= set(config):
        return "analyze"
    if "measured_per_seed.csv" in files or ("scenario" in config and config.get("net") is not None):
        return "transfer_pretrained"
    if "transfer_table.csv" in files or "scenario" in config:
        return "transfer"
    if "preset" in config or files & {"benchmark.json", "width.json", "scaling.json"}:
        return "benchmark"
    if "model" in config and "data" in config:
        return "demo"
    return None


def run_kind(run_dir: str | Path) -> tuple[str | None, bool]:
    """``(kind, finished)`` of ``run_dir``: the kind (a key of :data:`KINDS`, or ``None`` when the
    directory holds no recognisable record) and whether it holds a finished run."""
    run_dir = Path(run_dir)
    done = _read(run_dir / MANIFEST)
    if done is not None and "files" in done:
        return _kind_of(done), True
    started = _read(run_dir / STARTED)
    return (_kind_of(started), False) if started is not None else (None, False)


def _make(kinds: tuple[str, ...]) -> str:
    return " or ".join(f"`{KINDS[k].example}`" for k in kinds)


def require_run(run_dir: str | Path, kinds: str | tuple[str, ...], reader: str = "this reader") -> str:
    """Check that ``run_dir`` holds a finished run of one of ``kinds`` and return its kind; else
    raise one error saying what ``reader`` needs, what the directory holds and the command that makes
    the right run: :class:`FileNotFoundError` for no run or an unfinished one, :class:`RunKindError`
    for another kind of run or a sweep directory."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    run_dir = Path(run_dir)
    needs = " or ".join(dict.fromkeys(KINDS[k].what() for k in kinds))
    hint = f"make one with {_make(kinds)} and point DPMODELS_RUN_DIR at its directory"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{reader} needs {needs}, but {run_dir} is not a directory; {hint}.")
    kind, finished = run_kind(run_dir)
    if kind is None:
        jobs = sorted(p.parent.name for p in run_dir.glob(f"*/{MANIFEST}"))
        if jobs or (run_dir / "multirun.yaml").is_file() or (run_dir / "sweep_summary.csv").is_file():
            shown = ", ".join(jobs[:5]) if jobs else "none finished yet"
            raise RunKindError(
                f"{reader} needs {needs}, but {run_dir} is a sweep directory (a multirun) holding job "
                f"directories ({shown}); point DPMODELS_RUN_DIR at one of them, e.g. {run_dir / (jobs or ['0'])[0]}."
            )
        raise FileNotFoundError(
            f"{reader} needs {needs}, but {run_dir} holds no run ({MANIFEST} and {STARTED} are missing); {hint}."
        )
    if kind not in kinds:
        raise RunKindError(f"{reader} needs {needs}, but {run_dir} holds {KINDS[kind].what()}; {hint}.")
    if not finished:
        record = _read(run_dir / STARTED) or {}
        overrides = " ".join(record.get("overrides", []))
        command = f"python -m {KINDS[kind].entry} {overrides} hydra.run.dir={run_dir}".replace("  ", " ")
        raise FileNotFoundError(
            f"{reader} needs a finished run, but {run_dir} holds an unfinished or interrupted "
            f"{KINDS[kind].what().removeprefix('a ')} (no {MANIFEST} listing its files; a run writes it last): finish it "
            f"with `{command}` (it resumes), or point DPMODELS_RUN_DIR at a finished run."
        )
    return kind


def find_run(
    kinds: str | tuple[str, ...], run_dir: str | Path | None = None, reader: str = "this notebook"
) -> Path:
    """The run a notebook reads: ``run_dir`` (e.g. ``DPMODELS_RUN_DIR``) checked with
    :func:`require_run`, or when empty the newest finished run of ``kinds`` under their default
    output folder (looked up from the working directory and its parents)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if run_dir:
        require_run(run_dir, kinds, reader)
        return Path(run_dir)
    roots = dict.fromkeys(KINDS[k].root for k in kinds)
    for base in (Path.cwd(), *Path.cwd().parents):
        runs = [
            p.parent
            for root in roots
            for p in (base / root).glob(f"*/{MANIFEST}")
            if run_kind(p.parent) in {(k, True) for k in kinds}
        ]
        if runs:
            return max(runs, key=lambda p: (p / MANIFEST).stat().st_mtime)
    needs = " or ".join(dict.fromkeys(KINDS[k].what() for k in kinds))
    raise FileNotFoundError(
        f"{reader} needs {needs}, but there is no finished one under {' or '.join(roots)}; make one with "
        f"{_make(kinds)} or point DPMODELS_RUN_DIR at a finished run."
    )
