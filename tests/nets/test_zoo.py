from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from dpmodels.nets import (
    SmallCNN,
    adapt_input_channels,
    available_nets,
    build_net,
    hub_weights_path,
    save_checkpoint,
)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: any connection attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError("build_net tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_random_init_forward(name, in_channels):
    torch.manual_seed(0)
    model = build_net(name, in_channels=in_channels, num_classes=5)
    assert not model.training
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, 32, 32))
    assert out.shape == (2, 5)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown network 'resnet19'") as info:
        build_net("resnet19")
    assert "small_cnn" in str(info.value) and "resnet18" in str(info.value) and "vgg11_bn" in str(info.value)
    assert {"small_cnn", "resnet18", "alexnet", "vgg11_bn"} <= set(available_nets())


def test_missing_hub_weights_raise_without_downloading(empty_hub):
    with pytest.raises(FileNotFoundError) as info:
        build_net("resnet18", weights="DEFAULT")
    msg = str(info.value)
    assert str(empty_hub / "resnet18-f37072fd.pth") in msg and "https://download.pytorch.org" in msg
    assert not empty_hub.exists() or not any(empty_hub.iterdir())


def test_unknown_weights_name_lists_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_net("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="no published weights"):
        build_net("small_cnn", weights="DEFAULT")


def test_hub_weights_load_when_present(empty_hub):
    torch.manual_seed(1)
    reference = build_net("resnet18")
    path = hub_weights_path("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
    assert path == empty_hub / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # stands in for the published file (same format)
    model = build_net("resnet18", weights="DEFAULT")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and not model.training
    gray = build_net("resnet18", weights="IMAGENET1K_V1", in_channels=1, num_classes=3)
    assert gray.conv1.weight.shape == (64, 1, 7, 7) and gray.fc.out_features == 3
    assert torch.equal(gray.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_local_weights_file(tmp_path):
    trained = SmallCNN(widths=(4, 8), num_classes=3)
    path = save_checkpoint(trained, tmp_path / "net.pt")
    model = build_net("small_cnn", weights=path, widths=(4, 8), num_classes=3)
    assert torch.equal(model.head.weight, trained.head.weight)
    with pytest.raises(FileNotFoundError):
        build_net("resnet18", weights=tmp_path / "absent.pth")


@pytest.mark.parametrize(("old", "new"), [(3, 1), (1, 3)])
def test_adapted_channels_keep_the_response_to_equal_channels(old, new):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=old, widths=(4,)).eval()
    grey = torch.rand(2, 1, 8, 8)
    before = model(grey.expand(-1, old, -1, -1))
    adapt_input_channels(model, new)
    assert model.block1.conv.in_channels == new and model.config["in_channels"] == new
    torch.testing.assert_close(model(grey.expand(-1, new, -1, -1)), before)


def test_adapt_rejects_models_without_convs():
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        adapt_input_channels(nn.Linear(3, 2), 1)
