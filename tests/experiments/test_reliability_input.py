"""Bad input gets one line, not a traceback: keys the schema does not know (also when appended
with '+', in every entry point), a missing data.root, non-ASCII paths, folders that cannot be
written, errors in the demo; and the thread-count rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments import schema, transfer_schema
from experiments.common import check_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["experiment=tiny", "viz=none"]


def _cli(args, tmp: Path, module: str = "experiments.analyze", **env_extra):
    env = {**os.environ, "DPMODELS_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT), **env_extra}
    env.pop("DPMODELS_TRACEBACK", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600
    )


def _one_error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# --- item 8: '+key=value' of a key the schema does not know -------------------------------------


@pytest.mark.parametrize(
    "config, override, suggestion",
    [
        ("analyze", "+prior.concentraton=2", "prior.concentration"),
        ("analyze", "+seeed=3", "seed"),
        ("transfer", "+score.truncaton=3", "score.truncation"),
        ("benchmark", "+heldout_pionts=3", "heldout_points"),
        ("benchmark", "+cases.0.n_pionts=30", "cases.0.n_points"),
        ("demo", "++model.concentraton=2", "model.concentration"),
    ],
)
def test_appended_keys_the_schema_does_not_know_are_refused_in_every_entry_point(
    config, override, suggestion
):
    import experiments.benchmark  # noqa: F401  registers benchmark_schema

    schema.register()
    transfer_schema.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=[override])  # Hydra itself lets '+' through
        check_config(compose(config))  # the config without it passes
    with pytest.raises(ValueError, match=f"did you mean {suggestion}"):
        check_config(cfg)


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_an_appended_misspelled_key_stops_the_main_job_in_one_line(tmp_path):
    line = _one_error_line(
        _cli([*TINY, "+prior.concentraton=2", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    )
    assert "unknown config key prior.concentraton" in line and "did you mean prior.concentration" in line
    assert not (tmp_path / "cache").exists()  # refused before any work


# --- item 10: one line instead of a traceback ---------------------------------------------------


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_data_folder_without_root_is_one_line(tmp_path):
    line = _one_error_line(_cli([*TINY, "data=folder", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path))
    assert "data=folder needs data.root" in line


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_non_ascii_path_says_how_to_quote_it(tmp_path):
    line = _one_error_line(
        _cli([*TINY, "data=folder", "data.root=/nowhere/été", "hydra.run.dir=r"], tmp_path)
    )
    assert """'data.root="/nowhere/été"'""" in line


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_missing_path_says_how_to_quote_paths_for_hydra(tmp_path):
    missing = tmp_path / "my photos" / "été"
    proc = _cli([*TINY, "data=folder", f'data.root="{missing}"', f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    line = _one_error_line(proc)
    assert str(missing) in line and "quoted for Hydra" in line


def _read_only_folder() -> Path:
    """A folder that cannot be created even by root (sysfs), or skip."""
    probe = Path("/sys/dpmodels_probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys/dpmodels_test")
    probe.rmdir()
    pytest.skip("no read-only folder to test with")


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_read_only_output_folder_is_one_line(tmp_path):
    folder = _read_only_folder() / "run"
    line = _one_error_line(_cli([*TINY, f"hydra.run.dir={folder}"], tmp_path))
    assert f"cannot write the output folder {folder}" in line and "hydra.run.dir=DIR" in line


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_read_only_cache_folder_is_one_line(tmp_path):
    cache = _read_only_folder() / "cache"
    proc = _cli([*TINY, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, DPMODELS_CACHE=str(cache))
    line = _one_error_line(proc)
    assert f"cannot write to {cache.parent}" in line and "DPMODELS_CACHE" in line


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_demo_errors_are_one_line(tmp_path):
    line = _one_error_line(
        _cli(
            ["model.truncation=0", "model.progress=false", f"hydra.run.dir={tmp_path / 'r'}"],
            tmp_path,
            "experiments.demo",
        )
    )
    assert "truncation must be an integer >= 1" in line


# --- item 11: the thread-count rule -------------------------------------------------------------


def test_the_share_of_the_cores_under_the_parallel_launcher(monkeypatch):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from experiments import common

    class FakeHydra:
        mode = RunMode.MULTIRUN
        launcher = OmegaConf.create(
            {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 4}
        )

    monkeypatch.setattr(common.HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(common.HydraConfig, "get", staticmethod(lambda: FakeHydra))
    monkeypatch.setattr(common, "available_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert common.auto_threads() == (4, "16 cores / 4 parallel jobs")
    FakeHydra.launcher.n_jobs = -1  # joblib: one job per core
    assert common.auto_threads()[0] == 1
    FakeHydra.launcher.n_jobs = 32  # more jobs than cores: one thread each
    assert common.auto_threads()[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what joblib's workers inherit: not the user's choice
    FakeHydra.launcher.n_jobs = 4
    assert common.auto_threads() == (4, "16 cores / 4 parallel jobs")
    FakeHydra.mode = RunMode.RUN
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert common.auto_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.auto_threads() == (16, "16 cores / 1 parallel job")
