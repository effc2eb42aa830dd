"""A map kind is one registered function: it is computed, saved, read back, moved to the concept
level and drawn without touching any other module."""

from __future__ import annotations

import pytest
import torch

from dpmodels.analysis.outputs import load_layer_maps, save_layer_maps
from dpmodels.maps import MAP_KINDS, MAPS, layer_maps, map_kind, register_map


@pytest.fixture
def margin_map():
    """Registers a 'margin' kind (top-two responsibility gap) for one test."""

    @register_map("margin", label="top-2 margin", cmap="plasma")
    def margin(chunk):
        top2 = chunk.log_resp.exp().topk(2, dim=-1).values  # (n, 2)
        return top2[:, 0] - top2[:, 1]

    yield MAPS["margin"]
    del MAPS["margin"]


def test_builtin_kinds_are_registered_in_order():
    assert MAP_KINDS == ("labels", "confidence", "entropy", "epistemic", "aleatoric", "novelty")
    assert tuple(MAPS)[: len(MAP_KINDS)] == MAP_KINDS
    assert map_kind("labels").clusters and not map_kind("entropy").clusters
    assert map_kind("novelty").grouping_invariant
    with pytest.raises(ValueError, match="kind must be one of"):
        map_kind("nothing")


def test_names_are_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_map("entropy", label="x")(lambda chunk: chunk.x[:, 0])
    with pytest.raises(ValueError, match="LayerMaps fields"):
        register_map("weights", label="x")
    with pytest.raises(ValueError, match="identifier"):
        register_map("two words", label="x")


def test_a_registered_kind_is_computed_saved_loaded_and_drawn(planted, margin_map, tmp_path):
    import matplotlib.pyplot as plt

    from dpmodels.viz.maps import plot_layer_maps

    images, _, acts, model = planted
    maps = layer_maps(model, acts, num_draws=2)
    assert maps.margin.shape == maps.entropy.shape and maps.get("margin") is maps.margin
    ok = torch.isfinite(maps.margin)
    assert bool(((maps.margin[ok] >= 0) & (maps.margin[ok] <= maps.confidence[ok] + 1e-12)).all())
    back = load_layer_maps(save_layer_maps(tmp_path, maps))
    assert list(back.values) == list(MAPS)
    torch.testing.assert_close(back.margin, maps.margin, rtol=0, atol=0, equal_nan=True)
    assert maps.at_input("margin").shape == (len(images), *images.shape[-2:])
    fig = plot_layer_maps(images[0], maps, 0, kinds=("labels", "margin"))
    assert "top-2 margin" in [ax.get_ylabel() for ax in fig.axes]
    plt.close(fig)


def test_concept_level_copies_invariant_kinds_and_blanks_the_others(planted):
    from dpmodels.concepts import select_concepts
    from dpmodels.concepts.levels import concept_layer_maps

    _, _, acts, model = planted
    maps = layer_maps(model, acts, num_draws=2)
    sel = select_concepts(model.posterior_, acts.points, num_draws=4)
    concepts = concept_layer_maps(model, acts, sel, maps)
    assert list(concepts.values) == list(maps.values)
    assert concepts.novelty is maps.novelty
    assert bool(torch.isnan(concepts.epistemic).all())
    assert int(concepts.labels.max()) < sel.k
