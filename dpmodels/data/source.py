"""Where the engines read points from: tensors, NumPy arrays, or ``.npy`` files memory-mapped from
disk, all seen as ``(B, N, D)`` and read one chunk at a time.

A 10 M x 32 float32 layer is 1.3 GB; with a memory-mapped file only the chunk being processed
(plus the operating system's page cache, which it may drop) occupies memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["CHUNK_ELEMENTS", "PointSource", "chunk_rows", "spool"]

CHUNK_ELEMENTS = 2**20  # values per (B, rows, D) chunk read for a pass over the data (8 MiB in float64)


def chunk_rows(batch: int, features: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a ``(batch, rows, features)`` chunk holds about ``budget`` values: a pass's
    transient memory stays a few such chunks whatever the width (a fixed row count would hold
    ``rows * D`` values, 268 MiB per float64 temporary at D = 512)."""
    return max(256, budget // max(1, batch * features))


class PointSource:
    """A read-only ``(B, N, D)`` view of points.

    ``data``: a tensor or array shaped ``(N, D)`` or ``(B, N, D)``, or the path of a ``.npy`` file
    (opened with ``mmap_mode="r"``). ``repeat`` shows a single ``(N, D)`` set ``repeat`` times
    (restarts) without copying. Indexing ``source[:, idx]`` returns a tensor of that chunk in
    ``dtype`` (float32 by default; float64 sources stay float64).
    """

    def __init__(self, data, repeat: int = 1, name: str = "X"):
        self._mapping: tuple | None = None  # how to re-open a file-backed array for each read
        self._stamp: tuple | None = None  # the file's (size, mtime, inode) when it was opened
        if isinstance(data, PointSource):
            self._mapping, self._stamp, data = data._mapping, data._stamp, data.data
        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise ValueError(
                    f"{name}: no such file {str(path)!r}; pass an existing .npy file or an array."
                )
            try:
                data = np.load(path, mmap_mode="r")
            except ValueError as err:
                raise ValueError(
                    f"{name}: {str(path)!r} is not a readable .npy array ({err}{_truncation(path)}); "
                    "write it again (np.save) and fit the complete file."
                ) from err
        if isinstance(data, np.memmap) and data.filename and data.ndim == 2 and data.flags.c_contiguous:
            root = data  # a slice carries its parent's offset: find this view's own byte offset
            while isinstance(root.base, np.memmap):
                root = root.base
            shift = data.__array_interface__["data"][0] - root.__array_interface__["data"][0]
            self._mapping = (data.filename, data.dtype, root.offset + shift, data.shape)
            self._stamp = _stamp(data.filename)
        if isinstance(data, Tensor):
            data = data.detach()
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if isinstance(data, np.ndarray) and not (
            np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
        ):
            raise ValueError(
                f"{name} must hold numbers, got dtype {data.dtype}; convert with np.asarray(X, float)."
            )
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"{name} must have shape (N, D) or (B, N, D), got shape {tuple(data.shape)}.")
        if repeat > 1:
            if data.shape[0] != 1:
                raise ValueError("repeat applies to a single (N, D) data set only.")
            data = (
                data.expand(repeat, -1, -1)
                if isinstance(data, Tensor)
                else np.broadcast_to(data, (repeat,) + data.shape[1:])
            )
        self.data, self.name = data, name
        src_dtype = (
            data.dtype if isinstance(data, Tensor) else torch.from_numpy(np.zeros(0, data.dtype)).dtype
        )
        self.dtype = torch.float64 if src_dtype == torch.float64 else torch.float32

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.data.shape)

    def __len__(self) -> int:
        return self.shape[1]

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], Tensor):
            key = (key[0], key[1].cpu().numpy() if not isinstance(self.data, Tensor) else key[1])
        if self._mapping is not None:
            # a fresh read per chunk: pages read from disk do not stay in this process's resident memory
            # (the OS page cache keeps them if it has room). The file is checked before and after each
            # read: one truncated or rewritten meanwhile is an error, never garbage or a crash (SIGBUS).
            self._check_unchanged()
            chunk = self._read(key)
            self._check_unchanged()
        else:
            chunk = self.data[key]
            if not isinstance(chunk, Tensor):
                chunk = torch.from_numpy(np.array(chunk))  # a copy of just this chunk
        return chunk.to(self.dtype)

    def _read(self, key) -> Tensor:
        filename, dtype, offset, shape = self._mapping
        rows = key[1] if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) else None
        if isinstance(rows, slice) and rows.step in (None, 1):  # contiguous rows: a plain read (no mapping)
            start, stop, _ = rows.indices(shape[0])
            count = max(stop - start, 0) * shape[1]
            with open(filename, "rb") as fh:
                fh.seek(offset + start * shape[1] * dtype.itemsize)
                flat = np.fromfile(fh, dtype=dtype, count=count)
            if flat.size != count:
                self._check_unchanged(force=True)
            block = flat.reshape(-1, shape[1])[None]
            if self.shape[0] > 1:
                block = np.broadcast_to(block, (self.shape[0],) + block.shape[1:])
            return torch.from_numpy(np.array(block))
        if isinstance(rows, np.ndarray) and rows.ndim == 1 and np.issubdtype(rows.dtype, np.integer):
            block = self._read_rows(rows)[None]  # (1, len(rows), D)
            if self.shape[0] > 1:
                block = np.broadcast_to(block, (self.shape[0],) + block.shape[1:])
            return torch.from_numpy(np.array(block))
        mapped = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
        view = mapped[None]
        if self.shape[0] > view.shape[0]:
            view = np.broadcast_to(view, (self.shape[0],) + view.shape[1:])
        chunk = torch.from_numpy(np.array(view[key]))
        del view, mapped
        return chunk

    def _read_rows(self, rows: np.ndarray, window_bytes: int = 8 * 2**20) -> np.ndarray:
        """Rows ``rows (m,)`` of the file as an ``(m, D)`` array, by plain reads of the windows of at
        most ``window_bytes`` that hold them (in sorted order): a file truncated meanwhile gives a
        short read, which is an error, where a memory map would crash the process (SIGBUS)."""
        filename, dtype, offset, shape = self._mapping
        rows = np.where(rows < 0, rows + shape[0], rows)
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise IndexError(f"{self.name}: row index out of range for {shape[0]} rows.")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        row_bytes = shape[1] * dtype.itemsize
        window = max(1, window_bytes // max(row_bytes, 1))
        out = np.empty((rows.size, shape[1]), dtype=dtype)
        with open(filename, "rb") as fh:
            i = 0
            while i < ordered.size:
                lo = int(ordered[i])
                j = int(np.searchsorted(ordered, lo + window, side="left"))
                hi = int(ordered[j - 1]) + 1
                buf = os.pread(fh.fileno(), (hi - lo) * row_bytes, offset + lo * row_bytes)
                if len(buf) != (hi - lo) * row_bytes:
                    self._check_unchanged(force=True)
                block = np.frombuffer(buf, dtype=dtype).reshape(hi - lo, shape[1])
                out[order[i:j]] = block[ordered[i:j] - lo]
                i = j
        return out

    def _check_unchanged(self, force: bool = False) -> None:
        """Raise ``ValueError`` when the file read has changed since it was opened."""
        filename, dtype, offset, shape = self._mapping
        try:
            now = _stamp(filename)
        except OSError:
            now = None
        if now == self._stamp and not force:
            return
        needed = offset + int(np.prod(shape)) * dtype.itemsize
        size = "gone" if now is None else f"{now[0]} bytes"
        raise ValueError(
            f"{self.name}: {str(filename)!r} changed while it was being read: it was opened as "
            f"{tuple(shape)} {dtype} ({needed} bytes) and is now {size}"
            f"{'' if now is None else ' (truncated)' if now[0] < needed else ' (rewritten)'}. A file must not be truncated or "
            "rewritten while a fit reads it: write new data to a new file (or copy it) and fit again."
        )

    def chunks(self, chunk_size: int):
        """``(start, tensor (B, n, D))`` over all points, in order."""
        for start in range(0, self.shape[1], chunk_size):
            yield start, self[:, start : start + chunk_size]

    def check_finite(self, chunk_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the first rows that hold NaN or Inf."""
        for start, x in self.chunks(chunk_size or chunk_rows(self.shape[0], self.shape[2])):
            if bool(torch.isfinite(x.sum())):  # NaN and Inf reach the sum: a finite sum clears the chunk
                continue  # (one reduction; a sum that overflows is checked value by value below)
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                rows = (torch.nonzero(bad.any(-1).any(0)).flatten()[:5] + start).tolist()
                raise ValueError(
                    f"{self.name} contains NaN or Inf values (first rows: {rows}); drop or impute them before fitting."
                )

    def moments(self, covariance: str, chunk_size: int | None = None, group=None) -> tuple[Tensor, Tensor]:
        """Mean ``(B, D)`` and covariance ``(B, D, D)`` (or variances ``(B, D)``) in float64,
        accumulated chunk by chunk around a first-chunk pivot (numerically stable).

        With ``group`` (a :class:`~dpmodels.distributed.DataParallel`), the moments of the points of
        all ranks together (rank 0's pivot, sums reduced over ranks)."""
        B, N, D = self.shape
        pivot = self[:, : min(N, 1024)].double().cpu().mean(1, keepdim=True)  # (B, 1, D)
        if group is not None:  # every rank centres at rank 0's pivot
            pivot = group.all_reduce(pivot if group.rank == 0 else torch.zeros_like(pivot))[0]
        s1 = torch.zeros(B, D, dtype=torch.float64)
        s2 = torch.zeros((B, D, D) if covariance == "full" else (B, D), dtype=torch.float64)
        for _, x in self.chunks(chunk_size or chunk_rows(B, D)):
            c = x.cpu() - pivot  # float64 (pivot's dtype): one temporary per chunk, not two
            s1 += c.sum(1)
            s2 += c.transpose(1, 2) @ c if covariance == "full" else c.square_().sum(1)
        if group is not None:
            total = torch.tensor([float(N)], dtype=torch.float64)
            s1, s2, total = group.all_reduce(s1, s2, total)
            N = int(total.item())
        mean_c = s1 / N
        denom = max(N - 1, 1)
        if covariance == "full":
            cov = (s2 - N * mean_c.unsqueeze(-1) * mean_c.unsqueeze(-2)) / denom
        else:
            cov = (s2 - N * mean_c.pow(2)) / denom
        return mean_c + pivot.squeeze(1), cov


def _stamp(filename) -> tuple[int, int, int]:
    st = os.stat(filename)
    return st.st_size, st.st_mtime_ns, st.st_ino


def _truncation(path: Path) -> str:
    """``"; its header says ... but it holds ... bytes"`` for a truncated ``.npy`` file, else ``""``."""
    try:
        with open(path, "rb") as fh:
            fmt = np.lib.format
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh)
            start = fh.tell()
        needed = start + int(np.prod(shape)) * dtype.itemsize
        size = path.stat().st_size
    except Exception:  # noqa: BLE001 - not even a readable header: the numpy message says enough
        return ""
    if size >= needed:
        return ""
    return f"; its header says {tuple(shape)} {dtype}, {needed} bytes, but it holds {size}: it is truncated"


def spool(batches, path: str | Path, name: str = "stream") -> np.memmap:
    """Write an iterable of ``(n, D)`` arrays or tensors to a raw float32 file at ``path`` and
    return it as a read-only ``np.memmap`` ``(N, D)``: a one-pass stream becomes data that the
    engines can read many times, in chunks, without holding it in memory."""
    D, N = None, 0
    with open(path, "wb") as fh:
        for i, batch in enumerate(batches):
            arr = batch.detach().cpu().numpy() if isinstance(batch, Tensor) else np.asarray(batch)
            if arr.ndim != 2:
                raise ValueError(f"{name}: batch {i} has shape {arr.shape}; every batch must be (n, D).")
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"{name}: batch {i} holds {arr.dtype}, not numbers.")
            if D is None:
                D = arr.shape[1]
                if D == 0:
                    raise ValueError(f"{name}: batch {i} has no features (shape {arr.shape}).")
            elif arr.shape[1] != D:
                raise ValueError(
                    f"{name}: batch {i} has {arr.shape[1]} features but the earlier batches had {D}; "
                    "every batch must have the same number of columns."
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}: batch {i} contains NaN or Inf; drop or impute them first.")
            fh.write(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
            N += len(arr)
    if N == 0:
        raise ValueError(f"{name}: the stream yielded no points; pass an iterable of (n, D) batches.")
    return np.memmap(path, dtype=np.float32, mode="r", shape=(N, D))
