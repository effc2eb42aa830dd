"""Geometry derived from the graph equals the gradient probe's measurement, and is cached per
architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dpmodels.activations import clear_geometry_cache, layer_geometry
from dpmodels.activations import geometry as geometry_module
from dpmodels.activations.analytic import analytic_geometry
from dpmodels.activations.geometry import _probe_geometry
from dpmodels.activations.layers import probe_layers, probe_names


class Assorted(nn.Module):
    """'same' padding with an even kernel, dilation, a ceil-mode pool, a 1x1 strided shortcut
    concatenated with a padded strided branch, average pooling, asymmetric explicit padding and a
    stride-3 convolution."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, (4, 3), padding="same")
        self.b = nn.Conv2d(8, 8, 3, dilation=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.short = nn.Conv2d(8, 8, 1, stride=2)
        self.long = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.avg = nn.AvgPool2d(2)
        self.last = nn.Conv2d(16, 4, 5, stride=3, padding=2)

    def forward(self, x):
        x = self.pool(self.b(torch.relu(self.a(x))))
        y = torch.cat([self.short(x), self.long(x)], 1)
        return self.last(F.pad(self.avg(y), (1, 2, 0, 1))) + 1.0


class Gated(nn.Module):
    """A squeeze-excitation style gate (global mean): the gated map depends on every pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        return self.head(x)


def _spatial(model, size):
    names, mode = probe_names(model, None)
    return [n for n in names if n in probe_layers(model, names, mode, (3, size, size), "cpu")]


def _agree(model, size, every=1, max_probe=1024, skip=()):
    torch.manual_seed(0)
    layers = [n for n in _spatial(model, size)[::every] if not n.endswith(skip)]
    derived = analytic_geometry(model, layers, (3, size, size), max_probe=max_probe)
    measured = _probe_geometry(model, list(derived), (3, size, size), max_probe=max_probe)
    assert derived == measured  # stride, offset, field and map size of every derived layer
    return layers, derived


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_assorted_convolutions_and_pools_agree_with_the_probe():
    torch.manual_seed(0)
    layers, derived = _agree(Assorted().eval(), 32, max_probe=128)
    assert set(derived) == set(layers)  # every layer follows from the graph
    g = derived["long"]  # pool 3/2 after a dilated conv: stride 4 at the strided branch
    assert g.stride == (4.0, 4.0)


@pytest.mark.slow  # probes of every third layer of each network (~10-40 s each on 2 cores)
@pytest.mark.parametrize(
    "build, size",
    [
        (lambda: torchvision.models.resnet18(weights=None), 32),
        (lambda: torchvision.models.vgg11(weights=None), 32),
        (lambda: torchvision.models.mobilenet_v2(weights=None), 32),
        (lambda: torchvision.models.alexnet(weights=None), 96),
    ],
    ids=["resnet18", "vgg11", "mobilenet_v2", "alexnet"],
)
def test_torchvision_networks_agree_with_the_probe(build, size):
    torch.manual_seed(0)
    layers, derived = _agree(build().eval(), size, every=3)
    assert len(derived) >= len(layers) - 1  # all but a final adaptive pool


def test_the_default_networks_default_layers_follow_from_its_graph():
    from dpmodels.nets import build_net

    net = build_net("efficientnet_lite0", weights=None).eval()  # TF "same" padding: a shape-dependent pad
    derived = analytic_geometry(net, net.default_layers, (3, 224, 224))
    assert list(derived) == list(net.default_layers)
    assert [g.receptive_field[0] for g in derived.values()] == [7, 19, 67, 339, 224]  # stage7: whole image
    assert derived["stage7"].offset == (15.5, 15.5) and derived["stage5"].stride == (16.0, 16.0)


@pytest.mark.slow
def test_default_network_agrees_with_the_probe():
    from dpmodels.nets import build_net

    # The outputs of its padding nodes are left out: where the probe's second position falls on the
    # padding (a 2-wide map padded to 5), its support is empty and the probe falls back to an even
    # partition; the derived geometry is the padded map's true one.
    net = build_net("efficientnet_lite0", weights=None).eval()
    layers, derived = _agree(net, 32, every=3, skip=("_same_pad",))
    assert len(derived) >= len(layers) - 1


def test_a_global_gate_is_left_to_the_probe_and_gives_its_answer():
    torch.manual_seed(0)
    net = Gated().eval()
    derived = analytic_geometry(net, ["conv", "mul", "head"], (3, 16, 16))
    assert set(derived) == {"conv"}  # the gate (and what follows) sees the whole image
    clear_geometry_cache()
    got = layer_geometry(net, ["conv", "mul", "head"], (3, 16, 16), max_probe=64)
    assert got == _probe_geometry(net, ["conv", "mul", "head"], (3, 16, 16), max_probe=64)


def test_geometry_is_cached_per_architecture(monkeypatch):
    probes = []
    real = geometry_module._probe_geometry

    def counting(model, layers, *args, **kwargs):
        probes.append(list(layers))
        return real(model, layers, *args, **kwargs)

    monkeypatch.setattr(geometry_module, "_probe_geometry", counting)
    clear_geometry_cache()
    torch.manual_seed(0)
    first = layer_geometry(Gated().eval(), ["conv", "head"], (3, 16, 16), max_probe=64)
    assert probes == [["head"]]  # only the layer the graph does not describe was probed
    again = layer_geometry(Gated().eval(), ["conv", "head"], (3, 16, 16), max_probe=64)  # new weights
    assert again == first and len(probes) == 1
    other = Gated().eval()
    other.conv = nn.Conv2d(3, 8, 5, padding=2)  # another architecture: derived and measured anew
    changed = layer_geometry(other, ["conv", "head"], (3, 16, 16), max_probe=64)
    assert len(probes) == 2 and changed["conv"].receptive_field == (5, 5) != first["conv"].receptive_field
    layer_geometry(Gated().eval(), ["conv", "head"], (3, 32, 32), max_probe=64)  # another input size
    assert len(probes) == 3
