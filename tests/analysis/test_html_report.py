"""report.html: what the page holds (built from hand-made run files), the main job and
`experiments.apply` writing it into their manifests, the rebuild by `python -m experiments.report`,
and the page in a real headless Chromium (console errors, every layer and image, the cluster panel,
a screenshot)."""

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmodels.activations.types import LayerGeometry
from dpmodels.analysis import RunOutputs
from dpmodels.analysis.html_report import build_html_report
from dpmodels.analysis.outputs import save_concept_maps, save_images, save_layer_maps
from dpmodels.data.images import ImageSet
from dpmodels.io import atomic_write_json
from dpmodels.maps import LayerMaps
from dpmodels.maps.resample import upsample_map
from experiments.report import main as report_main
from tests.experiments.conftest import cli

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def _payload(page: str) -> dict:
    m = re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def _labels(level: dict, shape) -> np.ndarray:
    raw = base64.b64decode(level["labels"]["data"])
    lab = np.frombuffer(raw, np.uint8 if level["labels"]["dtype"] == "u8" else "<i2").astype(np.int64)
    if level["labels"]["dtype"] == "u8":
        lab[lab == 255] = -1
    return lab.reshape(shape)


@pytest.fixture
def handmade_run(tmp_path):
    """A run directory from the writers the job uses: 3 images of 16 px with quadrant masks, one
    layer at stride 2 whose clusters are the left/right halves (concepts: one)."""
    I, H = 3, 16
    g = LayerGeometry((8, 8), (H, H), (2.0, 2.0), (0.5, 0.5), (4, 4))
    masks = torch.zeros(I, H, H, dtype=torch.long)
    masks[:, :, H // 2 :] = 1
    masks[0, :2, :2] = -1  # ignored pixels
    labels = torch.zeros(I, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    labels[2, 0, 0] = -1  # no point there
    gen = torch.Generator().manual_seed(0)
    values = {
        "labels": labels,
        "confidence": torch.rand(I, 8, 8, generator=gen, dtype=torch.float64),
        "entropy": torch.rand(I, 8, 8, generator=gen, dtype=torch.float64),
        "novelty": 3 + torch.rand(I, 8, 8, generator=gen, dtype=torch.float64),
    }
    names = [f"img-{i}" for i in range(I)]
    maps = LayerMaps("block.1", g, values, torch.tensor([0.6, 0.4]), torch.tensor([True, True]), names)
    concept_vals = {**values, "labels": torch.where(labels >= 0, 0, -1)}
    concepts = LayerMaps(
        "block.1", g, concept_vals, torch.tensor([1.0]), torch.tensor([True]), names,
        meta={"level": "concepts", "component_to_concept": [0, 0]},
    )  # fmt: skip
    run = tmp_path / "run"
    save_layer_maps(run, maps)
    save_concept_maps(run, concepts)
    imgs = torch.rand(I, 3, H, H, generator=gen)
    save_images(run, ImageSet(imgs, masks, None, names, ["left", "right"], None, "quads"))
    row = {
        "n_active": 2,
        "n_active_interval": [2.0, 3.0],
        "elbo": -1.5,
        "concepts": {"k": 1, "k_interval": [1, 2]},
    }
    metrics = {"layers": {"block.1": row}, "data": {"name": "quads", "num_images": I, "size": [H, H]}}
    atomic_write_json(run / "metrics.json", {**metrics, "network": {"name": "net"}, "timings": {}})
    return run, maps


def test_page_holds_every_image_layer_map_and_the_exact_labels(handmade_run):
    run_dir, maps = handmade_run
    page = build_html_report(RunOutputs.staged(run_dir), prototypes=2)
    for name in ("img-0", "img-1", "img-2", "block.1"):
        assert name in page
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing from the network
    assert page.count('data-level="components"') == 3 + 2  # a cluster map per image + 2 swatches
    assert page.count('data-level="concepts"') == 3 + 1
    assert page.count('alt="entropy"') == 3 and page.count('alt="novelty"') == 3
    assert "<th>K̂</th>" in page  # the per-layer table of summary.md
    data = _payload(page)
    (layer,) = data["layers"]
    # a click at input pixel (py, px) reads labels[rows[py], cols[px]]: the label map at input resolution
    lab = _labels(layer["levels"]["components"], (3, 8, 8))
    np.testing.assert_array_equal(lab, maps.labels.numpy())
    at_input = upsample_map(maps.labels, maps.geometry, "nearest").numpy()
    np.testing.assert_array_equal(lab[:, layer["rows"]][:, :, layer["cols"]], at_input)
    comps = layer["levels"]["components"]["clusters"]
    assert set(comps) == {"0", "1"}
    assert comps["0"]["weight"] == pytest.approx(0.6) and len(comps["1"]["prototypes"]) == 2
    assert comps["0"]["scores"]["region"] == "left" and comps["1"]["scores"]["region"] == "right"
    assert comps["0"]["scores"]["purity"] == pytest.approx(1.0)
    assert comps["1"]["scores"]["iou"] == pytest.approx(1.0)
    concept = layer["levels"]["concepts"]["clusters"]["0"]
    assert concept["components"] == [0, 1] and concept["scores"]["purity"] == pytest.approx(0.5, abs=0.02)
    assert layer["k_interval"] == [2.0, 3.0] and layer["concepts_k"] == 1


def test_page_of_an_applied_run_names_its_reference_and_shows_the_reference_k_and_the_shift(handmade_run):
    run_dir, maps = handmade_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    own = {"n_active": 2, "n_active_interval": [2.0, 3.0], "concepts": {"k": 1, "k_interval": [1, 2]}}
    metrics["reference"] = {
        "run": "outputs/analyze/ref-run",
        "config_hash": "abc123",
        "layers": {"block.1": own},
    }
    metrics["layers"]["block.1"] = {
        "heldout_loglik": -7.25, "reference_heldout_loglik": -5.5, "loglik_drop": 1.75,
        "novelty_share": 0.375, "mean_entropy": 0.5, "clusters_used": 2,
    }  # fmt: skip
    atomic_write_json(run_dir / "metrics.json", metrics)
    page = build_html_report(RunOutputs.staged(run_dir), prototypes=2)
    assert "applied run of outputs/analyze/ref-run" in page and "abc123" in page
    header = re.search(r"<table class='metrics'>(.*?)</table>", page, re.S).group(1)
    for cell in ("reference K̂", "reference K 90% interval", "log-lik new images (nats)", "-7.25", "-5.50",
                 "1.75", "novelty share", "0.375", "[2, 3]"):  # fmt: skip
        assert f">{cell}<" in header, cell
    assert "ELBO" not in header  # not the main job's table
    assert "reference K̂ = 2 [2, 3]" in page and "novelty share 0.375" in page
    data = _payload(page)
    assert data["applied"] is True
    (layer,) = data["layers"]
    assert layer["k_interval"] == [2.0, 3.0] and layer["concepts_k"] == 1
    assert layer["shift"]["novelty_share"] == 0.375 and layer["shift"]["loglik_drop"] == 1.75
    np.testing.assert_array_equal(_labels(layer["levels"]["components"], (3, 8, 8)), maps.labels.numpy())
    metrics["layers"]["block.1"]["heldout_loglik"] = float("nan")  # per-dimension novelty: no log-lik
    atomic_write_json(run_dir / "metrics.json", metrics)
    page = build_html_report(RunOutputs.staged(run_dir), prototypes=2)
    assert _payload(page)["layers"][0]["shift"]["heldout_loglik"] is None  # JSON without NaN


def test_report_cli_refuses_bad_arguments_and_unfinished_runs(handmade_run, capsys):
    run_dir, _ = handmade_run
    assert report_main(["runn=x"]) == 1
    assert "expected run=<dir>" in capsys.readouterr().err
    assert report_main([f"run={run_dir}", "prototypes=0"]) == 1
    assert "positive integer" in capsys.readouterr().err
    assert report_main([f"run={run_dir}"]) == 1  # no manifest: not a finished run
    err = capsys.readouterr().err  # one line naming the folder and the command that makes a run
    assert err.startswith("error: ") and str(run_dir) in err and "python -m experiments.analyze" in err
    assert not (run_dir / "report.html").exists()


# --- the main job and the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run_dir = tmp / "run"
    cli(["experiment=tiny", "viz.enabled=false", "threads=1", f"hydra.run.dir={run_dir}"], tmp)
    return run_dir


@pytest.fixture(scope="module")
def applied_run(tiny_run):
    """The tiny run applied to 3 mosaics of the other texture family (figures off: the report is
    written all the same)."""
    out = tiny_run.parent / "applied"
    data = ["data=textures", "data.family=B", "data.num_images=3", "data.size=32", "data.seed=7"]
    cli(
        [f"run={tiny_run}", *data, "viz.enabled=false", f"hydra.run.dir={out}"],
        tiny_run.parent,
        "experiments.apply",
    )
    return out


def _rebuild(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.report", f"run={run_dir}"],
        cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_main_job_writes_the_report_into_its_manifest_and_a_rebuild_keeps_the_run_whole(tiny_run):
    run = RunOutputs(tiny_run)
    files = run.record["files"]
    assert "report.html" in files and all(f"maps/concepts/{k}.npz" in files for k in run.layers)
    assert run.metrics["timings"]["report_seconds"] > 0
    page = (tiny_run / "report.html").read_text()
    for name in [*run.layers, *run.images().names]:
        assert name in page
    before = {k: v for k, v in files.items() if k != "report.html"}
    (tiny_run / "report.html").write_text("changed by hand")
    with pytest.raises(ValueError, match="experiments.report run="):
        RunOutputs(tiny_run)
    proc = _rebuild(tiny_run)
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout
    rebuilt = RunOutputs(tiny_run)
    rebuilt.verify()
    assert {k: v for k, v in rebuilt.record["files"].items() if k != "report.html"} == before
    assert (tiny_run / "report.html").read_text() == page  # the same files give the same page
    # a run whose data files were changed is not rebuilt from them, and its report is left alone
    metrics_text = (tiny_run / "metrics.json").read_text()
    (tiny_run / "metrics.json").write_text(metrics_text.replace('"seed": 0', '"seed": 1'))
    assert report_main([f"run={tiny_run}"]) == 1
    assert (tiny_run / "report.html").read_text() == page
    (tiny_run / "metrics.json").write_text(metrics_text)


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)",
)


@contextlib.contextmanager
def _chromium():
    """A headless Chromium (selenium) that keeps the page's console log."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _click_map(driver, img, maps: LayerMaps, image: int, py: int, px: int) -> int:
    """Click the middle of input pixel ``(py, px)`` of a cluster map ``img``; the cluster there."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView()", img)
    labels_in = upsample_map(maps.labels, maps.geometry, "nearest")[image]
    H, W = labels_in.shape
    size = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", img
    )
    dx, dy = (px + 0.5) * size[0] / W - size[0] / 2, (py + 0.5) * size[1] / H - size[1] / 2
    ActionChains(driver).move_to_element_with_offset(img, round(dx), round(dy)).click().perform()
    return int(labels_in[py, px])


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


@pytest.mark.slow
@needs_chromium
def test_report_in_headless_chromium(tiny_run, tmp_path, record_property):
    from selenium.webdriver.common.by import By

    run = RunOutputs(tiny_run)
    with _chromium() as driver:
        driver.get((tiny_run / "report.html").as_uri())
        assert driver.find_elements(By.CSS_SELECTOR, "table.grid")
        heads = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "th.layer .lname")]
        assert heads == run.layers
        rows = driver.find_elements(By.CSS_SELECTOR, "table.grid tbody tr")
        assert len(rows) == len(run.images())
        for row in rows:  # every cell of every image has its four maps, all decoded by the browser
            maps = row.find_elements(By.CSS_SELECTOR, "img.map")
            assert len(maps) == 4 * len(run.layers)
            assert all(driver.execute_script("return arguments[0].naturalWidth", m) > 0 for m in maps)
        panel = driver.find_element(By.ID, "panel")
        assert not panel.is_displayed()
        last = driver.find_elements(By.CSS_SELECTOR, f'img.clickable[data-layer="{len(run.layers) - 1}"]')[0]
        # click the middle of input pixel (py, px) of image 0's cluster map of the deepest layer
        H, W = run.images().size
        k = _click_map(driver, last, run.maps(run.layers[-1]), 0, H // 4, (3 * W) // 4)
        assert panel.is_displayed()
        text = driver.find_element(By.ID, "panel-body").text
        assert run.layers[-1] in text and "weight" in text and "K̂ (90% interval)" in text
        assert "majority region" in text  # the textures have masks
        assert driver.find_elements(By.CSS_SELECTOR, "#panel .protos img")
        assert f"cluster {k}" in text  # the cluster under the click, as the maps say
        swatch = driver.find_elements(By.CSS_SELECTOR, '.swatch[data-level="concepts"]')[0]
        driver.execute_script("arguments[0].scrollIntoView()", swatch)
        swatch.click()
        assert "concept" in driver.find_element(By.ID, "panel-body").text
        last.click()
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        record_property("screenshot", str(shot))
        print(f"screenshot: {shot}")
        errors = _console_errors(driver)
        assert errors == [], errors
    assert shot.stat().st_size > 10_000


# --- an applied run (experiments.apply) ------------------------------------------------------------


@pytest.mark.slow
def test_applied_run_writes_its_report_into_its_manifest_and_a_rebuild_keeps_it_whole(tiny_run, applied_run):
    ref, run = RunOutputs(tiny_run), RunOutputs(applied_run)
    files = run.record["files"]
    assert "report.html" in files and all(f"maps/concepts/{k}.npz" in files for k in run.layers)
    run.verify()  # report.html's size and SHA-256 among them
    assert run.metrics["timings"]["report_seconds"] > 0
    assert not (applied_run / "figures").exists()  # viz.enabled=false: no figures, the report all the same
    page = (applied_run / "report.html").read_text()
    assert f"applied run of {tiny_run}" in page
    for name in [*run.layers, *run.images().names]:
        assert name in page
    data = _payload(page)
    assert data["applied"] is True and [L["name"] for L in data["layers"]] == ref.layers
    for L in data["layers"]:  # the reference's K̂ and concepts, the new images' maps and shift
        ref_row, row = ref.metrics["layers"][L["name"]], run.metrics["layers"][L["name"]]
        assert L["k"] == ref_row["n_active"] and L["k_interval"] == ref_row["n_active_interval"]
        assert L["concepts_k"] == ref_row["concepts"]["k"]
        assert L["shift"]["novelty_share"] == pytest.approx(row["novelty_share"])
        assert L["shift"]["reference_heldout_loglik"] == pytest.approx(ref_row["heldout_loglik"])
        maps = run.maps(L["name"])
        np.testing.assert_array_equal(
            _labels(L["levels"]["components"], tuple(maps.labels.shape)), maps.labels
        )
        concepts = run.concept_maps(L["name"])
        np.testing.assert_array_equal(
            _labels(L["levels"]["concepts"], tuple(maps.labels.shape)), concepts.labels
        )
        weights = {int(k): c["weight"] for k, c in L["levels"]["components"]["clusters"].items()}
        ref_weights = ref.maps(L["name"]).weights
        assert all(w == pytest.approx(float(ref_weights[k])) for k, w in weights.items())
    before = {k: v for k, v in files.items() if k != "report.html"}
    (applied_run / "report.html").write_text("changed by hand")
    with pytest.raises(ValueError, match="experiments.report run="):
        RunOutputs(applied_run)
    proc = _rebuild(applied_run)
    assert proc.returncode == 0, proc.stderr
    rebuilt = RunOutputs(applied_run)
    rebuilt.verify()
    assert {k: v for k, v in rebuilt.record["files"].items() if k != "report.html"} == before
    assert (applied_run / "report.html").read_text() == page


@pytest.mark.slow
@needs_chromium
def test_applied_run_report_in_headless_chromium(tiny_run, applied_run, tmp_path):
    from selenium.webdriver.common.by import By

    ref, run = RunOutputs(tiny_run), RunOutputs(applied_run)
    with _chromium() as driver:
        driver.get((applied_run / "report.html").as_uri())
        assert "applied run of" in driver.find_element(By.TAG_NAME, "h1").text
        assert str(tiny_run) in driver.find_element(By.CSS_SELECTOR, "p.applied").text
        heads = driver.find_elements(By.CSS_SELECTOR, "th.layer")
        assert [h.find_element(By.CSS_SELECTOR, ".lname").text for h in heads] == run.layers
        assert all("reference K̂" in h.text and "novelty share" in h.text for h in heads)
        rows = driver.find_elements(By.CSS_SELECTOR, "table.grid tbody tr")
        assert len(rows) == len(run.images()) == 3
        for row, name in zip(rows, run.images().names, strict=True):  # components, concepts, entropy, novelty
            assert name in row.text
            maps = row.find_elements(By.CSS_SELECTOR, "img.map")
            assert len(maps) == 4 * len(run.layers)
            assert all(driver.execute_script("return arguments[0].naturalWidth", m) > 0 for m in maps)
        panel = driver.find_element(By.ID, "panel")
        assert not panel.is_displayed()
        j = len(run.layers) - 1
        last = driver.find_elements(
            By.CSS_SELECTOR, f'img.clickable[data-layer="{j}"][data-level="components"]'
        )[2]
        H, W = run.images().size
        k = _click_map(driver, last, run.maps(run.layers[j]), 2, H // 2, W // 3)
        assert panel.is_displayed()
        text = driver.find_element(By.ID, "panel-body").text
        ref_row = ref.metrics["layers"][run.layers[j]]
        lo, hi = ref_row["n_active_interval"]
        assert f"{run.layers[j]}: cluster {k}" in text
        assert f"reference K̂ (90% interval) {ref_row['n_active']} [{lo:.0f}, {hi:.0f}]" in text
        assert "weight (reference posterior)" in text and "layer novelty share" in text
        assert driver.find_elements(By.CSS_SELECTOR, "#panel .protos img")
        swatch = driver.find_elements(By.CSS_SELECTOR, '.swatch[data-level="concepts"]')[0]
        driver.execute_script("arguments[0].scrollIntoView()", swatch)
        swatch.click()
        assert "reference concepts" in driver.find_element(By.ID, "panel-body").text
        shot = tmp_path / "applied_report.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        errors = _console_errors(driver)
        assert errors == [], errors
    assert shot.stat().st_size > 10_000
