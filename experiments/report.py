"""Rebuild a finished run's ``report.html`` from its files:

    python -m experiments.report run=outputs/analyze/<time>       [prototypes=6]
    python -m experiments.report run=outputs/apply/<time>         (an applied run: the same)

The run must agree with its manifest (``run_complete.json``); only ``report.html`` (and
``control/report.html`` for a run with a control) are rewritten, each atomically, and the manifest
is then updated to list them, atomically, while the run directory's lock is held (a job writing
into it meanwhile is waited for by refusing, not raced). Nothing else in the run is touched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dpmodels.analysis.html_report import rebuild_report

from .common import RunDirectoryBusy, run_directory_lock

USAGE = "usage: python -m experiments.report run=<run directory> [prototypes=<patches per cluster>]"


def parse(argv: list[str]) -> dict:
    """``run=DIR`` (required) and ``prototypes=N`` from the command line; ``ValueError`` otherwise."""
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("run", "prototypes") or not value:
            raise ValueError(f"expected run=<dir> [prototypes=N], got {item!r}. {USAGE}")
        args[key] = value
    if "run" not in args:
        raise ValueError(f"no run directory given. {USAGE}")
    if "prototypes" in args:
        if not args["prototypes"].isdigit() or int(args["prototypes"]) < 1:
            raise ValueError(f"prototypes must be a positive integer, got {args['prototypes']!r}.")
        args["prototypes"] = int(args["prototypes"])
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        args = parse(argv)
        run_dir = Path(args.pop("run"))
        if not run_dir.is_dir():
            raise FileNotFoundError(
                f"run directory {run_dir} does not exist; give a finished run of `python -m experiments.analyze` or `python -m experiments.apply`."
            )
        with run_directory_lock(run_dir):
            written = rebuild_report(run_dir, **args)
    except (ValueError, FileNotFoundError, RunDirectoryBusy, PermissionError) as err:
        if os.environ.get("DPMODELS_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
