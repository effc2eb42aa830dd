"""Figures render on the Agg backend, say what their colours mean, and close when saved."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dpmodels.maps import layer_maps, n_active_draws
from dpmodels.viz.fit import cluster_colours
from dpmodels.viz.maps import (
    label_overlay,
    plot_cluster_counts,
    plot_image_layers,
    plot_layer_maps,
    plot_prototypes,
    plot_transitions,
    save_figure,
)


@pytest.fixture(scope="module")
def maps(planted):
    images, masks, acts, model = planted
    return images, layer_maps(model, acts, num_draws=4), model


def test_layer_panels_have_colourbars_and_legend(maps, tmp_path):
    images, m, _ = maps
    assert matplotlib.get_backend().lower() == "agg"
    fig = plot_layer_maps(images[0], m, 0)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "assignment entropy (nats)" in labels and "novelty: −log p(x) (nats)" in labels
    legend = fig.axes[1].get_legend()
    assert legend is not None and all(t.get_text().startswith("cluster ") for t in legend.get_texts())
    out = save_figure(fig, tmp_path / "sub" / "layer.png")
    assert out.is_file() and out.stat().st_size > 1000 and not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["layer.png"]  # no temporary file left


def test_overlay_uses_the_fixed_palette():
    rgba = label_overlay(np.array([[0, 2], [-1, 1]]), 3)
    pal = cluster_colours(3)
    assert np.allclose(rgba[0, 1, :3], pal[2]) and rgba[1, 0, 3] == 0 and rgba[0, 0, 3] == 1


def test_layers_counts_prototypes_transitions_render(maps, tmp_path):
    images, m, model = maps
    fig = plot_image_layers(images[1], [m, m], 1, kinds=("labels", "epistemic"))
    assert len([ax for ax in fig.axes if ax.get_title().endswith("clusters")]) == 2
    plt.close(fig)
    draws = n_active_draws(model.posterior_, num_draws=50)
    assert draws.shape == (50,) and draws.min() >= 1
    fig = plot_cluster_counts({"block1": draws, "block2": draws + 1}, true_k=2)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["block1", "block2"]
    plt.close(fig)
    plt.close(plot_cluster_counts(intervals={"a": (1, 2, 4)}))
    fig = plot_prototypes(images, m, top_k=3)
    (ax,) = fig.axes  # one image holds every patch
    titles = [t.get_text() for t in ax.texts if t.get_text().startswith("r=")]
    rows = [t.get_text() for t in ax.texts if t.get_text().startswith("cluster")]
    assert len(rows) == min(m.n_active, 10) and 1 <= len(titles) <= 3 * len(rows)
    canvas = np.asarray(ax.images[0].get_array())
    assert canvas.shape[2] == 3 and (canvas < 1).any()  # patches drawn on the white canvas
    save_figure(fig, tmp_path / "proto.pdf")
    fig = plot_transitions([m, m])
    mat = fig.axes[0].images[0].get_array()
    rows = np.asarray(mat).sum(1)
    assert np.allclose(rows[rows > 0], 1.0) and np.allclose(np.diag(np.asarray(mat))[rows > 0], 1.0)
    plt.close(fig)


def test_figure_inputs_are_checked(maps, tmp_path):
    images, m, _ = maps
    with pytest.raises(ValueError, match="extracted from"):
        plot_layer_maps(torch.zeros(3, 20, 20), m, 0)
    with pytest.raises(ValueError, match="out of range"):
        plot_layer_maps(images[0], m, 99)
    with pytest.raises(ValueError, match="exactly one"):
        plot_cluster_counts()
    with pytest.raises(ValueError, match="low <= mid <= high"):
        plot_cluster_counts(intervals={"a": (3, 2, 1)})
    with pytest.raises(ValueError, match="two layers"):
        plot_transitions([m])
    with pytest.raises(ValueError, match="extracted images"):
        plot_prototypes(images[:2], m)
    fig = plt.figure()
    with pytest.raises(ValueError, match="extension"):
        save_figure(fig, tmp_path / "noext")
    plt.close(fig)
