"""Concept importance on a real (small) network: the occlusion hook replaces exactly the
concept's positions, scores match a by-hand forward pass, the Sobol total index finds the concept
the logit depends on, and a backbone without a classifier head is refused."""

import numpy as np
import pytest
import torch
from torch import nn

from dpmodels.activations import extract
from dpmodels.analysis.fitfile import LayerFitFile, network_fingerprint, raw_mean, save_fit
from dpmodels.concepts.importance import concept_importance, deletion_curves, summarize_importance
from dpmodels.estimator import DPGMM


class Net(nn.Module):
    """conv -> relu (the layer) -> global max of channel 0 and 1 -> logits."""

    def __init__(self, head: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.head = head
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, x):
        h = self.act(self.conv(x))  # (b, 2, H, W)
        return h.amax((2, 3)) * 10 if self.head else h


def _images():
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, :, :4] = 1.0  # left half bright: channel 0 active there, channel 1 on the right
    return x


def _fit(tmp_path, model):
    x = _images()
    acts = extract(model, x, ["act"], progress=False, normalize=((0.0,), (1.0,)))
    pts = acts["act"].tensor() + 0.01 * torch.randn(
        acts["act"].num_points, 2, generator=torch.Generator().manual_seed(0)
    )
    fitted = DPGMM(truncation=4, seed=0, covariance="diag").fit(pts.numpy())
    path = save_fit(tmp_path, "act", fitted.posterior_, acts["act"], network_fingerprint(model))
    return torch.load(path, weights_only=True), acts


def test_occlusion_scores_equal_a_forward_pass_with_the_concept_replaced(tmp_path):
    model = Net()
    state, acts = _fit(tmp_path, model)
    fit = LayerFitFile(state)
    x = _images()
    frame = concept_importance(model, x, "act", fit, sobol_masks=8)
    assert set(frame["concept"]) == set(frame.attrs["labels"].unique().tolist())
    labels = frame.attrs["labels"][0]
    assert labels[:, :4].unique().numel() == 1 and labels[:, 4:].unique().numel() == 1
    mean = raw_mean(acts["act"])
    for _, row in frame[frame.image == 0].iterrows():
        with torch.no_grad():
            h = model.act(model.conv(x[:1]))
            where = (labels == row.concept)[None, None]
            h = torch.where(where, mean[None, :, None, None], h)
            logit = (h.amax((2, 3)) * 10)[0, row["class"]]
        assert row.occlusion == pytest.approx(float(row.logit - logit), abs=1e-5)
    # class 0 is 10 x the max of channel 0 (1 on the left, 0 on the right, reference mean 0.5):
    # removing the left concept lowers it from 10 to 5, removing the right one changes nothing,
    # so the left concept carries all of its variance (total index 1) and the right one none
    c0 = frame[(frame["class"] == 0) & (frame.image == 0)].set_index("concept")
    left, right = int(labels[0, 0]), int(labels[0, -1])
    assert c0.loc[left, "occlusion"] == pytest.approx(5.0, abs=0.05)
    assert c0.loc[right, "occlusion"] == pytest.approx(0.0, abs=1e-6)
    assert c0.loc[left, "sobol_total"] == pytest.approx(1.0, abs=0.3)
    assert c0.loc[right, "sobol_total"] == pytest.approx(0.0, abs=1e-9)
    summary = summarize_importance(frame)
    assert {"occlusion", "sobol_total"} == set(summary.estimator)
    assert (summary.low <= summary.score).all() and (summary.score <= summary.high).all()


def test_deletion_curve_falls_from_one_to_zero(tmp_path):
    from dpmodels.concepts.importance import ConceptOcclusion

    model = Net()
    state, _ = _fit(tmp_path, model)
    fit = LayerFitFile(state)
    frame, kept = concept_importance(model, _images(), "act", fit, sobol_masks=0, return_images=True)
    hook = ConceptOcclusion(model, "act", fit.reference_mean, (1, 8, 8))
    try:
        concepts = sorted(frame[frame.image == 0].concept)
        curves = deletion_curves(model, hook, kept[0], 0, {"a": concepts, "b": concepts[::-1]})
    finally:
        hook.remove()
    for c in curves.values():
        assert c[0] == pytest.approx(1.0) and c[-1] == pytest.approx(0.0)
    assert np.isfinite(curves["a"]).all()


def test_a_backbone_without_a_classifier_head_is_refused(tmp_path):
    model = Net(head=False)
    state, _ = _fit(tmp_path, model)
    with pytest.raises(ValueError, match="no classifier head"):
        concept_importance(model, _images(), "act", LayerFitFile(state))


def test_a_graph_node_that_is_no_module_is_refused(tmp_path):
    model = Net()
    state, _ = _fit(tmp_path, model)
    with pytest.raises(ValueError, match="must be a module"):
        concept_importance(model, _images(), "mean", LayerFitFile(state))


def test_check_importance_refuses_headless_networks_before_any_work():
    from dpmodels.concepts.importance import check_importance

    assert check_importance(Net(), ["act"], (1, 8, 8)) == ["act"]
    with pytest.raises(ValueError, match=r"returns \(1, 2, 8, 8\): it has no classifier head"):
        check_importance(Net(head=False), ["act"], (1, 8, 8))
    with pytest.raises(ValueError, match="must be a module"):
        check_importance(Net(), ["mean"], (1, 8, 8))


def test_check_importance_refuses_timm_models_without_their_classifier():
    pytest.importorskip("timm")
    from dpmodels.concepts.importance import check_importance
    from dpmodels.nets import build_net

    headless = build_net("test_convnext", source="timm", weights=None, num_classes=0)
    out = headless(torch.zeros(1, 3, 32, 32))
    assert out.dim() == 2  # pooled features (b, D): only the declared head tells them from logits
    with pytest.raises(ValueError, match="built with num_classes=0: it has no classifier head"):
        check_importance(headless, None, (3, 32, 32))
    headless.has_classifier = None  # the plain timm module says so too
    with pytest.raises(ValueError, match="num_classes=0"):
        check_importance(headless, None, (3, 32, 32))


@pytest.mark.parametrize("name, layer, options", [("test_convnext", "stages.1", {}), ("test_vit", "blocks.1", {"img_size": 32})])  # fmt: skip
def test_timm_classifiers_are_scored_through_their_own_modules(tmp_path, name, layer, options):
    pytest.importorskip("timm")
    from dpmodels.concepts.importance import ConceptOcclusion, check_importance
    from dpmodels.nets import build_net

    torch.manual_seed(0)
    model = build_net(
        name, source="timm", weights=None, **options
    ).eval()  # a wrapped timm model with its head
    x = torch.rand(3, 3, 32, 32)
    assert check_importance(model, [layer], (3, 32, 32)) == [layer]
    acts = extract(model, x, [layer], progress=False)
    a = acts[layer]
    # the hook on timm's module sees exactly the map the extraction reads (channels first or tokens)
    hook = ConceptOcclusion(model, layer, torch.zeros(a.num_features), (3, 32, 32))
    try:
        with torch.no_grad():
            model(model.preprocessing(x))
        assert torch.equal(hook.captured.permute(0, 2, 3, 1).reshape(-1, a.num_features), a.tensor())
    finally:
        hook.remove()
    fitted = DPGMM(truncation=4, seed=0, covariance="diag").fit(a.tensor().numpy())
    path = save_fit(tmp_path, layer, fitted.posterior_, a, network_fingerprint(model))
    fit = LayerFitFile(torch.load(path, weights_only=True))
    frame = concept_importance(model, x, layer, fit, sobol_masks=2)
    # the scored images went through the network's own preprocessing: the same concepts as the extraction
    expected = fit.posterior.log_responsibilities(a.tensor())[0].argmax(-1)
    assert torch.equal(frame.attrs["labels"].flatten(), expected)
    assert len(frame) and np.isfinite(frame["occlusion"]).all() and set(frame["image"]) == {0, 1, 2}
