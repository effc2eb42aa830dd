"""What every entry point shares: the run directory (its lock, its record, the staged swap of its
results), the configuration checks, the torch thread count, and one clear line per user error.

A run directory holds, besides the results:

- ``.lock``: held (``flock``) by the job writing into the directory; a second one is refused;
- ``run_started.json``: the claim: the resolved config, the overrides and their hash;
- ``.staging/``: where the job writes; its checkpoints let a killed job resume;
- ``run_complete.json``: written last, when the staged results are swapped in: the same record plus
  the manifest of every result file (:func:`dpmodels.io.publish_directory`). Readers
  (``RunOutputs``, ``sweep_summary.csv``) trust this record, not Hydra's ``.hydra/``, which the
  project writes itself only for published results (``hydra.output_subdir`` is null: Hydra would
  rewrite it before any check, also for a run that is then refused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from dpmodels import threads as dpmodels_threads
from dpmodels.io import MANIFEST, atomic_write_json, atomic_write_text, publish_directory

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the run directory is not locked there
    fcntl = None

log = logging.getLogger(__name__)

DONE_FILE = MANIFEST  # run_complete.json
STARTED_FILE = "run_started.json"
LOCK_FILE = ".lock"
STAGING = ".staging"
ERROR_FILE = "error.txt"
ATTEMPTS = ".attempts"  # in a sweep directory: one record per job of the last multirun that failed
WORK_DIRS = ("checkpoints",)  # staged entries that are working state, not results
NOT_HASHED = ("overwrite", "threads")  # how to treat old results and how many threads: not what is computed
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError)
QUOTING = (
    "A path with spaces or non-ASCII characters must be quoted for Hydra inside shell quotes: "
    "'data.root=\"/my photos/été\"'."
)


class RunDirectoryBusy(FileExistsError):
    """Another process holds the run directory's lock."""


# --- the run's record --------------------------------------------------------------------------


def resolved_config(cfg: DictConfig) -> dict:
    """The resolved job config as plain data, without the keys that do not change the results."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_HASHED:
        plain.pop(key, None)
    return plain


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved job config (without Hydra's own section, ``overwrite`` and ``threads``)."""
    return hashlib.sha256(json.dumps(resolved_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _record(cfg: DictConfig) -> dict:
    return {
        "config_hash": config_hash(cfg),
        "config": resolved_config(cfg),
        "overrides": _overrides(),
        "threads": _THREADS.get("count"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def config_diff(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs (``<absent>`` where a side lacks it)."""
    a, b = _flatten(old), _flatten(new)
    missing = "<absent>"
    keys = sorted(a.keys() | b.keys())
    return [
        f"{k}: {a.get(k, missing)} -> {b.get(k, missing)}"
        for k in keys
        if a.get(k, missing) != b.get(k, missing)
    ]


def _what_differs(record: dict, cfg: DictConfig) -> str:
    if "config" not in record:
        return f"config {record.get('config_hash')}, not recorded in detail"
    diff = config_diff(record["config"], resolved_config(cfg))
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    return f"it differs in {shown}"


def should_run(out_dir: Path, cfg: DictConfig, overwrite: bool) -> bool:
    """``False`` when ``out_dir`` already holds the finished results of this exact config (a resumed
    multirun skips it); ``True`` for a fresh directory, an unfinished run of this config (which
    resumes from its checkpoints) or an unfinished run of another config (it produced no results,
    so it does not block); an error naming the differing keys when it holds another config's
    results, unless ``overwrite``. Nothing is written here (see :func:`mark_started`)."""
    done, started = _read(out_dir / DONE_FILE), _read(out_dir / STARTED_FILE)
    digest = config_hash(cfg)
    if done is not None and not overwrite:
        if done.get("config_hash") == digest:
            log.info("%s holds a finished run of this config: skipping (overwrite=true recomputes)", out_dir)
            return False
        raise FileExistsError(
            f"{out_dir} already holds the results of a different run ({_what_differs(done, cfg)}); "
            "choose another hydra.run.dir / hydra.sweep.dir, or pass overwrite=true to replace them."
        )
    if started is not None and started.get("config_hash") == digest:
        log.info("%s holds an unfinished run of this config: resuming it", out_dir)
    elif started is not None and done is None:
        log.warning(
            "%s holds an unfinished run of another config that produced no results (%s): "
            "this run takes its place",
            out_dir,
            _what_differs(started, cfg),
        )
    return True


def mark_started(out_dir: Path, cfg: DictConfig) -> Path:
    """Claim ``out_dir`` for this config (after the checks, before the expensive work) and return
    the staging folder the job writes its results into. An unfinished run of the same config keeps
    its staging folder (and checkpoints); any other staging folder is emptied."""
    staging = out_dir / STAGING
    started = _read(out_dir / STARTED_FILE)
    if staging.exists() and not (started and started.get("config_hash") == config_hash(cfg)):
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / STARTED_FILE, _record(cfg))
    return staging


def mark_done(out_dir: Path, cfg: DictConfig, summary: dict | None = None) -> dict:
    """Publish the staged results: swap them into ``out_dir`` and write ``run_complete.json``
    (the record and the file manifest) last. Returns that manifest."""
    staging = out_dir / STAGING
    hydra_dir = staging / ".hydra"
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(_overrides())))
    if HydraConfig.initialized():
        with contextlib.suppress(Exception):  # Hydra's own settings: informative only
            hydra_yaml = OmegaConf.to_yaml({"hydra": OmegaConf.to_container(HydraConfig.get())})
            atomic_write_text(hydra_dir / "hydra.yaml", hydra_yaml)
    keep = {LOCK_FILE, STARTED_FILE, *(p.name for p in out_dir.glob("*.log"))}
    record = {**_record(cfg), **(summary or {})}
    return publish_directory(staging, out_dir, record, keep=keep, work=WORK_DIRS)


@contextlib.contextmanager
def run_directory_lock(out_dir: Path):
    """Hold an exclusive lock on ``out_dir`` (``.lock``) for the job; another job that wants the
    same directory meanwhile is refused with :class:`RunDirectoryBusy`."""
    if fcntl is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunDirectoryBusy(
                f"another job (process {holder}) is writing into {out_dir} right now; wait for it to "
                "finish, or choose another hydra.run.dir / hydra.sweep.dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- configuration checks ----------------------------------------------------------------------


def unknown_keys(node, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(key, the schema's keys at that level)`` for every key that a node typed by a structured
    schema holds but the schema does not define (what ``+key=value`` can add)."""
    found = []
    if isinstance(node, DictConfig):
        schema = OmegaConf.get_type(node)
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
        for key in node.keys():
            if known is not None and key not in known:
                found.append((f"{prefix}{key}", known))
            else:
                found += unknown_keys(node._get_node(key), f"{prefix}{key}.")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            found += unknown_keys(node._get_node(i), f"{prefix}{i}.")
    return found


def check_config(cfg: DictConfig) -> None:
    """Refuse keys the schema does not know (``ValueError``)."""
    unknown = unknown_keys(cfg)
    if not unknown:
        return
    key, known = unknown[0]
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"did you mean {parent}{close[0]}? " if close else ""
    others = f" (and {', '.join(k for k, _ in unknown[1:])})" if len(unknown) > 1 else ""
    raise ValueError(
        f"unknown config key {key}{others}: the schema has no such key, so '+{key}=...' would be "
        f"ignored; {hint}Valid keys there: {', '.join(known)}."
    )


# --- threads -----------------------------------------------------------------------------------

_THREADS: dict = {}


available_cores = dpmodels_threads.available_cores  # the cores this process may run on


def parallel_jobs(cores: int | None = None) -> int:
    """How many jobs of this multirun run at once on this machine: the joblib launcher's
    ``n_jobs`` (``-1`` = one per core), else 1."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = launcher.get("n_jobs")
    cores = available_cores() if cores is None else cores
    if n is None:
        return 1
    return max(1, cores + 1 + int(n)) if int(n) < 0 else max(1, int(n))


def auto_threads() -> tuple[int, str]:
    """The process's share of the cores, and how it was reached: under the joblib launcher the
    cores over its ``n_jobs`` (its workers' ``OMP_NUM_THREADS`` is joblib's, not the user's), else
    ``OMP_NUM_THREADS`` when set, else all the cores the process may use."""
    cores = available_cores()
    jobs = parallel_jobs(cores)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if jobs == 1 and omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    return max(1, cores // jobs), f"{cores} cores / {jobs} parallel job{'s' if jobs > 1 else ''}"


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``, or the process's share of the cores when ``None``
    (then every fit also shares them with the other processes fitting at the time: :mod:`dpmodels.threads`).
    Inter-op threads are set too where torch still allows it (once, before parallel work)."""
    import torch

    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive number or null (automatic), got {threads}.")
    n, why = (int(threads), "threads") if threads is not None else auto_threads()
    torch.set_num_threads(n)
    # fits take this count as it is when given, else share it with other fitting processes
    dpmodels_threads.set_threads(n if threads is not None else None)
    if not _THREADS.get("interop_set"):
        _THREADS["interop_set"] = True
        with contextlib.suppress(RuntimeError):  # illegal once inter-op work has started
            torch.set_num_interop_threads(n)
    _THREADS["count"] = n
    log.info("torch threads: %d (%s)", n, why)
    return n


# --- one line per user error -------------------------------------------------------------------


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = err.filename or "a folder"
        return (
            f"cannot write to {where} ({err.strerror.lower() if err.strerror else 'permission denied'}): "
            "make it writable or choose another folder: hydra.run.dir=DIR (or hydra.sweep.dir=DIR) "
            "for results, cache_dir=DIR or the DPMODELS_CACHE variable for trained networks."
        )
    message = f"{type(err).__name__}: {err}"
    if _is_collective(err):
        message += (
            " Rerun the same command on every rank to resume from the fit checkpoints; "
            "DPMODELS_DIST_TIMEOUT (seconds) bounds each wait."
        )
    if isinstance(err, FileNotFoundError | NotADirectoryError):
        message += f" {QUOTING}"
    return message


def _is_collective(err: BaseException) -> bool:
    """A failed collective of a data-parallel job (another rank crashed, exited or timed out)."""
    return type(err).__name__ == "CollectiveError" and type(err).__module__ == "dpmodels.distributed"


def _record_attempt(out_dir: Path, status: str, message: str) -> None:
    """In a multirun, note a failed job in ``<sweep dir>/.attempts/`` for ``sweep_summary.csv``."""
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir)
    job = out_dir.relative_to(sweep_dir).as_posix() if out_dir.is_relative_to(sweep_dir) else out_dir.name
    record = {"job": job, "overrides": list(hc.overrides.task), "status": status, "error": message}
    with contextlib.suppress(OSError):
        atomic_write_json(sweep_dir / ATTEMPTS / f"{hc.job.num}.json", record)


@contextlib.contextmanager
def user_errors(out_dir: Path):
    """Turn a user error into one logged line (and ``error.txt`` in the run directory) instead of a
    traceback; Ctrl-C into a line saying how to resume (exit status 130). A single run exits with
    status 1; in a multirun the job is recorded as failed in ``sweep_summary.csv``, the other jobs
    go on, and the multirun exits with status 1. Set ``DPMODELS_TRACEBACK=1`` for the traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get("DPMODELS_TRACEBACK"):
            raise
        log.error("interrupted")
        print(
            f"interrupted: {out_dir} keeps the finished work (its earlier results, if any, are "
            "untouched); rerun the same command to resume.",
            file=sys.stderr,
        )
        sys.exit(130)
    except USER_ERRORS + (OSError, RuntimeError) as err:
        user_error = (
            isinstance(err, USER_ERRORS)
            or _is_collective(err)
            or (isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS))
        )
        if os.environ.get("DPMODELS_TRACEBACK") or not user_error:
            raise
        message = _message(err)
        log.error("%s", message)
        if not isinstance(err, FileExistsError):  # never write into another run's directory
            with contextlib.suppress(OSError):
                atomic_write_text(out_dir / ERROR_FILE, message + "\n")
        print(f"error: {message}", file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)
        _record_attempt(out_dir, "refused" if isinstance(err, FileExistsError) else "failed", message)


@contextlib.contextmanager
def job(cfg: DictConfig, out_dir: Path | None = None, lock: bool = True):
    """Everything around one job: one line per user error, the schema check, torch threads (when
    the config has ``threads``; the count set is what the context yields), and the run-directory
    lock (``lock``)."""
    out_dir = output_dir() if out_dir is None else out_dir
    with user_errors(out_dir):
        check_config(cfg)
        threads = apply_threads(cfg.threads) if "threads" in cfg else None
        with run_directory_lock(out_dir) if lock else contextlib.nullcontext():
            yield threads


def torch_env_from_slurm(env: dict) -> dict:
    """The ``torch.distributed`` variables of one task of a multi-task SLURM step (``srun``, or the
    submitit launcher with ``hydra.launcher.tasks_per_node=N`` / ``nodes=M``), where they are not set
    already: ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``, ``LOCAL_RANK`` =
    ``SLURM_LOCALID``, ``MASTER_ADDR`` = the first host of ``SLURM_JOB_NODELIST`` (plain or
    ``prefix[a-b,c]`` lists), ``MASTER_PORT`` = 15000 + the job id modulo 20000. Empty outside SLURM
    or for a single task."""
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1") or 1) <= 1 or "SLURM_PROCID" not in env:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
    first = nodes.split(",")[0] if "[" not in nodes.split(",")[0] else nodes
    if "[" in first:  # prefix[01-04,07] -> prefix01
        prefix, rest = first.split("[", 1)
        first = prefix + rest.split(",")[0].split("-")[0].rstrip("]")
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR", first),
        "MASTER_PORT": env.get("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)),
    }


def check_same_config(group, cfg: DictConfig) -> None:
    """Refuse, on every rank, a data-parallel job whose ranks were given different configs (other
    overrides per rank): a :class:`~dpmodels.distributed.ShardError` naming the keys that differ."""
    from dpmodels.distributed import ShardError

    configs = group.all_gather_object(resolved_config(cfg))
    differ = [(r, config_diff(configs[0], c)) for r, c in enumerate(configs) if r and c != configs[0]]
    if differ:
        shown = "; ".join(f"rank {r} differs from rank 0 in {', '.join(d[:4])}" for r, d in differ[:3])
        raise ShardError(
            f"the {group.world_size} ranks of this data-parallel job were given different configs ({shown}); "
            "start every rank with the same overrides (torchrun passes one command line to all of them)."
        )


def start_process_group(device: str):
    """The data-parallel group of a job launched by ``torchrun`` or as several SLURM tasks
    (:func:`torch_env_from_slurm`): the default process group, initialised here if needed (``gloo``
    for ``device=cpu``, ``nccl`` for CUDA with each rank on GPU ``LOCAL_RANK``; timeout
    ``DPMODELS_DIST_TIMEOUT`` seconds, default 1800), as a :class:`~dpmodels.distributed.DataParallel`.
    ``None`` for a plain single-process run."""
    os.environ.update(torch_env_from_slurm(dict(os.environ)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from dpmodels.distributed import DataParallel

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = float(os.environ.get("DPMODELS_DIST_TIMEOUT", "1800"))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    group = DataParallel(device)
    if group.rank != 0:  # every rank logs; say which one wrote a line
        tag = _RankTag(group.rank)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)
    log.info("data-parallel: rank %d of %d (%s)", group.rank, group.world_size, group.backend)
    return group


class _RankTag(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def stop_process_group(group, out_dir: Path, shared_dir: Path | None) -> None:
    """Leave the process group. A rank other than 0 whose Hydra picked another run directory than
    rank 0's (time stamps a second apart) moves its log into rank 0's as ``rank<r>.<name>.log`` and
    removes its own directory when nothing else is in it."""
    if group is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if (
        group.rank == 0
        or shared_dir is None
        or not out_dir.is_dir()
        or out_dir.resolve() == shared_dir.resolve()
    ):
        return
    with contextlib.suppress(OSError):
        for path in out_dir.glob("*.log"):
            shutil.move(str(path), str(shared_dir / f"rank{group.rank}.{path.name}"))
        out_dir.rmdir()  # kept when it holds anything else (an error.txt of this rank, say)


SWITCHES = ("importance",)  # config nodes switched on and off as a whole: importance=true


def guard_argv(main):
    """Check the command line before Hydra parses it: Hydra's grammar rejects unquoted non-ASCII
    values with a lexer trace; say how to quote them instead. ``importance=true`` (a node of
    ``SWITCHES`` set to a boolean) is read as ``importance.enabled=true``."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        if not args and not kwargs:
            sys.argv[1:] = [_switch(arg) for arg in sys.argv[1:]]
            for arg in sys.argv[1:]:
                key, sep, value = arg.partition("=")
                if sep and not value.isascii() and not value.startswith(("'", '"')):
                    sys.exit(
                        f"error: the value of {key.lstrip('+~')} holds non-ASCII characters, which Hydra "
                        f"reads only inside quotes: pass '{key}=\"{value}\"' (single quotes for the "
                        "shell, double quotes for Hydra)."
                    )
        return main(*args, **kwargs)

    return wrapper


def _switch(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if sep and key in SWITCHES and value.lower() in ("true", "false"):
        return f"{key}.enabled={value.lower()}"
    return arg
