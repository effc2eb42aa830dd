"""report.html: what the page holds (built from hand-made run files), the main job writing it into
its manifest, the rebuild by `python -m experiments.report`, and the page in a real headless
Chromium (console errors, every layer and image, the cluster panel, a screenshot)."""

import base64
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
    env = {**os.environ, "DPMODELS_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    args = ["experiment=tiny", "viz.enabled=false", "threads=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.analyze", *args], cwd=tmp, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


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
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.report", f"run={tiny_run}"],
        cwd=tiny_run.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
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


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)",
)
def test_report_in_headless_chromium(tiny_run, tmp_path, record_property):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run = RunOutputs(tiny_run)
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
        driver.execute_script("arguments[0].scrollIntoView()", last)
        # click the middle of input pixel (py, px) of image 0's cluster map of the deepest layer
        labels_in = upsample_map(
            run.maps(run.layers[-1]).labels, run.maps(run.layers[-1]).geometry, "nearest"
        )[0]
        H, W = labels_in.shape
        py, px = H // 4, (3 * W) // 4
        size = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", last
        )
        dx, dy = (px + 0.5) * size[0] / W - size[0] / 2, (py + 0.5) * size[1] / H - size[1] / 2
        ActionChains(driver).move_to_element_with_offset(last, round(dx), round(dy)).click().perform()
        assert panel.is_displayed()
        text = driver.find_element(By.ID, "panel-body").text
        assert run.layers[-1] in text and "weight" in text and "K̂ (90% interval)" in text
        assert "majority region" in text  # the textures have masks
        assert driver.find_elements(By.CSS_SELECTOR, "#panel .protos img")
        k = int(labels_in[py, px])
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
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
    finally:
        driver.quit()
    assert shot.stat().st_size > 10_000
