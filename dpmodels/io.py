"""Atomic writes: a result file is either the old one or the complete new one, never half written,
and a run directory is either the complete old run or the complete new one.

Every writer goes through :func:`atomic_path`: write to a temporary file in the same directory,
flush it to disk, then ``os.replace`` it over the target (atomic on POSIX and Windows). A whole
set of files is published with :func:`publish_directory` and checked with :func:`manifest_problems`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "MANIFEST",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "file_manifest",
    "manifest_error",
    "manifest_problems",
    "publish_directory",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on failure it is
    removed and ``path`` is left as it was. ``suffix`` keeps writers that look at extensions happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_to_builtin) + "\n")


def _to_builtin(value):
    """JSON for NumPy/torch scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- whole run directories -------------------------------------------------------------------------
# A run writes its outputs into a staging folder; `publish_directory` swaps them in and writes the
# manifest last. The manifest lists every file with its size and SHA-256, so a reader can tell a
# complete set from a mixed or half-swapped one (no manifest, or files that disagree with it).

MANIFEST = "run_complete.json"


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_manifest(root: str | Path, skip: Iterable[str] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` for every file under ``root`` (POSIX separators),
    leaving out the top-level entries named in ``skip``."""
    root, skip = Path(root), set(skip)
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or not path.is_file():
            continue
        files[rel.as_posix()] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    return files


def manifest_error(run_dir: str | Path, problems: list[str]) -> ValueError:
    """The error for a run directory whose files disagree with its manifest (``problems`` from
    :func:`manifest_problems`): the first few problems and what to do."""
    return ValueError(
        f"{run_dir}: the files disagree with {MANIFEST} ({'; '.join(problems[:5])}); the "
        "directory mixes runs or was changed after the run. Rerun the command with overwrite=true."
    )


def manifest_problems(run_dir: str | Path, files: dict[str, dict], full: bool = False) -> list[str]:
    """What in ``run_dir`` disagrees with the manifest ``files``: missing files and wrong sizes
    (and, with ``full``, wrong SHA-256 digests); empty when the set is complete."""
    run_dir, problems = Path(run_dir), []
    for rel, want in files.items():
        path = run_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, the manifest {want['size']}")
        elif full and file_digest(path) != want["sha256"]:
            problems.append(f"{rel} differs from the manifest (SHA-256)")
    return problems


def publish_directory(
    staging: str | Path, run_dir: str | Path, record: dict, keep: Iterable[str] = (), work: Iterable[str] = ()
) -> dict:
    """Replace the results in ``run_dir`` by the contents of ``staging`` (a folder inside it).

    1. the manifest of ``staging`` is computed (``work``: its top-level entries that are not
       results, e.g. checkpoints; they are discarded); 2. the old manifest is removed, so readers
       refuse the directory from here on; 3. every top-level entry of ``run_dir`` except ``keep``
       (and the staging folder) is moved aside; 4. the staged entries are renamed into place;
       5. the manifest (``record`` plus ``files``) is written, atomically and last; 6. the old
       entries and the staging folder are deleted. An interruption anywhere leaves a directory
       without a manifest (refused by readers, finished by rerunning the same command) or the
       complete new run. Returns the manifest."""
    staging, run_dir, work = Path(staging), Path(run_dir), set(work)
    manifest = {**record, "files": file_manifest(staging, skip=work)}
    (run_dir / MANIFEST).unlink(missing_ok=True)
    aside = run_dir / ".replaced"
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    protected = {*keep, staging.name, aside.name, MANIFEST}
    for entry in list(run_dir.iterdir()):
        if entry.name not in protected:
            os.replace(entry, aside / entry.name)
    for entry in sorted(staging.iterdir()):
        if entry.name not in work:
            os.replace(entry, run_dir / entry.name)
    atomic_write_json(run_dir / MANIFEST, manifest)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest
