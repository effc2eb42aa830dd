"""Data-parallel fitting on ``torch.distributed``: every rank holds a shard, all end with one posterior.

The natural-gradient engine is a sum of per-point sufficient statistics followed by a closed-form
update of the globals, so a fit over the union of ``P`` shards needs one all-reduce of the
statistics per pass (``B K D^2`` numbers, whatever the number of points), plus a few small
exchanges: the data moments that standardise the points and set the base measure, the k-means++
subsample that initialises the fit, and the warm-start subsample. Every decision (convergence,
merges, sorting) is taken from reduced numbers, which are bitwise equal on every rank, so all ranks
follow the same path and end with the same posterior: the single-process fit of the concatenated
shards, up to the order of floating-point sums.

Inside an initialised default process group (``torchrun``, SLURM, or
``torch.distributed.init_process_group``), :class:`~dpmodels.DPGMM` and
:func:`~dpmodels.fit_batched` pick the group up themselves (``distributed="auto"``). Ranks are
concatenated in rank order: rank 0's points come first. Backends: ``gloo`` (CPU, or GPU through
host copies) and ``nccl`` (CUDA only). A rank that fails its own checks (bad shard, other settings)
makes every rank raise one ``ValueError`` naming it; a rank that never arrives makes the others
fail after the process group's timeout (``init_process_group(timeout=...)``), never hang forever.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CollectiveError",
    "ShardError",
    "DataParallel",
    "Shard",
    "check_shards",
    "current_group",
    "resolve_group",
]


class ShardError(ValueError):
    """The ranks of a data-parallel fit disagree (shape, settings) or one of them failed its checks."""


class CollectiveError(RuntimeError):
    """A collective operation failed: another rank crashed, left, or did not arrive in time."""


class DataParallel:
    """The default process group seen as a data-parallel group, with a payload counter.

    ``bytes_reduced`` counts the bytes every rank contributes to all-reduces (the statistics) and
    ``largest_reduce`` the largest single one, ``reduce_calls`` their number, ``bytes_gathered``
    the bytes it contributes to all-gathers and broadcasts (subsamples, checks), and
    ``seconds_communicating`` the wall time spent inside collectives (waiting for slower ranks
    included); all start at 0.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "no torch.distributed process group is initialised; launch with torchrun or call "
                "torch.distributed.init_process_group first."
            )
        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend()).lower()
        device = torch.device(device)
        if self.backend not in ("gloo", "nccl"):
            raise ShardError(
                f"data-parallel fits run on the 'gloo' or 'nccl' backend, but the process group uses "
                f"{self.backend!r}; initialise it with backend='gloo' (CPU) or 'nccl' (CUDA)."
            )
        if self.backend == "nccl" and device.type != "cuda":
            raise ShardError(
                f"the process group uses backend 'nccl', which reduces CUDA tensors only, but this fit runs "
                f"on device {str(device)!r}; fit with device='cuda' or initialise the group with backend='gloo'."
            )
        if self.backend == "nccl":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.comm_device = torch.device("cuda", index)
        else:
            self.comm_device = torch.device("cpu")
        self.bytes_reduced = self.largest_reduce = self.reduce_calls = self.bytes_gathered = 0
        self.seconds_communicating = 0.0

    # ---- collectives ---------------------------------------------------------------------------
    def _run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:  # gloo/NCCL timeouts, a peer that crashed or closed the connection
            raise CollectiveError(
                f"rank {self.rank} of {self.world_size}: {name} failed ({_cause(err)}). Another rank crashed, exited "
                "or did not reach the same call within the process group's timeout; every rank must call "
                "the fit with its shard (see that rank's own error), and the timeout is set by "
                "init_process_group(timeout=...)."
            ) from err
        finally:
            self.seconds_communicating += time.perf_counter() - start

    def all_reduce(self, *tensors: Tensor, op: str = "sum") -> list[Tensor]:
        """Element-wise sum (or ``"min"``/``"max"``) over ranks of each tensor, in one message per dtype;
        returns new tensors on each input's device, with its dtype."""
        ops = {"sum": self._dist.ReduceOp.SUM, "min": self._dist.ReduceOp.MIN, "max": self._dist.ReduceOp.MAX}
        out: list[Tensor | None] = [None] * len(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        for idx in by_dtype.values():
            flat = torch.cat([tensors[i].reshape(-1).to(self.comm_device) for i in idx])
            self._run("all_reduce", self._dist.all_reduce, flat, op=ops[op])
            size = flat.numel() * flat.element_size()
            self.bytes_reduced += size
            self.largest_reduce = max(self.largest_reduce, size)
            self.reduce_calls += 1
            offset = 0
            for i in idx:
                t = tensors[i]
                out[i] = flat[offset : offset + t.numel()].reshape(t.shape).to(t.device)
                offset += t.numel()
        return out  # type: ignore[return-value]

    def all_gather_object(self, obj) -> list:
        """``obj`` of every rank, in rank order (picklable objects; small ones)."""
        out = [None] * self.world_size
        self._run("all_gather_object", self._dist.all_gather_object, out, obj)
        self.bytes_gathered += len(_pickle(obj))
        return out

    def gather_object(self, obj, dst: int = 0):
        """Every rank's ``obj`` in rank order on rank ``dst``; ``None`` on the others."""
        out = [None] * self.world_size if self.rank == dst else None
        self._run("gather_object", self._dist.gather_object, obj, out, dst=dst)
        self.bytes_gathered += len(_pickle(obj))
        return out

    def from_rank0(self, fn, what: str, share: bool = True):
        """Rank 0 runs ``fn()``; every rank gets its value (``share=False``: rank 0 keeps it, the others
        get ``None``), or raises: rank 0 its own exception, the others a :class:`ShardError` carrying
        its message (so no rank waits for an answer that will not come)."""
        outcome, value = None, None
        if self.rank == 0:
            try:
                value = fn()
                outcome = ("ok", value if share else None)
            except Exception as err:
                self.broadcast_object(("error", f"{type(err).__name__}: {err}"))
                raise
        kind, shared = self.broadcast_object(outcome)
        if kind == "error":
            raise ShardError(f"{what} failed on rank 0: {shared}")
        return value if self.rank == 0 else shared

    def broadcast_object(self, obj, src: int = 0):
        """Rank ``src``'s ``obj`` on every rank."""
        box = [obj if self.rank == src else None]
        device = self.comm_device if self.backend == "nccl" else None
        self._run("broadcast_object_list", self._dist.broadcast_object_list, box, src=src, device=device)
        if self.rank == src:
            self.bytes_gathered += len(_pickle(obj))
        return box[0]

    def check(self, error: BaseException | None, what: str, local: dict | None = None, **facts) -> list[dict]:
        """Collective check: every rank contributes its local ``error`` (or ``None``), ``facts`` that
        must agree and ``local`` values that may differ; if any rank failed, or a fact differs between
        ranks, every rank raises one :class:`ShardError` naming the ranks. Returns every rank's
        ``local`` dict (rank order) when all agree."""
        mine = {
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "local": local,
            **facts,
        }
        every = self.all_gather_object(mine)
        failed = [(r, e["error"]) for r, e in enumerate(every) if e["error"] is not None]
        if failed:
            messages = {msg for _, msg in failed}
            if len(failed) == self.world_size and len(messages) == 1:
                raise ShardError(f"{what} failed on every rank: {failed[0][1]}") from error
            lines = "; ".join(f"rank {r}: {msg}" for r, msg in failed)
            raise ShardError(
                f"{what} failed on {len(failed)} of {self.world_size} ranks ({lines})."
            ) from error
        for key in facts:
            values = [e[key] for e in every]
            if any(v != values[0] for v in values[1:]):
                if all(isinstance(v, dict) for v in values):  # name the entries that differ
                    keys = sorted({k for v in values for k in v if any(v.get(k) != w.get(k) for w in values)})
                    shown = "; ".join(
                        f"{k}: " + ", ".join(f"rank {r} {v.get(k)!r}" for r, v in enumerate(values))
                        for k in keys
                    )
                else:
                    shown = ", ".join(f"rank {r}: {_short(v)}" for r, v in enumerate(values))
                raise ShardError(
                    f"{what}: the ranks disagree on {key} ({shown}); every rank must call it with the "
                    "same settings and points of the same width."
                )
        return [e["local"] for e in every]


def check_shards(sizes: list[int], what: str) -> None:
    """One clear error when a rank holds no points, or all ranks together fewer than two."""
    empty = [r for r, n in enumerate(sizes) if n < 1]
    if empty:
        raise ShardError(
            f"{what}: rank(s) {empty} hold no points (an empty shard; sizes by rank: {sizes}); give every "
            "rank at least one point (split the data evenly over the ranks) or launch fewer processes."
        )
    if sum(sizes) < 2:
        raise ShardError(f"{what}: all ranks together hold {sum(sizes)} point(s); a fit needs at least 2.")


def current_group(device: torch.device | str = "cpu") -> DataParallel | None:
    """The default process group as a :class:`DataParallel`, or ``None`` outside one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return DataParallel(device)


def resolve_group(distributed, device) -> DataParallel | None:
    """``distributed``: ``"auto"`` (the default process group if one is initialised), ``False``/``None``
    (this process alone), ``True`` (require a process group) or a :class:`DataParallel`."""
    if isinstance(distributed, DataParallel):
        return distributed
    if distributed is None or distributed is False:
        return None
    if distributed == "auto":
        return current_group(device)
    if distributed is True:
        group = current_group(device)
        if group is None:
            raise ValueError(
                "distributed=True but no torch.distributed process group is initialised; launch with "
                "torchrun (or call torch.distributed.init_process_group) or use distributed='auto'."
            )
        return group
    raise ValueError(f"distributed must be 'auto', True, False or None, got {distributed!r}.")


@dataclass
class Shard:
    """Where this rank's ``local`` points sit in the concatenation of all ranks' points.

    ``offset`` is the global index of this rank's first point and ``total`` the number of points
    over all ranks. Without a group, the shard is the whole data set.
    """

    group: DataParallel | None
    local: int
    offset: int
    total: int

    @classmethod
    def of(cls, num_points: int, group: DataParallel | None) -> Shard:
        if group is None:
            return cls(None, num_points, 0, num_points)
        counts = [int(c) for c in group.all_gather_object(int(num_points))]
        return cls(group, num_points, sum(counts[: group.rank]), sum(counts))

    def local_rows(self, idx: Tensor) -> Tensor:
        """The positions, in this rank's data, of the sorted global indices ``idx`` that fall in it."""
        lo = int(torch.searchsorted(idx, self.offset))
        hi = int(torch.searchsorted(idx, self.offset + self.local))
        return idx[lo:hi] - self.offset

    def gather_rows(self, data, idx: Tensor) -> Tensor:
        """Rows ``idx`` (sorted global indices) of the concatenated data ``(B, len(idx), D)``, on every rank."""
        if self.group is None:
            return data[:, idx]
        mine = data[:, self.local_rows(idx)].cpu()
        parts = self.group.all_gather_object(mine)
        return torch.cat(parts, dim=1)

    def sum(self, *tensors: Tensor) -> list[Tensor]:
        """Element-wise sums over ranks (identity without a group)."""
        if self.group is None:
            return list(tensors)
        return self.group.all_reduce(*tensors)


def _cause(err: BaseException) -> str:
    """The backend's error in one short line: gloo's ``[file.cc:545] Read error [...]: Connection reset by
    peer. This is typically caused by ...`` -> ``Read error [...]: Connection reset by peer``."""
    text = " ".join(str(err).split())
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(" This is typically")[0].rstrip(". ")[:300]


def _pickle(obj) -> bytes:
    import pickle

    return pickle.dumps(obj)


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:40] + "…" + hashlib.sha256(text.encode()).hexdigest()[:8]
