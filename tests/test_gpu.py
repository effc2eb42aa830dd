"""GPU checks (marked ``gpu``; skipped where no CUDA device exists)."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM, fit_batched
from dpmodels.data import PlantedMixture

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_cuda_fit_matches_cpu_fit(cov):
    X, labels = PlantedMixture(6, 16, cov, seed=40).sample(20_000)
    gpu = DPGMM(truncation=20, covariance=cov, device="cuda").fit(X)
    cpu = DPGMM(truncation=20, covariance=cov, device="cpu").fit(X)
    assert gpu.n_active_ == cpu.n_active_ == 6
    assert adjusted_rand_score(labels, gpu.predict(X)) > 0.99
    assert gpu.elbo_ == pytest.approx(cpu.elbo_, rel=1e-3)
    np.testing.assert_allclose(gpu.score_samples(X[:100]), cpu.score_samples(X[:100]), atol=1e-2)


def test_cuda_batched_fits():
    sets = [PlantedMixture(k, 8, "full", seed=50 + k).sample(5000) for k in (3, 4, 5, 6)]
    models = fit_batched([X for X, _ in sets], truncation=15, device="cuda")
    assert [m.n_active_ for m in models] == [3, 4, 5, 6]


def test_nccl_data_parallel_fit_with_one_gpu_as_world_size_one(tmp_path):
    """The NCCL path end to end on one GPU: a world of one rank fits like a plain GPU fit, and the
    same group refuses a CPU fit (NCCL reduces CUDA tensors only)."""
    import torch.distributed as dist

    from dpmodels.distributed import DataParallel, ShardError

    X, _ = PlantedMixture(6, 16, "full", seed=41).sample(20_000)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        group = DataParallel("cuda")
        parallel = DPGMM(truncation=20, device="cuda").fit(X, distributed=group)
        with pytest.raises(ShardError, match="nccl"):
            DPGMM(truncation=20, device="cpu").fit(X)
    finally:
        dist.destroy_process_group()
    plain = DPGMM(truncation=20, device="cuda").fit(X)
    assert group.reduce_calls > 0 and parallel.n_active_ == plain.n_active_ == 6
    assert abs(parallel.elbo_ - plain.elbo_) / len(X) < 1e-4
