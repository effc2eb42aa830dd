"""Data-parallel fits on torch.distributed (gloo, 2 processes launched by torchrun).

Each rank holds a shard of one planted data set (1300 and 1700 of 3000 rows); the fit must be the
single-process fit of all rows: the same components and labels (ARI 1), the same ELBO and held-out
log-likelihood within 1e-4 nats per point, and bitwise the same result on both ranks. Bad input on
any rank gives every rank one clear error, and a rank that never arrives gives a timeout error,
not a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM, fit_batched
from dpmodels.infer import NaturalOptions, fit_natural
from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.priors import WeightPrior

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from dp_worker import planted, tiny_images, tiny_net  # noqa: E402

from dpmodels.activations import extract  # noqa: E402

pytestmark = pytest.mark.slow  # two processes launched by torchrun (about 40 s in all)

GOOD = [
    "full",
    "lowrank",
    "diag_minibatch",
    "memmap",
    "batched",
    "warm_start",
    "checkpoint",
    "payload",
    "extract",
]
BAD = [
    "different_width", "empty_shard", "other_settings", "nan_on_one_rank", "pyro_engine", "batched_other_width",
]  # fmt: skip


def launch(out: Path, scenarios: list[str], timeout_s: float = 60, wait_s: float = 300) -> dict:
    env = {**os.environ, "DP_TEST_TIMEOUT": str(timeout_s), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(HERE / "dp_worker.py"), str(out), *scenarios],
        env=env, capture_output=True, text=True, timeout=wait_s,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        name: [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in (0, 1)]
        for name in scenarios
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("dp"), GOOD + BAD)


def ranks_ok(outcome: list[dict]) -> list[dict]:
    assert [o["error"] for o in outcome] == [None, None]
    return [o["result"] for o in outcome]


def assert_same_fit(dp: dict, single: DPGMM, x: np.ndarray, held_out: np.ndarray) -> None:
    """A data-parallel fit's summary against the single-process fit of all rows."""
    n = len(x)
    assert dp["num_points"] == n
    assert dp["n_active"] == single.n_active_
    assert adjusted_rand_score(single.predict(x), dp["labels"]) == 1.0
    assert abs(dp["elbo"] - single.elbo_) / n < 1e-4
    assert abs(dp["held_out"] - single.score(held_out)) < 1e-4
    np.testing.assert_allclose(dp["means"], single.means_, atol=1e-3)


def assert_ranks_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_ranks_equal(a[key], b[key])
        elif isinstance(a[key], (np.ndarray, torch.Tensor)):
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("name", [g for g in GOOD if g != "extract"])
def test_every_rank_ends_with_the_same_posterior(runs, name):
    r0, r1 = ranks_ok(runs[name])
    assert_ranks_equal(r0, r1)


def test_extraction_shards_are_the_single_process_extraction_split_by_image(runs, tmp_path):
    r0, r1 = ranks_ok(runs["extract"])
    kw = dict(positions_per_image=20, pca_dim=3, standardize=True, progress=False, seed=7)
    single = extract(tiny_net(), tiny_images(), **kw)
    assert set(r0) == set(single)
    for name, a in single.items():
        assert r0[name]["shard"] == {"rank": 0, "world_size": 2, "images": [0, 2]}
        assert r1[name]["shard"] == {"rank": 1, "world_size": 2, "images": [2, 5]}
        assert r0[name]["num_images"] == r1[name]["num_images"] == 5
        index = np.concatenate([r0[name]["index"], r1[name]["index"]])
        assert np.array_equal(index, a.index.numpy())  # the same positions, global image numbers
        points = np.concatenate([r0[name]["points"], r1[name]["points"]])
        # PCA from all ranks' moments: the same components, each up to its sign (a sign is fixed by the
        # largest loading, which round-off can move between two near-equal loadings on data this small)
        want = a.points.numpy()
        signs = np.where((points * want).sum(0) < 0, -1.0, 1.0)
        np.testing.assert_allclose(points * signs, want, atol=1e-4)
        np.testing.assert_allclose(
            np.concatenate([r0[name]["memory"], r1[name]["memory"]]), points, atol=1e-6
        )  # the store holds what memory holds
        for r in (r0, r1):
            assert np.array_equal(r[name]["loaded"], r[name]["points"])  # and reads back as a store


def test_full_covariance_fit_equals_the_single_process_fit(runs):
    x, held_out = planted()
    dp = ranks_ok(runs["full"])[0]
    assert_same_fit(dp, DPGMM(truncation=12, seed=3).fit(x), x, held_out)
    assert dp["n_active"] == 4 and dp["bytes_reduced"] > 0


def test_lowrank_fit_with_merges_equals_the_single_process_fit(runs):
    x, held_out = planted()
    dp = ranks_ok(runs["lowrank"])[0]
    single = DPGMM(truncation=12, covariance="lowrank", rank=2, seed=3).fit(x)
    assert_same_fit(dp, single, x, held_out)
    assert dp["merges"] == single.fit_result_.info["merges"] > 0


def test_minibatch_fit_follows_the_same_schedule(runs):
    x, held_out = planted()
    dp = ranks_ok(runs["diag_minibatch"])[0]
    single = DPGMM(truncation=12, covariance="diag", batch_size=300, seed=1).fit(x)
    assert dp["n_iter"] == single.n_iter_
    assert_same_fit(dp, single, x, held_out)


def test_fits_from_memory_mapped_shards(runs, tmp_path):
    x, held_out = planted()
    np.save(tmp_path / "all.npy", x)
    assert_same_fit(
        ranks_ok(runs["memmap"])[0], DPGMM(truncation=12, seed=2).fit(str(tmp_path / "all.npy")), x, held_out
    )


def test_batched_fits_reduce_each_data_set_on_its_own(runs):
    x, held_out = planted()
    second = planted(seed=1)[0]
    dp = ranks_ok(runs["batched"])[0]
    single = fit_batched([x, second], truncation=12, covariance="diag", seed=4)
    assert_same_fit(dp["a"], single[0], x, held_out)
    assert_same_fit(dp["b"], single[1], second, held_out)


def test_warm_start_subsample_is_gathered_from_all_ranks(runs):
    x, _ = planted()
    data = torch.from_numpy(x).unsqueeze(0)
    spec = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(data, "full"), 12)
    single = fit_natural(data, spec, seed=5, options=NaturalOptions(warm_start_points=500, progress=False))
    dp = ranks_ok(runs["warm_start"])[0]
    assert dp["warm"] == 500
    assert abs(float(dp["elbo"][0] - single.elbo[0])) / len(x) < 1e-4
    torch.testing.assert_close(dp["means"], single.params.mean, atol=1e-3, rtol=0)


def test_checkpoint_is_written_by_rank_zero_and_resumed_by_all(runs):
    r0, r1 = ranks_ok(runs["checkpoint"])
    for r in (r0, r1):
        assert r["exists"] and r["still_there"]
        assert r["again"]["n_iter"] == r["first"]["n_iter"] and r["again"]["elbo"] == r["first"]["elbo"]
        assert r["refused"].startswith("FitCheckpointError: rank 0:")
        assert "belongs to another fit" in r["refused"] and "seed" in r["refused"]


def test_payload_per_pass_does_not_grow_with_the_points(runs):
    sizes = ranks_ok(runs["payload"])[0]["bytes"]
    assert sizes[200] == sizes[1000] > 0


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("different_width", ["disagree on D", "rank 0: 4, rank 1: 5"]),
        ("empty_shard", ["rank(s) [1] hold no points", "empty shard"]),
        ("other_settings", ["disagree on settings", "truncation: rank 0 '5', rank 1 '6'"]),
        ("nan_on_one_rank", ["failed on 1 of 2 ranks", "rank 1:", "NaN"]),
        ("pyro_engine", ["failed on every rank", "engine='natural'"]),
        ("batched_other_width", ["fit_batched", "disagree on D"]),
    ],
)
def test_bad_input_on_any_rank_gives_every_rank_one_clear_error(runs, name, words):
    errors = [o["error"] for o in runs[name]]
    assert errors[0] == errors[1] and errors[0].startswith("ShardError")
    for word in words:
        assert word in errors[0]


def test_a_rank_that_never_arrives_gives_a_timeout_error_not_a_hang(tmp_path):
    out = launch(tmp_path, ["missing_rank"], timeout_s=4, wait_s=120)["missing_rank"]
    assert out[0]["error"].startswith("CollectiveError: rank 0 of 2")
    assert "timeout" in out[0]["error"]
    assert out[1]["error"] is None
