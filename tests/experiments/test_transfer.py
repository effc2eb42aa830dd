"""The transfer experiment: scenario configs compose, the library orchestration checks its inputs,
the CLI runs end to end on tiny settings, rejects bad input in one line, and the notebook runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from PIL import Image

from dpmodels.nets import build_net
from dpmodels.transfer import experiment as tx
from dpmodels.transfer import report
from experiments.callbacks import sweep_table
from experiments.transfer_schema import register

# tiny truncations keep these plumbing checks fast: every component in use is expected there
pytestmark = pytest.mark.filterwarnings("ignore::dpmodels.TruncationWarning")

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["default", "family_b", "contrast", "noise", "colour", "digits", "folder"]
TINY = [
    "scenario=noise",
    "scenario.noise=[0.3]",
    "source.widths=[8,16]",
    "source.train_per_class=20",
    "source.size=16",
    "source.epochs=2",
    "source.score_per_class=12",
    "task.train_per_class=6",
    "task.test_per_class=4",
    "task.shots=2",
    "task.seeds=2",
    "task.epochs=2",
    "task.target_epochs=1",
    "score.truncation=6",
    "score.n_boot=200",
    "progress=false",
    "threads=1",
]
register()


def _cli(tmp_path: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.transfer", f"hydra.run.dir={out}", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    out = tmp / "run"
    proc = _cli(tmp, out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_against_its_schema(scenario):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="transfer", overrides=[f"scenario={scenario}"])
    assert cfg.scenario.name == scenario
    if scenario == "default":  # enough (condition, layer) points for a rank correlation
        n = cfg.scenario.control + len(cfg.scenario.families)
        n += sum(len(cfg.scenario[k]) for k in ("contrast", "noise", "colour", "blur"))
        assert n * len(cfg.source.widths) >= 18


def test_a_misspelled_scenario_key_fails_at_composition():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        with pytest.raises(ConfigCompositionException):
            compose(config_name="transfer", overrides=["scenario.nosie=[0.1]"])


def test_conditions_follow_the_scenario_and_convert_channels_only_when_asked():
    conds = tx.make_conditions(
        control=True,
        families=["B"],
        shifts={"noise": [0.1, 0.3]},
        size=16,
        train_per_class=3,
        test_per_class=2,
    )
    assert [c.name for c in conds] == ["control", "family=B", "noise=0.1", "noise=0.3"]
    assert all(c.labelled and c.score is c.train for c in conds)
    assert len(conds[1].train) == 3 * 8 and conds[1].train.images.shape[1:] == (3, 16, 16)
    clean, noisy = conds[0].train.images, conds[3].train.images
    assert float((noisy - clean).abs().mean()) > 0.1  # same textures, noise added
    with pytest.raises(ValueError, match="convert_channels=true"):
        tx.make_conditions(digits=True, size=16, train_per_class=3, test_per_class=2)
    (digits,) = tx.make_conditions(
        digits=True, size=16, train_per_class=3, test_per_class=2, convert_channels=True
    )
    assert digits.train.channels == 3 and len(digits.train) == 30 and len(digits.test) == 20
    with pytest.raises(ValueError, match="defines no target condition"):
        tx.make_conditions()
    with pytest.raises(ValueError, match="unknown shift kind"):
        tx.make_conditions(shifts={"hue": [10]})


def test_a_target_too_small_to_score_is_refused_with_the_number_needed():
    model = build_net("small_cnn", in_channels=3, num_classes=7, widths=[4, 8])
    (cond,) = tx.make_conditions(shifts={"noise": [0.1]}, size=16, train_per_class=2, test_per_class=1)
    tx.check_scoreable(model, ["block1.relu"], cond.score, "ok", positions_per_image=16, min_points=50)
    with pytest.raises(ValueError, match=r"at least 500 are needed \(>= 32 images\)"):
        tx.check_scoreable(model, ["block2.relu"], cond.score, "t", positions_per_image=16, min_points=500)
    with pytest.raises(ValueError, match="no layer"):
        tx.check_scoreable(model, ["block9.relu"], cond.score, "t", positions_per_image=16, min_points=5)


def _table(drop, score, cka, conditions):
    return pd.DataFrame(
        {
            "condition": conditions,
            "depth": [1 + i % 3 for i in range(len(drop))],
            "transfer_drop": drop,
            "predictive_drop": score,
            "occupancy_jsd": np.asarray(score)[::-1],
            "novelty_share": np.zeros(len(drop)),
            "cka": cka,
        }
    )


def test_correlate_and_verdict_on_known_rankings():
    drop = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    table = _table(
        drop, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.9, 0.2, 0.8, 0.3, 0.7, 0.4], ["a"] * 3 + ["b"] * 3
    )
    corr = report.correlate(table, n_boot=200)
    every = corr[corr.scope == "all"].set_index("measure")
    assert every.loc["predictive_drop", "rho"] == pytest.approx(1.0)
    assert every.loc["occupancy_jsd", "rho"] == pytest.approx(-1.0)
    # novelty_share is constant here: no rank correlation, and the note says why
    assert np.isnan(every.loc["novelty_share", "rho"]) and "constant" in every.loc["novelty_share", "note"]
    assert set(corr.scope) == {"all", "a", "b"} and (corr[corr.scope == "a"].n == 3).all()
    v = report.verdict(corr)
    assert (
        v["best_score"] == "predictive_drop" and v["predicts"] and v["beats_cka"]
    )  # first of the |rho| = 1 tie
    assert v["sign_as_expected"] and v["cka_sign_as_expected"] and v["cka_rho"] == pytest.approx(-9 / 35)
    noisy = _table(drop, [3.0, 1.0, 6.0, 2.0, 5.0, 4.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ["a"] * 6)
    v = report.verdict(report.correlate(noisy, n_boot=200))
    assert not v["beats_cka"] and v["cka_rho"] == pytest.approx(1.0) and not v["cka_sign_as_expected"]
    assert "do NOT predict" in report.summary_markdown(
        noisy.assign(layer="x", probe_accuracy=0.5, frozen_accuracy=0.5, scratch_accuracy=0.5),
        report.correlate(noisy, n_boot=200),
        {"scenario": "t"},
    )


def _grey_folder(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(
            root / "images" / f"{i}.png"
        )
    return root


@pytest.mark.slow  # a transfer run on a folder
def test_an_unlabelled_folder_is_scored_only(tmp_path, one_thread):
    folder = _grey_folder(tmp_path / "grey", n=4)
    (cond,) = tx.make_conditions(folder=str(folder), size=16, convert_channels=True)
    assert not cond.labelled and cond.score.images.shape == (4, 3, 16, 16)
    model = build_net("small_cnn", in_channels=3, num_classes=7, widths=[4, 8])
    source = tx.make_conditions(control=True, size=16, train_per_class=12, test_per_class=1)[0].train
    table = tx.run_conditions(
        model,
        source,
        [cond],
        ["block1.relu", "block2.relu"],
        extraction={"positions_per_image": 16},
        dpgmm={"truncation": 5, "covariance": "diag"},
        progress=False,
    )
    assert list(table.layer) == ["block1.relu", "block2.relu"] and (table.condition == "folder").all()
    assert table.predictive_drop.notna().all() and table[list(tx.MEASURED_COLUMNS)].isna().all().all()
    assert list(table.columns[-len(tx.MEASURED_COLUMNS) - 2 : -2]) == list(tx.MEASURED_COLUMNS)
    corr = report.correlate(table, n_boot=50)
    assert (corr.n == 0).all() and corr.rho.isna().all()
    v = report.write_report(tmp_path / "out", table, corr, {"scenario": "folder"})
    assert v["best_score"] is None and not v["predicts"]
    assert sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == ["scores_vs_depth.png"]
    assert "No labelled target" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.slow  # a subprocess that imports torch, Pyro and Hydra: ~10 s on a busy 2-core CPU
def test_cli_tiny_run_writes_every_output(tiny_run):
    table = pd.read_csv(tiny_run / "transfer_table.csv")
    assert list(table.condition) == ["control", "control", "noise=0.3", "noise=0.3"]
    assert list(table.layer) == ["block1.relu", "block2.relu"] * 2
    assert set(tx.MEASURED_COLUMNS) <= set(table.columns)
    for col in (*tx.SCORES, *tx.MEASURED_COLUMNS):
        assert table[col].notna().all(), col
    assert (table.shots == 2).all() and (table.n_seeds == 2).all()
    # the drop is defined against the target-trained reference at the same depth, mean over seeds
    assert np.allclose(table.transfer_drop, table.reference_accuracy - table.frozen_accuracy)
    accuracies = table.filter(regex="accuracy$").to_numpy()
    assert ((accuracies >= 0) & (accuracies <= 1)).all() and (
        table.filter(regex="_sd$").to_numpy() >= 0
    ).all()
    for pair in table.groupby("condition").scratch_accuracy:  # one scratch baseline per condition
        assert pair[1].nunique() == 1
    # the noisy target is less likely under the source fits than fresh source textures, in every layer
    assert (
        table[table.condition == "noise=0.3"].predictive_drop.to_numpy()
        > table[table.condition == "control"].predictive_drop.to_numpy()
    ).all()
    corr = pd.read_csv(tiny_run / "correlations.csv")
    every = corr[corr.scope == "all"]
    assert set(every.measure) == {*tx.SCORES, "cka"} and (every.n == 4).all()
    ok = every.dropna(subset=["rho"])
    assert ((ok.low <= ok.rho + 1e-9) & (ok.rho <= ok.high + 1e-9)).all()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["n_points"] == 4 and metrics["layer_names"] == ["block1.relu", "block2.relu"]
    assert metrics["drop_definition"] == report.DROP_DEFINITION
    assert metrics["measurement_check"]["n_points"] == 4
    # per-layer scalars that the multirun callback can tabulate
    assert list(metrics["layers"]) == ["block1.relu", "block2.relu"]
    layer = metrics["layers"]["block2.relu"]
    assert layer["transfer_drop_mean"] == pytest.approx(
        table[table.layer == "block2.relu"].transfer_drop.mean()
    )
    summary = (tiny_run / "summary.md").read_text()
    assert "reference_accuracy(L) - frozen_accuracy(L)" in summary and "Measurement check" in summary
    figures = ["scores_vs_depth.png"] + (["score_vs_drop.png"] if metrics["verdict"]["best_score"] else [])
    assert sorted(p.name for p in (tiny_run / "figures").iterdir()) == sorted(figures)
    for name in figures:
        assert (tiny_run / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # reuses the tiny run
def test_cli_saves_each_layer_posterior_and_a_sweep_table_reads_the_metrics(tiny_run, tmp_path):
    from dpmodels.diagnostics import load_inference_data

    for layer in ("block1.relu", "block2.relu"):
        idata = load_inference_data(tiny_run / "posterior" / f"{layer}.nc")
        assert idata.posterior.sizes["draw"] == 100 and "log_likelihood" in idata.groups()
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- task.shots=2\n")
    (job / "metrics.json").write_text((tiny_run / "metrics.json").read_text())
    rows = sweep_table(tmp_path / "sweep")
    assert list(rows.layer) == ["block1.relu", "block2.relu"] and (rows["task.shots"] == "2").all()
    assert rows.frozen_accuracy_mean.between(0, 1).all()


@pytest.mark.slow  # a subprocess that imports torch, Pyro and Hydra: ~10 s on a busy 2-core CPU
def test_cli_rejects_a_grayscale_folder_for_an_rgb_network_in_one_line(tmp_path):
    folder = _grey_folder(tmp_path / "grey")
    out = tmp_path / "run"
    proc = _cli(tmp_path, out, *TINY[2:], "scenario=folder", f"scenario.folder={folder}")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "convert_channels=true" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "convert_channels" in (out / "error.txt").read_text()
    assert not (tmp_path / "cache").exists()  # refused before any training


@pytest.mark.slow  # a subprocess that imports torch, Pyro and Hydra: ~10 s on a busy 2-core CPU
def test_notebook_runs_against_the_tiny_run(tiny_run):
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "transfer.ipynb", as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert "DPMODELS_RUN_DIR" in nb.cells[1].source
    os.environ["DPMODELS_RUN_DIR"] = str(tiny_run)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        )
        client.execute()
    finally:
        del os.environ["DPMODELS_RUN_DIR"]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "2 conditions x 2 layers, 4 labelled" in text
    for cell in (c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source):
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), (
            f"no inline figure:\n{cell.source}"
        )
