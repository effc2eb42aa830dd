"""The main job from the command line: config composition, a tiny end-to-end run, resume/skip
rules, a 2-job multirun with its sweep summary, bad input, and the notebooks over a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.schema import register

from .conftest import cli as _cli

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["experiment=tiny", "viz.num_images=1"]
GROUPS = ["data", "net", "layers", "prior", "infer", "model", "viz", "evaluate", "experiment"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in _options(group):
            overrides = [f"{group}={option}"]
            if option in ("folder", "mnist", "fashion_mnist", "cifar10"):
                overrides.append("data.root=/somewhere")
            cfg = compose("analyze", overrides=overrides)
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize(
    "override, message",
    [
        (["data.famly=B"], "data.famly"),
        (["infer.batch_size=abc"], "batch_size"),
        (["prior=stick"], "Available options in 'prior'"),
    ],
)
def test_misspelled_keys_wrong_types_and_unknown_options_fail_at_composition(override, message):
    register()
    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(Exception, match=message),
    ):
        compose("analyze", overrides=override)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyze")
    run_dir = tmp / "run"
    _cli([*TINY, f"hydra.run.dir={run_dir}"], tmp)
    return tmp, run_dir


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_tiny_run_writes_metrics_figures_posteriors_and_summary(tiny_run):
    _, run_dir = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    layers = metrics["layers"]
    assert list(layers) == ["block1.relu", "block2.relu"]
    for row in layers.values():
        for key in ("n_active", "elbo", "heldout_loglik", "ari", "nmi", "fit_seconds"):
            assert key in row
        assert 1 <= row["n_active"] <= 10
        assert -1 <= row["ari"] <= 1 and 0 <= row["nmi"] <= 1
    assert (run_dir / "summary.md").read_text().startswith("# dpmodels analysis")
    for name in ("layers_00.png", "clusters.png", "transitions.png", "prototypes_block1.relu.png"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    from dpmodels.analysis import RunOutputs
    from dpmodels.diagnostics import load_inference_data

    run = RunOutputs(run_dir)
    assert run.images().images.shape == (6, 3, 32, 32)
    assert run.maps("block2.relu").labels.shape[0] == 6
    idata = load_inference_data(run.posterior_path("block1.relu"))
    assert {"posterior", "log_likelihood"} <= set(idata.groups())


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_rerun_of_a_finished_run_is_skipped_and_another_config_is_refused(tiny_run):
    tmp, run_dir = tiny_run
    before = (run_dir / "metrics.json").read_text()
    skipped = _cli([*TINY, f"hydra.run.dir={run_dir}"], tmp)
    assert "skipping" in skipped.stdout + skipped.stderr
    refused = _cli([*TINY, "prior=finite", f"hydra.run.dir={run_dir}"], tmp, check=False)
    assert refused.returncode == 1
    assert "already holds the results of a different run" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (run_dir / "metrics.json").read_text() == before


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
@pytest.mark.parametrize(
    "override, message",
    [
        ("data=folder", "data.root"),  # missing mandatory value
        ("layers.names=[nothing_like_this]", "nothing_like_this"),
        ("model.coupling=-1", "coupling must be >= 0"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, override, message):
    args = [*TINY, override, f"hydra.run.dir={tmp_path / 'run'}"]
    if override == "data=folder":
        args.append(f"data.root={tmp_path / 'does_not_exist'}")
        message = "does_not_exist"
    proc = _cli(args, tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_two_job_multirun_writes_a_sweep_summary(tmp_path):
    sweep = tmp_path / "sweep"
    _cli(["-m", *TINY, "viz=none", "prior=dp,finite", f"hydra.sweep.dir={sweep}"], tmp_path)
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert sorted(table["prior"].unique()) == ["dp", "finite"]
    assert set(table["status"]) == {"done"}
    assert len(table) == 4  # 2 jobs x 2 layers
    assert {"n_active", "nmi", "heldout_loglik"} <= set(table.columns)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["posterior_diagnostics", "layer_maps"])
def test_notebooks_execute_against_a_run(tiny_run, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    _, run_dir = tiny_run
    monkeypatch.setenv("DPMODELS_RUN_DIR", str(run_dir))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must pick Jupyter's inline backend
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(c.get("outputs", []) == [] for c in book.cells if c.cell_type == "code"), (
        "outputs not stripped"
    )
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(run_dir)}}
    ).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Figures must render inline: every cell that shows a plot holds as many PNG outputs as it shows.
    plotting = [c for c in book.cells if c.cell_type == "code" and "plt.show()" in c.source]
    assert plotting, "the notebook shows no figure at all"
    for cell in plotting:
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) >= cell.source.count("plt.show()"), f"no inline figure from:\n{cell.source}"


def _comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between two runs (wall times at any depth, e.g.
    a layer's fit_seconds or its concept stage's seconds, and cache hits)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(json.loads(json.dumps(metrics)))
    out.pop("timings")
    out["network"].pop("loaded_from_cache", None)
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL the main job while it fits, start the same command again, compare with a run that was
    never interrupted."""
    import signal
    import time

    args = [*TINY, "viz=none", "infer.checkpoint_every=0", "infer.fit_points=3000", "data.num_images=12"]
    reference = tmp_path / "reference"
    _cli([*args, f"hydra.run.dir={reference}"], tmp_path)  # also trains and caches the network
    killed = tmp_path / "killed"
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.analyze", *args, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / ".staging" / "checkpoints").glob("*.ckpt")):
        if proc.poll() is not None:
            pytest.fail("the run ended before writing a fit checkpoint; make the fit longer")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    resumed = _cli([*args, f"hydra.run.dir={killed}"], tmp_path)
    assert "resuming" in resumed.stdout + resumed.stderr
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert _comparable(a) == _comparable(b)


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_user_folder_with_masks_end_to_end(tmp_path):
    """A folder of PNG images with integer-label PNG masks: maps, figures, evaluation table."""
    import numpy as np
    from PIL import Image

    from dpmodels.data import texture_mosaics

    mosaics = texture_mosaics(5, 40, seed=3)
    (tmp_path / "mine" / "images").mkdir(parents=True)
    (tmp_path / "mine" / "masks").mkdir()
    for i in range(len(mosaics)):
        pixels = (mosaics.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "mine" / "images" / f"img{i}.png")
        Image.fromarray(mosaics.masks[i].numpy().astype(np.uint8)).save(
            tmp_path / "mine" / "masks" / f"img{i}.png"
        )
    run_dir = tmp_path / "run"
    _cli(
        [
            *TINY,
            "data=folder",
            f"data.root={tmp_path / 'mine'}",
            "evaluate=baselines",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["has_masks"] and metrics["data"]["num_images"] == 5
    assert all(0 <= row["nmi"] <= 1 for row in metrics["layers"].values())
    table = pd.read_csv(run_dir / "evaluation.csv")
    assert {"dpgmm", "kmeans_silhouette"} <= set(table["method"])
    assert (run_dir / "figures" / "layers_00.png").is_file()
