"""Extraction: reconstruction of feature maps, subsampling, standardisation, PCA, transfer, stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from dpmodels.activations import apply_transform, extract, load_store
from dpmodels.data import ImageSet


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(inplace=True),
    )


def images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_reconstruction(model: nn.Module, x: torch.Tensor, layers: list[str]) -> None:
    acts = extract(model, x, layers, batch_size=4, progress=False)
    model.eval()
    with torch.no_grad():
        direct = create_feature_extractor(model, return_nodes=layers)(x)
    for name in layers:
        a = acts[name]
        maps = a.to_maps(a.tensor())  # (I, H_l, W_l, C)
        assert torch.allclose(maps.permute(0, 3, 1, 2), direct[name], atol=1e-5), name
        assert a.geometry.map_size == tuple(direct[name].shape[-2:]) and a.num_images == len(x)


def test_reconstruct_small_net_maps():
    check_reconstruction(small_net(), images(7), ["2", "5"])


def test_reconstruct_resnet18_maps():
    torch.manual_seed(0)
    check_reconstruction(torchvision.models.resnet18(weights=None), images(3, 32), ["relu", "layer1"])


def test_reconstruct_small_cnn_maps():
    import dpmodels.nets as nets

    torch.manual_seed(0)
    model = nets.SmallCNN(in_channels=3, num_classes=8)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)][:2]
    check_reconstruction(model, images(3, 32), names)


def test_positions_per_image_subsample():
    x = ImageSet(images(5))
    a = extract(small_net(), x, ["5"], positions_per_image=10, seed=3, progress=False)["5"]
    b = extract(small_net(), x, ["5"], positions_per_image=10, seed=3, batch_size=2, progress=False)["5"]
    c = extract(small_net(), x, ["5"], positions_per_image=10, seed=4, progress=False)["5"]
    assert a.num_points == 50 and a.index[:, 0].bincount().tolist() == [10] * 5
    flat = a.index[:, 0] * 64 + a.index[:, 1] * 8 + a.index[:, 2]
    assert flat.unique().numel() == 50  # no position twice
    assert torch.equal(a.index, b.index)  # the seed fixes the positions, the batch size does not matter
    assert torch.allclose(a.points, b.points, atol=1e-6)
    assert not torch.equal(a.index, c.index)
    full = extract(small_net(), x, ["5"], positions_per_image=1000, progress=False)["5"]
    assert full.num_points == 5 * 64 and a.image_names == x.names


def test_standardize_and_pca_and_transform_reproduces_points():
    model, x = small_net(), images(8)
    raw = extract(model, x, ["2", "5"], progress=False)
    std = extract(model, x, ["2", "5"], standardize=True, progress=False)
    for name in ("2", "5"):
        z = std[name].points.double()
        live = [c for c in range(z.shape[1]) if c not in std[name].meta["constant_channels"]]
        assert torch.allclose(z.mean(0), torch.zeros(z.shape[1], dtype=torch.float64), atol=1e-5)
        assert torch.allclose(
            z[:, live].std(0, unbiased=False), torch.ones(len(live), dtype=torch.float64), atol=1e-4
        )
        assert torch.allclose(std[name].transform.apply(raw[name].points), std[name].points, atol=1e-5)
    pca = extract(model, x, ["2", "5"], standardize=True, pca_dim=3, progress=False)
    p = pca["2"]
    assert p.num_features == 3 and p.transform.components.shape == (3, 6)
    assert torch.allclose(p.transform.apply(raw["2"].points), p.points, atol=1e-5)
    ratio = p.transform.explained_variance_ratio
    assert bool((ratio[:-1] >= ratio[1:]).all()) and float(ratio.sum()) <= 1 + 1e-6
    cov = torch.cov(p.points.T.double(), correction=0)  # principal axes are uncorrelated
    assert torch.allclose(cov - torch.diag(cov.diagonal()), torch.zeros(3, 3, dtype=torch.float64), atol=1e-4)
    keep = extract(model, x, ["5"], pca_dim=50, progress=False)["5"]
    assert keep.num_features == 5 and keep.meta["pca_dim_requested"] == 50


def test_constant_channel_is_floored_and_recorded():
    model = small_net()
    with torch.no_grad():
        model[4].weight[2] = 0.0
        model[4].bias[2] = -1.0  # ReLU-dead channel 2: all zeros
    a = extract(model, images(4), ["5"], standardize=True, progress=False)["5"]
    raw = extract(model, images(4), ["5"], progress=False)["5"].points
    dead = [c for c in range(5) if bool((raw[:, c] == raw[0, c]).all())]
    assert 2 in dead and a.meta["constant_channels"] == dead and torch.all(a.points[:, dead] == 0)
    assert torch.isfinite(a.points).all()


def test_transfer_with_source_transforms():
    model = small_net()
    source = extract(model, images(6, seed=1), ["2"], standardize=True, pca_dim=4, progress=False)
    fitted = {n: a.transform for n, a in source.items()}
    target = extract(model, images(5, seed=2), transforms=fitted, progress=False)["2"]
    raw = extract(model, images(5, seed=2), ["2"], progress=False)
    assert target.transform is fitted["2"] and target.meta["transfer"]
    assert torch.allclose(target.points, fitted["2"].apply(raw["2"].points), atol=1e-6)
    again = apply_transform(raw, fitted)["2"]
    assert torch.allclose(again.points, target.points, atol=1e-6)
    with pytest.raises(ValueError, match="already transformed"):
        apply_transform(source, fitted)
    with pytest.raises(ValueError, match="either transforms="):
        extract(model, images(2), transforms=fitted, standardize=True, progress=False)


def test_store_round_trip_and_no_overwrite(tmp_path):
    model, x = small_net(), images(6)
    mem = extract(model, x, ["2", "5"], standardize=True, pca_dim=3, positions_per_image=20, progress=False)
    disk = extract(
        model, x, ["2", "5"], standardize=True, pca_dim=3, positions_per_image=20, store=tmp_path, batch_size=4,
        progress=False,
    )  # fmt: skip
    for name in ("2", "5"):
        assert isinstance(disk[name].points, np.memmap) and not disk[name].points.flags.writeable
        assert torch.equal(disk[name].index, mem[name].index)
        assert torch.allclose(disk[name].tensor(), mem[name].points, atol=1e-5)
    assert not list(tmp_path.glob("*.raw.npy")) and not list(tmp_path.glob(".*tmp*"))
    back = load_store(tmp_path)
    assert list(back) == ["2", "5"] and back["5"].geometry == mem["5"].geometry
    assert torch.allclose(back["5"].transform.components, mem["5"].transform.components)
    assert np.array_equal(np.asarray(back["2"].points), np.asarray(disk["2"].points))
    assert json.loads((tmp_path / "manifest.json").read_text())["num_images"] == 6
    with pytest.raises(FileExistsError, match=r"2\.npy|manifest"):
        extract(model, x, ["2"], store=tmp_path, progress=False)
    extract(model, x, ["2"], store=tmp_path, overwrite=True, progress=False)
    assert list(load_store(tmp_path)) == ["2"]
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_store(tmp_path / "nothing")


def test_dotted_layer_names_become_safe_file_names(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    acts = extract(net, images(2, 32), ["layer1.0.relu_1"], store=tmp_path, progress=False)
    assert (tmp_path / "layer1_0_relu_1.npy").is_file()
    assert load_store(tmp_path)["layer1.0.relu_1"].num_points == acts["layer1.0.relu_1"].num_points


def test_bad_inputs_are_clear_errors():
    model = small_net()
    with pytest.raises(ValueError, match="share one"):
        extract(model, [torch.rand(3, 16, 16), torch.rand(3, 12, 16)], progress=False)
    with pytest.raises(ValueError, match="takes 3 input channels, the images have 1"):
        extract(model, torch.rand(2, 1, 16, 16), progress=False)
    with pytest.raises(ValueError, match="unknown layer"):
        extract(model, images(2), ["9"], progress=False)
    with pytest.raises(ValueError, match="floating point"):
        extract(model, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), progress=False)


def test_training_flags_restored_and_normalize_applied():
    model = small_net()
    model.train()
    model[1].eval()
    x = images(3)
    a = extract(model, x, ["2"], normalize=([0.5] * 3, [0.25] * 3), progress=False)["2"]
    assert model.training and not model[1].training and model[4].training
    b = extract(model, (x - 0.5) / 0.25, ["2"], progress=False)["2"]
    assert torch.allclose(a.points, b.points, atol=1e-6)
    assert model.training  # BatchNorm running stats untouched by eval-mode extraction
    assert torch.equal(model[1].running_mean, torch.zeros(6))


def test_a_huge_image_is_refused_with_an_estimate_before_any_work(monkeypatch):
    """4000 x 4000 through EfficientNet-Lite0: the probes alone would need ~100 GB; the refusal
    comes from shapes on the meta device, so nothing large is allocated (the image is a view)."""
    import resource

    from dpmodels.infer.memory import InsufficientMemoryError
    from dpmodels.nets import build_net

    monkeypatch.setenv("DPMODELS_MEMORY_LIMIT", "8G")
    model = build_net("efficientnet_lite0", weights=None)
    image = torch.zeros(1, 3, 1, 1).expand(1, 3, 4000, 4000)  # 4000 x 4000 without the memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        InsufficientMemoryError,
        match=r"4000 x 4000 \(at most about \d+ x \d+ fits\).* needs about \d+\.\d GB",
    ):
        extract(model, image, progress=False)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1500, grown_mb  # a copy of the model and one image at most, not the probes
    small = extract(model, torch.rand(2, 3, 64, 64), layers=["stage2"], progress=False)  # normal sizes pass
    assert small["stage2"].points.shape == (2 * 16 * 16, 24)
