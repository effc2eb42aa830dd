"""Layer listing and geometry: hand-computed strides, offsets and fields; planted-square alignment."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dpmodels.activations import conv_layers, format_layers, layer_geometry, list_layers


def plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )


@pytest.mark.parametrize("size", [32, 33])  # even and odd inputs: the geometry does not depend on size
def test_conv_and_pool_geometry_match_hand_computed_values(size):
    g = layer_geometry(plain_net(), ["0", "2", "3"], (3, size, size))
    assert g["0"].stride == (1.0, 1.0) and g["0"].offset == (0.0, 0.0) and g["0"].receptive_field == (3, 3)
    # 2x2 pooling of the 3x3 conv: rows 2y-1 .. 2y+2, centred on 2y + 0.5
    assert g["2"].stride == (2.0, 2.0) and g["2"].offset == (0.5, 0.5) and g["2"].receptive_field == (4, 4)
    assert g["3"].receptive_field == (8, 8) and g["3"].offset == (0.5, 0.5)
    assert g["2"].map_size == (size // 2, size // 2) and g["0"].input_size == (size, size)


def test_strided_unpadded_conv_and_rectangular_kernel():
    net = nn.Sequential(nn.Conv2d(1, 4, (5, 3), stride=(2, 3)))
    g = layer_geometry(net, ["0"], (1, 40, 40))["0"]
    # no padding: output (y, x) covers rows 2y .. 2y+4 and columns 3x .. 3x+2
    assert g.stride == (2.0, 3.0) and g.offset == (2.0, 1.0) and g.receptive_field == (5, 3)


def test_resnet18_geometry_at_64px():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    infos = {i.name: i for i in list_layers(net, (3, 64, 64), layers=["relu", "maxpool", "layer1", "layer2"])}
    # stem 7x7/2 pad 3 -> centres 2y; 3x3/2 max-pool -> 4y, field 7 + 2*2; each 3x3 conv at stride s adds 2s
    assert infos["relu"].geometry.receptive_field == (7, 7) and infos["relu"].geometry.stride == (2.0, 2.0)
    assert infos["maxpool"].geometry.receptive_field == (11, 11)
    l1 = infos["layer1"].geometry
    assert l1.stride == (4.0, 4.0) and l1.offset == (0.0, 0.0) and l1.receptive_field == (11 + 4 * 8,) * 2
    assert infos["layer1"].shape == (64, 16, 16) and infos["layer1"].module_type == "Sequential"
    l2 = infos["layer2"].geometry  # field 99 > 64: measured on enlarged probes
    assert l2.stride == (8.0, 8.0) and l2.offset == (0.0, 0.0) and l2.receptive_field == (99, 99)
    table = format_layers(list(infos.values()))
    assert "layer1" in table and "43" in table and len(table.splitlines()) == 6


def test_planted_square_lands_within_a_stride_of_its_map_position():
    net = plain_net().eval()
    g = layer_geometry(net, ["3"], (3, 32, 32))["3"]
    rng = torch.Generator().manual_seed(3)
    for _ in range(5):
        cy, cx = (int(v) for v in torch.randint(6, 26, (2,), generator=rng))
        base = torch.zeros(1, 3, 32, 32)
        bright = base.clone()
        bright[..., cy - 1 : cy + 2, cx - 1 : cx + 2] = 5.0  # a 3x3 square centred on (cy, cx)
        with torch.no_grad():
            change = (net[:4](bright) - net[:4](base)).abs().sum(1)[0]  # (H_l, W_l)
        y, x = divmod(int(change.argmax()), change.shape[1])
        ys, xs = g.centres()
        assert abs(ys[y] - cy) <= g.stride[0] and abs(xs[x] - cx) <= g.stride[1]
        y0, y1, x0, x1 = g.patch_box(y, x)
        assert y0 <= cy < y1 and x0 <= cx < x1


def test_list_layers_keeps_only_spatial_nodes_and_leaves_model_alone():
    net = torchvision.models.resnet18(weights=None)
    net.train()
    net.layer1.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = [i.name for i in list_layers(net, (3, 32, 32), layers=["conv1", "layer1.0.add"])]
    assert names == ["conv1", "layer1.0.add"]
    assert net.training and not net.layer1.training and net.layer2.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="do not output a"):
        list_layers(net, (3, 32, 32), layers=["fc"])


def test_unknown_layer_names_list_valid_ones_and_close_matches():
    with pytest.raises(
        ValueError, match=r"'layer1\.0\.rleu'.*did you mean 'layer1\.0\.relu'.*Valid names: conv1"
    ):
        list_layers(torchvision.models.resnet18(weights=None), (3, 32, 32), layers=["layer1.0.rleu"])
    with pytest.raises(ValueError, match="input_size must be"):
        list_layers(plain_net(), (32, 32))


def test_default_layer_selection():
    assert conv_layers(torchvision.models.resnet18(weights=None), (3, 64, 64)) == [
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert conv_layers(plain_net(), (3, 16, 16)) == ["1", "4"]  # each conv's ReLU
    assert conv_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), (3, 16, 16)) == ["0", "1"]
