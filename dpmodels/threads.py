"""How many CPU threads a fit uses, so that processes fitting side by side share the cores.

torch starts with one thread per core. Two processes that both fit at once then run twice as many
busy threads as there are cores, and OpenMP's barriers make every one of them wait for the slowest:
six 20 000 x 16 full-covariance fits took 2.6x as long as two processes of three fits each than in
one process, on 2 cores, where sharing them fairly costs nothing. Every fit of this library
therefore runs inside :func:`fit_threads`, which gives it

1. the count set by :func:`set_threads` (or the ``DPMODELS_THREADS`` variable), when there is one;
2. else ``OMP_NUM_THREADS`` when it is set (the user's, or joblib's choice for its workers);
3. else this process's share of the cores it may run on (its CPU affinity): the cores divided by
   the number of processes of this user that are fitting with dpmodels at the moment, and never
   more than torch's own thread count when the fit started (so ``torch.set_num_threads(1)`` before
   a fit still means one thread). Each such process holds a small file named after its process
   id in a folder of the temporary directory while it fits (the folder goes when the last one
   ends); the engines look again at every step (at most every 0.2 s), so a fit started alone
   gives cores back when another one starts, and takes them again when it ends.

A fit's result can depend, in its last digits, on the number of threads (the order of
floating-point sums); set the count explicitly (``set_threads``, ``OMP_NUM_THREADS``) where runs
must be bitwise identical whatever else runs on the machine. The count in force before a fit is
restored after it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["available_cores", "auto_threads", "fit_threads", "fitting_processes", "rebalance", "set_threads"]

_STATE: dict = {"explicit": None, "depth": 0, "saved": None, "checked": 0.0, "token": None}
RECHECK_SECONDS = 0.2


def set_threads(threads: int | None) -> None:
    """Every later fit of this process uses ``threads`` torch threads; ``None`` returns to the
    automatic share (see the module's docstring)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None (automatic), got {threads!r}.")
    _STATE["explicit"] = threads
    if _STATE["depth"]:
        rebalance(force=True)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation or ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _registry() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"dpmodels-fitting-{uid}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def fitting_processes() -> int:
    """How many processes of this user are fitting with dpmodels now (this one included, when it
    is); stale files of processes that have ended are removed."""
    folder = _registry()
    count = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        pid = int(entry.name) if entry.name.isdigit() else None
        if pid is not None and _alive(pid):
            count += 1
        elif pid is not None:
            with contextlib.suppress(OSError):
                entry.unlink()
    return max(count, 1 if _STATE["token"] is not None else 0)


def auto_threads() -> tuple[int, str]:
    """``(threads, why)``: the count a fit would use now, and which rule gave it."""
    if _STATE["explicit"] is not None:
        return _STATE["explicit"], "dpmodels.set_threads"
    for name in ("DPMODELS_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), name
    cores, procs = available_cores(), max(1, fitting_processes())
    share = max(1, cores // procs)
    why = f"{cores} cores / {procs} fitting process{'es' if procs > 1 else ''}"
    torch_threads = _STATE["saved"] if _STATE["depth"] else torch.get_num_threads()
    if torch_threads < share:
        return (
            torch_threads,
            f"torch's {torch_threads} thread{'s' if torch_threads > 1 else ''} (share: {why})",
        )
    return share, why


def rebalance(force: bool = False) -> int:
    """Inside :func:`fit_threads`: set torch's threads to :func:`auto_threads` (at most every
    :data:`RECHECK_SECONDS`, unless ``force``); returns the count in force. The engines call it at
    every step. Outside a fit it changes nothing."""
    if not _STATE["depth"]:
        return torch.get_num_threads()
    now = time.monotonic()
    if force or now - _STATE["checked"] >= RECHECK_SECONDS:
        _STATE["checked"] = now
        n = auto_threads()[0]
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
    return torch.get_num_threads()


def _register() -> None:
    folder, token = _registry(), Path()
    for _ in range(2):  # twice: another process may remove the empty folder between the two steps
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            (folder / str(os.getpid())).touch()
            token = folder / str(os.getpid())
            break
        except OSError:  # an unwritable temporary directory: count this process alone
            continue
    _STATE["token"] = token


def _unregister() -> None:
    token, _STATE["token"] = _STATE["token"], None
    if token and token != Path():
        with contextlib.suppress(OSError):
            token.unlink()
        with contextlib.suppress(OSError):  # the last fitting process leaves no folder behind
            token.parent.rmdir()


@contextlib.contextmanager
def fit_threads() -> Iterator[int]:
    """Run the body (one fit) with this process's share of the cores; re-entrant (a fit inside a
    fit keeps the outer one's registration). Yields the thread count at the start."""
    outer = _STATE["depth"] == 0
    if outer:
        _STATE["saved"] = torch.get_num_threads()
        _register()
    _STATE["depth"] += 1
    try:
        yield rebalance(force=True)
    finally:
        _STATE["depth"] -= 1
        if outer:
            _unregister()
            if torch.get_num_threads() != _STATE["saved"]:
                torch.set_num_threads(_STATE["saved"])
