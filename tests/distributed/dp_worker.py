"""One rank of a data-parallel test run, launched by ``torchrun`` (see ``test_data_parallel.py``).

``python -m torch.distributed.run --standalone --nproc_per_node=2 dp_worker.py OUT SCENARIO...``

Every rank builds the same planted data set, keeps its shard (rank 0 the first ``split`` rows,
rank 1 the rest), runs each scenario and saves what it got (or the error it raised) to
``OUT/<scenario>.rank<r>.pt``. The test compares the ranks with each other and with a
single-process fit of all the rows.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dpmodels import DPGMM, fit_batched
from dpmodels.activations import extract, load_store
from dpmodels.distributed import DataParallel, Shard
from dpmodels.infer import NaturalOptions, fit_natural
from dpmodels.infer.natural import initial_params
from dpmodels.infer.result import full_pass
from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.priors import WeightPrior

N_TOTAL, SPLIT = 3000, 1300  # rank 0 holds rows [0, SPLIT), rank 1 the rest


def planted(seed: int = 0, n: int = N_TOTAL, d: int = 4, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated Gaussian clusters in ``d`` dimensions, ``n`` training and 1000 held-out rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 6.0, size=(k, d))
    labels = rng.integers(0, k, size=n + 1000)
    x = centres[labels] + rng.normal(size=(n + 1000, d)) * rng.uniform(0.5, 1.5, size=(k, 1))[labels]
    return x[:n].astype(np.float32), x[n:].astype(np.float32)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 3, stride=2),
        torch.nn.ReLU(),
    )


def tiny_images() -> torch.Tensor:
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def shard(x: np.ndarray, rank: int) -> np.ndarray:
    return x[:SPLIT] if rank == 0 else x[SPLIT:]


def summary(model: DPGMM, x: np.ndarray, held_out: np.ndarray) -> dict:
    return {
        "labels": model.predict(x),
        "n_active": model.n_active_,
        "elbo": model.elbo_,
        "num_points": model.fit_result_.num_points,
        "n_iter": model.n_iter_,
        "held_out": model.score(held_out),
        "means": model.means_,
    }


def run(name: str, rank: int, out: Path) -> dict:
    x, held_out = planted()
    mine = shard(x, rank)
    if name == "full":
        group = DataParallel("cpu")
        model = DPGMM(truncation=12, seed=3).fit(mine, distributed=group)
        return {**summary(model, x, held_out), "bytes_reduced": group.bytes_reduced}
    if name == "lowrank":  # merge candidates need per-pair factor statistics summed over ranks
        model = DPGMM(truncation=12, covariance="lowrank", rank=2, seed=3).fit(mine)
        return {**summary(model, x, held_out), "merges": model.fit_result_.info["merges"]}
    if name == "diag_minibatch":
        model = DPGMM(truncation=12, covariance="diag", batch_size=300, seed=1).fit(mine)
        return summary(model, x, held_out)
    if name == "memmap":
        path = out / f"shard{rank}.npy"
        np.save(path, mine)
        return summary(DPGMM(truncation=12, seed=2).fit(str(path)), x, held_out)
    if name == "batched":
        second = planted(seed=1)[0]
        models = fit_batched([mine, shard(second, rank)], truncation=12, covariance="diag", seed=4)
        return {"a": summary(models[0], x, held_out), "b": summary(models[1], second, held_out)}
    if name == "warm_start":  # the engine itself, with a warm start on a gathered subsample
        data = torch.from_numpy(mine).unsqueeze(0)
        base = empirical_base_measure(torch.from_numpy(x).unsqueeze(0), "full")
        spec = ModelSpec(WeightPrior("dp", 1.0), base, 12)
        opts = NaturalOptions(warm_start_points=500, progress=False)
        result = fit_natural(data, spec, seed=5, options=opts, group=DataParallel("cpu"))
        return {"elbo": result.elbo, "means": result.params.mean, "warm": result.info["warm_start"]["points"]}
    if name == "checkpoint":
        ckpt = out / "fit.ckpt"
        first = DPGMM(truncation=12, seed=3, checkpoint=ckpt, keep_checkpoint=True, checkpoint_every=0).fit(
            mine
        )
        dist.barrier()
        exists = ckpt.exists()
        again = DPGMM(truncation=12, seed=3, checkpoint=ckpt, keep_checkpoint=True).fit(mine)
        dist.barrier()
        try:  # the same checkpoint with another seed: refused on every rank, the file untouched
            DPGMM(truncation=12, seed=4, checkpoint=ckpt).fit(mine)
            refused = None
        except ValueError as err:
            refused = f"{type(err).__name__}: {err}"
        return {
            "first": summary(first, x, held_out),
            "again": summary(again, x, held_out),
            "exists": exists,
            "refused": refused,
            "still_there": ckpt.exists(),
        }
    if name == "payload":  # bytes one statistics pass all-reduces, for two shard sizes
        group, sizes = DataParallel("cpu"), {}
        spec = ModelSpec(
            WeightPrior("dp", 1.0), empirical_base_measure(torch.from_numpy(x)[None], "full"), 12
        )
        for n in (200, 1000):
            data = torch.from_numpy(mine[:n]).unsqueeze(0)
            part = Shard.of(n, group)
            params, _, shift = initial_params(data, spec, torch.Generator().manual_seed(0), 500, "cpu", part)
            before = group.bytes_reduced
            full_pass(data, shift, params, 4096, torch.device("cpu"), torch.float32, shard=part)
            sizes[n] = group.bytes_reduced - before
        return {"bytes": sizes}
    if name == "extract":  # this rank's share of 5 images, PCA fitted on all ranks' moments, to a store
        model, images = tiny_net(), tiny_images()
        kw = dict(
            positions_per_image=20, pca_dim=3, standardize=True, progress=False, seed=7, distributed=True
        )
        acts = extract(model, images, store=out / "store", **kw)
        mem = extract(model, images, **kw)  # the same in memory
        loaded = load_store(out / "store" / f"rank{rank}")  # each rank's folder is an ordinary store
        return {
            name: {
                "points": np.asarray(a.points),
                "index": a.index.numpy(),
                "memory": mem[name].points.numpy(),
                "num_images": a.num_images,
                "shard": a.meta["shard"],
                "loaded": np.asarray(loaded[name].points),
            }
            for name, a in acts.items()
        }
    if name == "different_width":
        data = mine if rank == 0 else np.concatenate([mine, mine[:, :1]], axis=1)
        return {"model": DPGMM(truncation=5).fit(data)}
    if name == "empty_shard":
        return {"model": DPGMM(truncation=5).fit(mine if rank == 0 else mine[:0])}
    if name == "other_settings":
        return {"model": DPGMM(truncation=5 + rank).fit(mine)}
    if name == "nan_on_one_rank":
        data = mine.copy()
        if rank == 1:
            data[7, 2] = np.nan
        return {"model": DPGMM(truncation=5).fit(data)}
    if name == "pyro_engine":
        return {"model": DPGMM(truncation=5, engine="pyro").fit(mine)}
    if name == "batched_other_width":
        data = mine if rank == 0 else mine[:, :3]
        return {"model": fit_batched([data, data], truncation=5)}
    if name == "missing_rank":  # rank 1 never calls fit: rank 0 must fail after the group timeout
        if rank == 1:
            time.sleep(12)
            return {"model": None}
        return {"model": DPGMM(truncation=5).fit(mine)}
    raise SystemExit(f"unknown scenario {name!r}")


def main() -> None:
    out, scenarios = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    timeout = float(os.environ.get("DP_TEST_TIMEOUT", "60"))
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
    rank = dist.get_rank()
    for name in scenarios:
        try:
            result = run(name, rank, out)
            result = {k: v for k, v in result.items() if k != "model"}
            error = None
        except Exception as err:  # noqa: BLE001 - every failure is the scenario's outcome
            result, error = {}, f"{type(err).__name__}: {err}"
        torch.save({"result": result, "error": error}, out / f"{name}.rank{rank}.pt")
    if "missing_rank" not in scenarios:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
