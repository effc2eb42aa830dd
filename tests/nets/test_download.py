"""Torchvision weights a user has or allows to be fetched: ``download=True`` goes through torch hub's
loader into the hub cache (the fetch is replaced here: tests never touch the network)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dpmodels.nets import build_net, hub_weights_path
from dpmodels.nets.preprocessing import Preprocessing


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def fake_fetch(url, progress=True, check_hash=False, map_location=None, **_):
        calls.append(url)
        path = hub_weights_path("resnet18", "DEFAULT")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(1)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_fetch)
    return calls


def test_without_permission_nothing_is_fetched_and_the_error_says_how(hub):
    with pytest.raises(FileNotFoundError, match="net.download=true"):
        build_net("resnet18", weights="DEFAULT")
    assert hub == []


def test_download_fetches_into_the_hub_cache_then_loads_with_preprocessing(hub):
    model = build_net("resnet18", weights="DEFAULT", download=True)
    assert len(hub) == 1 and hub[0].endswith(".pth")
    assert hub_weights_path("resnet18", "DEFAULT").is_file()
    assert isinstance(model.preprocessing, Preprocessing)
    assert model.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    build_net("resnet18", weights="DEFAULT", download=True)  # cached now: no second fetch
    assert len(hub) == 1


def test_failed_download_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*_, **__):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="downloading .* failed .*network unreachable"):
        build_net("resnet18", weights="DEFAULT", download=True)


def test_download_is_refused_for_networks_without_hub_weights():
    with pytest.raises(ValueError, match="applies to torchvision weights"):
        build_net("efficientnet_lite0", weights="DEFAULT", download=True)
