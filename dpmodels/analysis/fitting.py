"""Fit one DPGMM per layer; a layer's fit never depends on which other layers are fitted.

Each layer is fitted on its own number of positions: a seeded subsample of ``min(fit_points,
positions - held-out)`` that depends only on the seed and the layer's name. By default every
layer gets its own call, so its answer is the one it gets alone. With ``batch_equal_shapes=True``
layers of equal ``(N, D)`` (e.g. several layers capped at ``fit_points`` and projected to
``pca_dim``) share one :func:`dpmodels.fit_batched` call, faster on a GPU; their k-means
initialisations then come from one random stream, so a layer's result can differ from its fit
alone as much as a fit with another seed does. Another disjoint subsample of positions gives a
held-out log-likelihood per layer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..activations.types import LayerActivations
from ..distributed import Shard
from ..estimator import DPGMM, fit_batched
from ..infer.memory import check_memory, estimate_maps_bytes

__all__ = ["LayerFit", "fit_layers", "gather_layers", "layer_rng", "split_images", "split_positions"]

log = logging.getLogger(__name__)


@dataclass
class LayerFit:
    """A layer's fitted mixture and the positions it saw.

    ``fit_index``/``heldout_index`` index ``LayerActivations.points`` (sorted); ``heldout_loglik``
    is the mean posterior predictive log density per held-out position (nats; NaN when no position
    was left over); ``fit_seconds`` is the wall time of the batched call that fitted this layer
    together with ``batch_layers`` (the layers of the same ``(N, D)``)."""

    name: str
    model: DPGMM
    fit_index: np.ndarray
    heldout_index: np.ndarray
    heldout_loglik: float
    fit_seconds: float
    batch_layers: tuple[str, ...]


def read_points(acts: LayerActivations, index: np.ndarray) -> torch.Tensor:
    pts = acts.points
    if isinstance(pts, torch.Tensor):
        return pts[torch.from_numpy(index)].float()
    return torch.from_numpy(np.ascontiguousarray(pts[index], dtype=np.float32))


def split_positions(num_points: int, fit_points: int, heldout_points: int, rng: np.random.Generator):
    """Disjoint sorted index sets (fit, held-out); held-out gets at most a fifth when data are short."""
    perm = rng.permutation(num_points)
    n_held = min(heldout_points, num_points // 5)
    n_fit = min(fit_points, num_points - n_held)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit : n_fit + n_held])


def split_images(index: np.ndarray, fit_points: int, heldout_points: int, rng: np.random.Generator):
    """Disjoint sorted index sets (fit, held-out) for a spatially coupled fit: the fit set holds
    whole images (in a seeded order, as many as ``fit_points`` allows, at least one), so that every
    fit position keeps its grid neighbours; a first image larger than ``fit_points`` contributes a
    band of whole rows. Held-out positions are drawn from the rest."""
    index = np.asarray(index)
    images, counts = np.unique(index[:, 0], return_counts=True)
    order = rng.permutation(len(images))
    chosen, total = [], 0
    for i in order:
        if chosen and total + counts[i] > fit_points:
            break
        chosen.append(images[i])
        total += counts[i]
    fit = np.flatnonzero(np.isin(index[:, 0], chosen))
    if len(fit) > fit_points:  # one image larger than the budget: its first whole rows
        ys = index[fit, 1]
        cumulative = np.cumsum(np.bincount(ys))  # positions in rows 0..y
        fit = fit[ys < max(1, int(np.searchsorted(cumulative, fit_points, side="right")))]
    rest = np.setdiff1d(np.arange(len(index)), fit)
    held = rng.permutation(rest)[: min(heldout_points, len(rest))]
    return np.sort(fit), np.sort(held)


def layer_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one layer's position split: a function of ``seed`` and the name only."""
    tag = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), tag])


def fit_layers(
    acts: dict[str, LayerActivations],
    *,
    fit_points: int = 20_000,
    heldout_points: int = 5_000,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    batch_equal_shapes: bool = False,
    maps_draws: int | None = None,
    coupling: float = 0.0,
    coupled_max_iter: int = 100,
    group=None,
    **dpgmm_kwargs,
) -> dict[str, LayerFit]:
    """Fit every layer of ``acts``; keyword arguments are those of :class:`dpmodels.DPGMM`.

    Every layer is fitted on ``min(fit_points, positions - held-out)`` positions of its own, in a
    call of its own unless ``batch_equal_shapes`` (then layers of equal ``(N, D)`` share one). With ``checkpoint_dir``, every batched call
    checkpoints its fit to a file there (one per group of layers, named by ``N``, ``D`` and a hash
    of the layer names; ``checkpoint_every`` in
    ``dpgmm_kwargs`` sets the interval). Calling again with the same arguments after a crash
    resumes: finished groups return their kept final state at once, an unfinished one goes on from
    its last save, and the results equal those of an uninterrupted call (bit for bit on CPU). The
    files are removed once every group has finished. Before fitting anything, the memory of every
    call (and, with ``maps_draws``, of each layer's maps with that many draws) is checked against
    what is available: :class:`~dpmodels.infer.memory.InsufficientMemoryError` if it would not fit.
    With ``coupling > 0`` each layer gets a :class:`~dpmodels.spatial.SpatialDPGMM` (assignments
    coupled to their grid neighbours), fitted on whole images (:func:`split_images`) in a call of
    its own. Returns the fits in the order of ``acts``.

    With ``group`` (a :class:`~dpmodels.distributed.DataParallel`), ``acts`` are this rank's shards
    (``extract(..., distributed=group)``): the positions are split as one process would split all
    ranks' positions, each rank reads the chosen positions it holds, every fit is data-parallel
    (rank 0 writes the checkpoints), the held-out log-likelihood is averaged over all ranks'
    held-out positions, and ``fit_index``/``heldout_index`` are global (they index the ranks'
    points concatenated in rank order)."""
    if "checkpoint" in dpgmm_kwargs or "keep_checkpoint" in dpgmm_kwargs:
        raise ValueError(
            "fit_layers names its checkpoint files itself; pass checkpoint_dir=... instead of "
            "checkpoint/keep_checkpoint."
        )
    if not acts:
        raise ValueError("fit_layers needs at least one layer; the layer selection matched nothing.")
    if group is not None and coupling > 0:
        raise ValueError(
            "spatially coupled fits (coupling > 0, model=spatial) do not run data-parallel yet: they need "
            "whole images' neighbourhoods in one process; run them in one process or use coupling=0."
        )
    splits, shards = {}, {}
    for name, a in acts.items():
        shards[name] = Shard.of(a.num_points, group)
        total = shards[name].total
        if total < 10:
            raise ValueError(
                f"layer {name!r} has only {total} positions; a mixture needs more data "
                "(use more images or keep every position)."
            )
        if coupling > 0:
            splits[name] = split_images(a.index.numpy(), fit_points, heldout_points, layer_rng(seed, name))
        else:
            splits[name] = split_positions(total, fit_points, heldout_points, layer_rng(seed, name))
    groups: dict[tuple[int, int], list[str]] = {}  # (N, D) -> layers fitted in one batched call
    for name, a in acts.items():
        key = (len(splits[name][0]), a.num_features)
        groups.setdefault(key if batch_equal_shapes and coupling == 0 else (*key, name), []).append(name)
    _check_rank(acts, dpgmm_kwargs)
    _check_memory(acts, groups, maps_draws, dpgmm_kwargs)
    fits: dict[str, LayerFit] = {}
    ckpt_paths: list[Path] = []
    for (N, D, *_), names in groups.items():
        data = [read_points(acts[name], _local(shards[name], splits[name][0])) for name in names]
        log.info("fitting %d layer(s) with D=%d on %d positions each: %s", len(names), D, N, names)
        start = time.perf_counter()
        if checkpoint_dir is not None:
            tag = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
            path = Path(checkpoint_dir) / f"fit_N{N}_D{D}_{tag}.ckpt"
            dpgmm_kwargs = {**dpgmm_kwargs, "checkpoint": path, "keep_checkpoint": True}
            ckpt_paths.append(path)
        if coupling > 0:
            from ..spatial import SpatialDPGMM

            index = acts[names[0]].index[torch.from_numpy(splits[names[0]][0])]
            spatial = SpatialDPGMM(
                coupling=coupling, coupled_max_iter=coupled_max_iter, seed=seed, **dpgmm_kwargs
            )
            models = [spatial.fit(data[0], index)]
        else:
            models = fit_batched(torch.stack(data), seed=seed, distributed=group or False, **dpgmm_kwargs)
        seconds = time.perf_counter() - start
        for name, model in zip(names, models, strict=True):
            fit_idx, held_idx = splits[name]
            held = _heldout_loglik(model, acts[name], shards[name], held_idx)
            fits[name] = LayerFit(name, model, fit_idx, held_idx, float(held), seconds, tuple(names))
    if group is not None and group.rank != 0:
        ckpt_paths, checkpoint_dir = [], None  # rank 0 owns the checkpoint files
    for path in ckpt_paths:  # every group has finished: the kept final states are not needed any more
        path.unlink(missing_ok=True)
    if (
        checkpoint_dir is not None
        and Path(checkpoint_dir).is_dir()
        and not any(Path(checkpoint_dir).iterdir())
    ):
        Path(checkpoint_dir).rmdir()
    return {name: fits[name] for name in acts}


def gather_layers(acts: dict[str, LayerActivations], group) -> dict[str, LayerActivations] | None:
    """Rank 0: every layer with the points and positions of all ranks' shards, concatenated in rank
    order (what one process extracting every image would hold); the other ranks: ``None``."""
    out = {}
    for name, a in acts.items():
        pts = a.points if isinstance(a.points, torch.Tensor) else torch.from_numpy(np.array(a.points))
        parts = group.gather_object((pts.float().cpu(), a.index.cpu()))
        if parts is None:
            continue
        meta = {k: v for k, v in a.meta.items() if k != "shard"}
        if meta.get("store"):
            meta["store"] = str(Path(meta["store"]).parent)  # the store's root, one rank<r> folder per rank
        out[name] = replace(
            a, points=torch.cat([p for p, _ in parts]), index=torch.cat([i for _, i in parts]), meta=meta
        )
    return out if group.rank == 0 else None


def _local(shard: Shard, index: np.ndarray) -> np.ndarray:
    """Positions in this rank's points of the sorted global ``index`` (all of it without a group)."""
    if shard.group is None:
        return index
    return shard.local_rows(torch.from_numpy(np.asarray(index, dtype=np.int64))).numpy()


def _heldout_loglik(model: DPGMM, acts: LayerActivations, shard: Shard, held_idx: np.ndarray) -> float:
    """Mean predictive log density over the held-out positions of all ranks (NaN when there are none)."""
    local = _local(shard, held_idx)
    total = float(model.score_samples(read_points(acts, local).numpy()).sum()) if len(local) else 0.0
    if shard.group is not None:
        (total_t,) = shard.sum(torch.tensor([total], dtype=torch.float64))
        total = float(total_t.item())
    return total / len(held_idx) if len(held_idx) else float("nan")


def _check_rank(acts, dpgmm_kwargs) -> None:
    """Refuse before the first fit a low-rank ``rank`` that some layer is too narrow for."""
    rank = dpgmm_kwargs.get("rank")
    if dpgmm_kwargs.get("covariance") != "lowrank" or rank is None:
        return  # rank=None: min(16, D - 1) per layer
    narrow = {name: a.num_features for name, a in acts.items() if not 1 <= rank < a.num_features}
    if narrow:
        raise ValueError(
            f"covariance='lowrank' needs 1 <= rank < D for every layer, got rank={rank!r} but "
            f"{len(narrow)} layer(s) have D <= rank features: {narrow}; lower rank (the main job's "
            "infer.rank), pass rank=None for min(16, D - 1) per layer, or keep more dimensions "
            "(pca_dim, the main job's layers.pca_dim)."
        )


def _check_memory(acts, groups, maps_draws, dpgmm_kwargs) -> None:
    """Refuse before the first fit when any call, or any layer's maps, would exceed memory."""
    template = DPGMM(**dpgmm_kwargs).validate()
    for (N, D, *_), names in groups.items():
        template._check_memory(len(names), N, D)
    if maps_draws is None:
        return
    for name, a in acts.items():
        K, cov = template.truncation, template.covariance
        check_memory(
            estimate_maps_bytes(
                a.num_points,
                a.num_features,
                K,
                cov,
                maps_draws,
                rank=template._resolved_rank(a.num_features) if cov == "lowrank" else 0,
            ),
            f"the maps of layer {name!r} ({a.num_points} positions, truncation={K}, {maps_draws} draws)",
            "Lower truncation or the number of draws (infer.num_draws), or use covariance='diag'.",
            template._device,
        )
