"""experiments.apply and RunOutputs.apply: a tiny run applied to its own images reproduces its
maps (both levels); new images get maps, shift scores and files in a new run directory; bad input
gets one line; importance=true writes importance.csv in the main job and in apply. The applied
run's report.html: tests/analysis/test_html_report.py."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from dpmodels.analysis import RunOutputs
from dpmodels.data.textures import texture_mosaics
from dpmodels.nets import build_net

from .conftest import cli as _cli

TINY = ["experiment=tiny", "viz.num_images=1"]
SAME_DATA = ["data=textures", "data.num_images=6", "data.size=32"]  # the tiny run's images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply")
    run_dir = tmp / "run"
    imp = ["importance=true", "importance.max_images=2", "importance.sobol_masks=4"]
    _cli([*TINY, *imp, f"hydra.run.dir={run_dir}"], tmp, "experiments.analyze")
    return tmp, run_dir


def test_main_job_saves_fits_in_its_manifest_and_writes_importance(tiny):
    _, run_dir = tiny
    run = RunOutputs(run_dir)
    files = run.record["files"]
    for layer in run.layers:
        assert f"fits/{layer}.pt" in files
        fit = run.fit(layer)
        assert fit.channels == run.maps(layer).meta.get("channels", fit.channels)
        assert fit.posterior.batch_size == 1
    table = pd.read_csv(run_dir / "importance.csv")
    assert set(table.columns) >= {
        "layer",
        "class",
        "concept",
        "estimator",
        "score",
        "low",
        "high",
        "n_images",
    }
    assert set(table["layer"]) == set(run.layers)
    assert set(table["estimator"]) == {"occlusion", "sobol_total"}
    assert np.isfinite(table.loc[table.estimator == "occlusion", "score"]).all()
    assert any(p.name.startswith("importance_") for p in (run_dir / "figures").iterdir())


def test_apply_to_the_runs_own_images_reproduces_its_maps(tiny):
    tmp, run_dir = tiny
    before = json.loads((run_dir / "run_complete.json").read_text())
    out = tmp / "same"
    _cli([f"run={run_dir}", *SAME_DATA, "viz.num_images=1", f"hydra.run.dir={out}"], tmp, "experiments.apply")
    ref, applied = RunOutputs(run_dir), RunOutputs(out)
    assert applied.layers == ref.layers
    for layer in ref.layers:
        a, r = applied.maps(layer), ref.maps(layer)
        assert torch.equal(a.labels, r.labels)
        np.testing.assert_allclose(a.entropy.numpy(), r.entropy.numpy(), atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(a.novelty.numpy(), r.novelty.numpy(), rtol=1e-5, equal_nan=True)
        row = applied.metrics["layers"][layer]
        assert row["novelty_share"] == pytest.approx(0.05, abs=0.01)  # the run's own 95 % quantile
        ca, cr = applied.concept_maps(layer), ref.concept_maps(layer)  # the run's concepts, regrouped
        assert ca.meta["component_to_concept"] == cr.meta["component_to_concept"]
        assert torch.equal(ca.labels, cr.labels) and torch.equal(ca.weights, cr.weights)
        np.testing.assert_allclose(ca.entropy.numpy(), cr.entropy.numpy(), atol=1e-6, equal_nan=True)
        assert f"maps/concepts/{layer}.npz" in applied.record["files"]
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 6 * len(ref.layers)
    assert (out / "figures" / "layers_00.png").is_file()
    assert json.loads((run_dir / "run_complete.json").read_text()) == before  # the reference is untouched
    RunOutputs(run_dir).verify()


def test_apply_from_python_scores_a_shifted_domain_and_refuses_bad_input(tiny):
    tmp, run_dir = tiny
    os.environ.setdefault("DPMODELS_CACHE", str(tmp / "cache"))
    run = RunOutputs(run_dir)
    cache = str(tmp / "cache")
    other = texture_mosaics(num_images=4, size=32, seed=5, family="B")
    result = run.apply(other, cache_dir=cache)
    for layer in run.layers:
        assert result.maps[layer].labels.shape[0] == 4
        assert result.layers[layer]["novelty_share"] > 0.05  # another texture family is further out
    with pytest.raises(ValueError, match="channel"):
        run.apply(other.with_channels(1), cache_dir=cache)
    with pytest.raises(ValueError, match="differs from the one"):
        run.apply(other, model=build_net("small_cnn", weights=None, widths=[8, 16]))
    with pytest.raises(ValueError, match="new run directory"):
        run.apply(other, cache_dir=cache, out_dir=run_dir)
    result = run.apply(other, cache_dir=cache, importance={"max_images": 1, "sobol_masks": 0})
    assert set(result.importance["layer"]) == set(run.layers)


def test_apply_refuses_an_unfinished_run_in_one_line(tiny):
    tmp, run_dir = tiny
    half = tmp / "half"
    shutil.copytree(run_dir, half)
    (half / "run_complete.json").unlink()
    proc = _cli(
        [f"run={half}", *SAME_DATA, f"hydra.run.dir={tmp / 'x'}"], tmp, "experiments.apply", check=False
    )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unfinished" in lines[0]
    proc = _cli(
        [f"run={run_dir}", *SAME_DATA, f"hydra.run.dir={run_dir}"], tmp, "experiments.apply", check=False
    )
    assert proc.returncode == 1 and "never changes the reference run" in proc.stderr
