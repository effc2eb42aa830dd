"""Speed and quality benchmarks of the DPGMM engines on planted-cluster data.

Each :class:`BenchmarkCase` plants an unequal-weight Gaussian mixture
(:class:`dpmodels.data.PlantedMixture`), draws a training set of ``N`` points (``B`` independent
training sets for batched fits) and one held-out set, and runs the requested methods on it:

* ``natural``: :class:`dpmodels.DPGMM` with the natural-gradient engine;
* ``natural_batched``: ``B`` independent fits in one :func:`dpmodels.infer.fit_natural` call,
  plus (in the same run) a single ``B = 1`` fit of the first dataset, reported as the row
  ``natural_single``; the batched row carries ``batched_over_single`` (wall-time ratio);
* ``natural_memmap``: :class:`dpmodels.DPGMM` (natural engine) fitted from the path of an
  ``.npy`` file, which the library memory-maps and reads chunk by chunk. The training points are
  written to a temporary file chunk by chunk (the parent never holds them whole), the fit runs in a
  child process, and the row carries that child's peak resident memory (``peak_rss_mib``, measured
  after the fit; it includes the pages of the memory-mapped file that were resident). The ARI uses
  the first :data:`MEMMAP_ARI_ROWS` points of the file;
* ``pyro``: :class:`dpmodels.DPGMM` with the generic Pyro SVI engine (reference, slow);
* ``sklearn``: scikit-learn's ``BayesianGaussianMixture`` with a Dirichlet-process prior.

Every method returns one row (a ``dict`` with the keys of :data:`ROW_FIELDS`). Wall times cover
fitting only (data already on the device); ``heldout_loglik`` is the mean log predictive density
of the held-out points in nats per point (for ``B > 1`` also averaged over fits); ``ari`` is the
adjusted Rand index of the training labels against the planted ones (mean over fits);
``speedup_vs_sklearn`` is ``B * sklearn wall time / wall time``, i.e. the time scikit-learn would
need for the same number of fits divided by the method's, measured in the same run (``None`` when
scikit-learn did not run). Non-convergence does not raise here: it shows in the ``converged``
column. scikit-learn always runs on the CPU, in float64; the torch engines get float32 tensors.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpmodels.data import PlantedMixture
from dpmodels.estimator import DPGMM
from dpmodels.infer import ConvergenceWarning, NaturalOptions, fit_natural
from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.posterior import MixturePosterior
from dpmodels.priors import WeightPrior

__all__ = [
    "METHODS",
    "ROW_FIELDS",
    "BenchmarkCase",
    "BenchmarkSettings",
    "WidthSettings",
    "Problem",
    "environment",
    "format_table",
    "make_problem",
    "resolve_device",
    "run_benchmark",
    "run_case",
    "write_results",
]

METHODS = ("natural", "natural_batched", "natural_memmap", "pyro", "sklearn")
IN_MEMORY_METHODS = ("natural", "natural_batched", "pyro", "sklearn")  # those that need the points in RAM
ROW_FIELDS = tuple(
    "case method device N D K covariance B n_clusters wall_seconds heldout_loglik true_heldout_loglik ari "
    "n_active converged speedup_vs_sklearn batched_over_single peak_rss_mib error".split()
)
ACTIVE_THRESHOLD = 0.01  # share of the fitted points a component must explain to count as active
MEMMAP_ARI_ROWS = 200_000  # natural_memmap: the ARI is computed on (at most) this many leading points

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class BenchmarkCase:
    """One planted-cluster problem and the methods to run on it.

    ``n_clusters`` is the planted number of clusters, ``truncation`` the fitted ``K``;
    ``batch_size`` (``None`` = full batch) applies to the torch engines; ``n_fits`` is ``B`` for
    ``natural_batched``; ``max_iter`` bounds the natural engine's full-batch iterations (``None``:
    its default), ``sklearn_max_iter`` scikit-learn's (default 300, the natural engine's cap),
    ``pyro_steps`` the Pyro SVI steps.
    """

    name: str
    n_points: int = 2000
    n_features: int = 4
    n_clusters: int = 5
    truncation: int = 20
    covariance: str = "full"
    methods: list[str] = field(default_factory=lambda: ["natural", "sklearn"])
    batch_size: int | None = None
    n_fits: int = 1
    seed: int = 0
    max_iter: int | None = None
    sklearn_max_iter: int = 300
    pyro_steps: int = 500

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"case {self.name!r}: methods must be a non-empty list from {METHODS}, got {self.methods}."
            )
        if self.covariance not in ("full", "diag"):
            raise ValueError(
                f"case {self.name!r}: covariance must be 'full' or 'diag', got {self.covariance!r}."
            )
        for key in "n_points n_features n_clusters truncation n_fits sklearn_max_iter pyro_steps".split():
            if getattr(self, key) < 1:
                raise ValueError(f"case {self.name!r}: {key} must be >= 1, got {getattr(self, key)}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"case {self.name!r}: batch_size must be >= 1 or None (full batch).")


@dataclass
class ExtractionSettings:
    """The activation-extraction benchmark (:mod:`experiments.bench.extraction`): throughput of the
    small CNN and resnet18 at 64 and 224 px, and peak memory while streaming ``store_images``
    images of a large layer to disk (``None``: 10 000); ``zoo``: also timm and Hugging Face models at
    224 px (``zoo_images`` images each; skipped with a note when the libraries are absent)."""

    enabled: bool = False
    quick: bool = False
    store_images: int | None = None
    zoo: bool = True
    zoo_images: int = 8


@dataclass
class WidthSettings:
    """The width benchmark (``experiments/bench/width.py``): planted clusters at every width in
    ``dims`` and covariance type in ``covariances`` (``diag``, ``lowrank`` with ``rank`` factors,
    ``full``), on Gaussian clusters, on ReLU-clipped ones and on factor-analyser clusters of rank
    ``rank`` (``data``), dpmodels against scikit-learn's ``BayesianGaussianMixture``
    (capped at ``sklearn_cap_s`` seconds of wall time, reported as ``> cap``). ``n_points`` training
    points (``full_n_points`` overrides it per width for full covariance, keys are widths), a
    held-out set of ``heldout_points``, ``n_clusters`` planted and ``truncation`` fitted
    components. ``quick``: a seconds-long version (small widths and sizes) for tests."""

    enabled: bool = False
    quick: bool = False
    dims: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    covariances: list[str] = field(default_factory=lambda: ["diag", "lowrank", "full"])
    data: list[str] = field(default_factory=lambda: ["gaussian", "relu", "factor"])
    rank: int = 16
    n_points: int = 50_000
    full_n_points: dict[str, int] = field(default_factory=lambda: {"64": 20_000})
    heldout_points: int = 10_000
    n_clusters: int = 10
    truncation: int = 50
    sklearn: bool = True
    sklearn_cap_s: float = 600.0
    seed: int = 0


@dataclass
class ScalingSettings:
    """The scaling benchmark (``experiments/bench/scaling.py``): one planted data set (``n_points`` in
    all, ``n_features`` wide, ``n_clusters`` clusters, ``covariance``) fitted with ``truncation``
    components in each number of data-parallel ``processes`` (``torchrun``, ``backend``; the
    machine's threads divided among them), compared with the one-process fit. ``quick``: a
    seconds-long version for tests. ``timeout_s``: the process group's timeout."""

    enabled: bool = False
    quick: bool = False
    processes: list[int] = field(default_factory=lambda: [1, 2])
    n_points: int = 1_000_000
    n_features: int = 32
    n_clusters: int = 10
    truncation: int = 30
    covariance: str = "full"
    heldout_points: int = 20_000
    backend: str = "gloo"
    timeout_s: float = 600.0
    seed: int = 0


@dataclass
class ContentionSettings:
    """The contention benchmark (``experiments/bench/contention.py``): ``fits`` planted data sets
    (``n_points`` x ``n_features``, ``n_clusters`` clusters, ``covariance``, ``truncation``) fitted in
    one process and split evenly over each count in ``processes`` running at the same time, with the
    library's thread default and with every process on all the cores. ``quick``: seconds, for tests."""

    enabled: bool = False
    quick: bool = False
    processes: list[int] = field(default_factory=lambda: [2])
    fits: int = 6
    n_points: int = 20_000
    n_features: int = 16
    n_clusters: int = 8
    truncation: int = 30
    covariance: str = "full"
    timeout_s: float = 600.0
    seed: int = 0


@dataclass
class BenchmarkSettings:
    """Run-wide settings: torch ``device`` (``"cpu"`` or ``"cuda"``), ``threads`` for torch and the
    BLAS under scikit-learn (``None``: leave as is), held-out set size, a tiny warm-up fit before
    timing (CUDA context, thread pools), whether a method that raises stops the run
    (``fail_fast``) or is reported in the ``error`` column, and the cases."""

    device: str = "cpu"
    threads: int | None = None
    heldout_points: int = 2000
    warmup: bool = True
    fail_fast: bool = False
    cases: list[BenchmarkCase] = field(default_factory=list)
    extraction: ExtractionSettings = field(default_factory=lambda: ExtractionSettings())
    width: WidthSettings = field(default_factory=lambda: WidthSettings())
    scaling: ScalingSettings = field(default_factory=lambda: ScalingSettings())
    contention: ContentionSettings = field(default_factory=lambda: ContentionSettings())


@dataclass
class Problem:
    """Data of one case: ``train[b] = (X (N, D) float64, labels (N,))`` for ``b < B`` (all methods but
    ``natural_batched`` use ``train[0]``; empty when the case runs only ``natural_memmap``, which
    draws the same points again straight into a file), a held-out set, and the true held-out log
    density."""

    mixture: PlantedMixture
    train: list[tuple[np.ndarray, np.ndarray]]
    X_test: np.ndarray
    y_test: np.ndarray
    true_heldout_loglik: float


def resolve_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``; a clear error when CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}.") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but torch sees no CUDA GPU here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); run with device=cpu or on a machine with a GPU."
        )
    return dev


def _draw_chunks(
    mixture: PlantedMixture, n_points: int, key: Sequence[int]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, X (n, D) float64, labels (n,))`` for ``n_points`` draws, chunk ``i`` seeded by
    ``(*key, i)``: the same ``key`` gives the same points whether they are kept or streamed."""
    D = mixture.n_features
    chunk = max(1024, 2**24 // (D * D))
    for i, start in enumerate(range(0, n_points, chunk)):
        seed = int(np.random.SeedSequence([*key, i]).generate_state(1)[0])
        X, y = mixture.sample(min(chunk, n_points - start), seed=seed)
        yield start, X, y


def _draw(mixture: PlantedMixture, n_points: int, key: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``n_points`` draws, made in chunks (bounded temporaries) and concatenated."""
    parts = list(_draw_chunks(mixture, n_points, key))
    return np.concatenate([X for _, X, _ in parts]), np.concatenate([y for _, _, y in parts])


def make_problem(case: BenchmarkCase, heldout_points: int) -> Problem:
    """Plant the case's mixture (seeded by ``case.seed``) and draw its training and held-out sets."""
    mixture = PlantedMixture(case.n_clusters, case.n_features, covariance=case.covariance, seed=case.seed)
    in_memory = any(m in IN_MEMORY_METHODS for m in case.methods)
    n_sets = case.n_fits if "natural_batched" in case.methods else int(in_memory)
    train = [_draw(mixture, case.n_points, (case.seed, 1, b)) for b in range(n_sets)]
    X_test, y_test = _draw(mixture, heldout_points, (case.seed, 2))
    true_ll = float(mixture.log_density(X_test).mean())
    return Problem(mixture, train, X_test, y_test, true_ll)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


@contextmanager
def _quiet() -> Iterator[None]:
    """Record non-convergence in the ``converged`` column instead of raising or printing it."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", SklearnConvergenceWarning)
        yield


def _ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels_true, labels_pred))


def _batch(case: BenchmarkCase) -> int | None:
    return case.batch_size if case.batch_size is not None and case.batch_size < case.n_points else None


def _row(case: BenchmarkCase, method: str, device: torch.device, B: int, seconds: float, **values) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(
        case=case.name,
        method=method,
        device=str(device),
        N=case.n_points,
        D=case.n_features,
        K=case.truncation,
        covariance=case.covariance,
        B=B,
        n_clusters=case.n_clusters,
        wall_seconds=seconds,
    )
    row.update(values)
    return row


def _run_dpgmm(case: BenchmarkCase, problem: Problem, device: torch.device, engine: str) -> dict:
    X, y = problem.train[0]
    x = torch.as_tensor(X, dtype=torch.float32, device=device)
    model = DPGMM(
        truncation=case.truncation,
        covariance=case.covariance,
        engine=engine,
        batch_size=_batch(case),
        seed=case.seed,
        device=str(device),
        max_iter=case.pyro_steps if engine == "pyro" else case.max_iter,
        active_threshold=ACTIVE_THRESHOLD,
    )
    _, seconds = _timed(lambda: model.fit(x), device)
    return _row(
        case,
        engine,
        device,
        1,
        seconds,
        heldout_loglik=model.score(problem.X_test),
        ari=_ari(y, model.predict(x)),
        n_active=model.n_active_,
        converged=model.converged_,
    )


def _fit_batched(case: BenchmarkCase, data: torch.Tensor, device: torch.device):
    spec = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(data, case.covariance), case.truncation)
    extra = {} if case.max_iter is None else {"max_iter": case.max_iter}
    options = NaturalOptions(batch_size=_batch(case), progress=False, **extra)
    return spec, fit_natural(data, spec, seed=case.seed, options=options, device=device)


def _run_natural_batched(case: BenchmarkCase, problem: Problem, device: torch.device) -> list[dict]:
    data = torch.as_tensor(
        np.stack([X for X, _ in problem.train]), dtype=torch.float32, device=device
    )  # (B, N, D)
    x_test = torch.as_tensor(problem.X_test, dtype=torch.float32, device=device)  # (n, D)
    rows = []
    for method, subset in (("natural_single", data[:1]), ("natural_batched", data)):
        (spec, result), seconds = _timed(lambda s=subset: _fit_batched(case, s, device), device)
        post = MixturePosterior(result.params, spec, result.counts, case.n_points, ACTIVE_THRESHOLD)
        labels = post.predict(subset).cpu().numpy()  # (B, N)
        aris = [_ari(problem.train[b][1], labels[b]) for b in range(subset.shape[0])]
        rows.append(
            _row(
                case,
                method,
                device,
                subset.shape[0],
                seconds,
                heldout_loglik=float(post.log_predictive(x_test).mean()),
                ari=float(np.mean(aris)),
                n_active=float(post.n_active.float().mean()),
                converged=bool(result.converged.all()),
            )
        )
    rows[1]["batched_over_single"] = rows[1]["wall_seconds"] / rows[0]["wall_seconds"]  # batched / single
    return rows


def _run_sklearn(case: BenchmarkCase, problem: Problem, threads: int | None) -> dict:
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    X, y = problem.train[0]
    model = BayesianGaussianMixture(
        n_components=case.truncation,
        covariance_type=case.covariance,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0,
        init_params="kmeans",
        max_iter=case.sklearn_max_iter,
        random_state=case.seed,
    )
    with threadpool_limits(limits=threads):
        _, seconds = _timed(lambda: model.fit(X), torch.device("cpu"))
    return _row(
        case,
        "sklearn",
        torch.device("cpu"),
        1,
        seconds,
        heldout_loglik=float(model.score(problem.X_test)),
        ari=_ari(y, model.predict(X)),
        n_active=int((model.weights_ > ACTIVE_THRESHOLD).sum()),
        converged=bool(model.converged_),
    )


def _write_training_file(case: BenchmarkCase, mixture: PlantedMixture, path: Path) -> np.ndarray:
    """Write the case's training points (those of ``make_problem``'s ``train[0]``) to the ``.npy``
    file ``path`` as float32, one chunk at a time; returns the labels of the first
    ``min(N, MEMMAP_ARI_ROWS)`` points (the others are dropped as they are written).

    Plain sequential writes rather than a writable memory map, so that the written pages never
    count in this process's resident memory."""
    n_keep = min(case.n_points, MEMMAP_ARI_ROWS)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
    labels = []
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (case.n_points, case.n_features)})
        for start, X, y in _draw_chunks(mixture, case.n_points, (case.seed, 1, 0)):
            f.write(np.ascontiguousarray(X, dtype=np.float32).tobytes())
            if start < n_keep:
                labels.append(y[: n_keep - start])
    return np.concatenate(labels)


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is in KiB on Linux and
    in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def _rss_breakdown_mib() -> dict[str, float]:
    """Current anonymous and file-backed resident memory (``RssAnon``, ``RssFile``) in MiB where
    ``/proc`` tells (Linux); empty elsewhere."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


class _RssSampler:
    """Highest ``RssAnon`` and ``RssFile`` seen while the ``with`` block runs, sampled every
    ``interval`` seconds in a thread (the kernel keeps a peak of their sum only)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for key, value in _rss_breakdown_mib().items():
                self.peak[key] = max(value, self.peak.get(key, 0.0))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _memmap_child(job_path: str) -> None:
    """The child-process side of ``natural_memmap``: read the job (JSON at ``job_path``), fit
    :class:`DPGMM` to the path of the training file, and write the results as JSON to the job's
    ``result`` path. Only this fit and the bare imports run in the process, so its peak resident
    memory is that of the memory-mapped fit."""
    job = json.loads(Path(job_path).read_text())
    if job["threads"] is not None:
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    model = DPGMM(
        truncation=job["truncation"],
        covariance=job["covariance"],
        batch_size=job["batch_size"],
        seed=job["seed"],
        device=job["device"],
        max_iter=job["max_iter"],
        active_threshold=ACTIVE_THRESHOLD,
    )
    with warnings.catch_warnings(), _RssSampler() as sampler:
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, seconds = _timed(lambda: model.fit(job["train"]), device)
    peak = _peak_rss_mib()
    heldout = model.score(np.load(job["heldout"]))
    head = np.array(np.load(job["train"], mmap_mode="r")[: job["ari_rows"]])
    result = {
        "wall_seconds": seconds,
        "peak_rss_mib": peak,
        "peak_parts_mib": sampler.peak,
        "heldout_loglik": heldout,
        "labels": model.predict(head).tolist(),
        "n_active": model.n_active_,
        "converged": model.converged_,
        "n_iter": model.n_iter_,
    }
    Path(job["result"]).write_text(json.dumps(result))


_CHILD_CODE = "import sys; from experiments.bench.engines import _memmap_child; _memmap_child(sys.argv[1])"


def _run_natural_memmap(
    case: BenchmarkCase, problem: Problem, device: torch.device, threads: int | None, log: Log
) -> dict:
    """Write the training points to a temporary ``.npy`` file, fit from its path in a child process,
    and report the child's fit time and peak resident memory; the file is removed afterwards."""
    batch = _batch(case)
    with tempfile.TemporaryDirectory(prefix="dpmodels-memmap-") as tmp:
        tmp_dir = Path(tmp)
        train, heldout = tmp_dir / "train.npy", tmp_dir / "heldout.npy"
        start = time.perf_counter()
        labels = _write_training_file(case, problem.mixture, train)
        log(
            f"[{case.name}] natural_memmap: wrote {train.stat().st_size / 2**30:.2f} GiB of training points "
            f"in {time.perf_counter() - start:.1f} s; fitting from the file in a child process"
        )
        np.save(heldout, problem.X_test)
        job = {
            "train": str(train),
            "heldout": str(heldout),
            "result": str(tmp_dir / "result.json"),
            "ari_rows": len(labels),
            "truncation": case.truncation,
            "covariance": case.covariance,
            "batch_size": batch,
            "seed": case.seed,
            "max_iter": case.max_iter,
            "device": str(device),
            "threads": threads,
        }
        job_path = tmp_dir / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])  # so the child imports this dpmodels
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(job_path)], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-15:]
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise RuntimeError(f"the memmap fit process failed ({how}): " + " | ".join(tail))
        result = json.loads(Path(job["result"]).read_text())
    parts = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_parts_mib"].items())
    log(
        f"[{case.name}] natural_memmap child: peak RSS {result['peak_rss_mib']:.0f} MiB; sampled peaks "
        f"during the fit (MiB): {parts or 'n/a'} (RssFile includes the mapped file's resident pages); "
        f"{result['n_iter']} full-data iterations"
    )
    return _row(
        case,
        "natural_memmap",
        device,
        1,
        result["wall_seconds"],
        heldout_loglik=result["heldout_loglik"],
        ari=_ari(labels, np.asarray(result["labels"])),
        n_active=result["n_active"],
        converged=result["converged"],
        peak_rss_mib=result["peak_rss_mib"],
    )


def _progress_line(row: dict) -> str:
    rss = "" if row["peak_rss_mib"] is None else f", peak RSS {row['peak_rss_mib']:.0f} MiB"
    return (
        f"[{row['case']}] {row['method']:<15} N={row['N']} D={row['D']} K={row['K']} B={row['B']} "
        f"on {row['device']}: {row['wall_seconds']:.2f} s, held-out {row['heldout_loglik']:.3f} nats/pt, "
        f"ARI {row['ari']:.3f}, active {row['n_active']:g}{rss}"
        + ("" if row["converged"] else " (not converged)")
    )


def _run_method(
    method: str,
    case: BenchmarkCase,
    problem: Problem,
    device: torch.device,
    threads: int | None,
    log: Log = _stderr,
) -> list[dict]:
    with _quiet():
        if method in ("natural", "pyro"):
            return [_run_dpgmm(case, problem, device, method)]
        if method == "natural_batched":
            return _run_natural_batched(case, problem, device)
        if method == "natural_memmap":
            return [_run_natural_memmap(case, problem, device, threads, log)]
        return [_run_sklearn(case, problem, threads)]


def run_case(case: BenchmarkCase, settings: BenchmarkSettings, log: Log = _stderr) -> list[dict]:
    """Run every method of ``case``; returns its rows (speedups filled in at the end)."""
    device = resolve_device(settings.device)
    problem = make_problem(case, settings.heldout_points)
    rows: list[dict] = []
    for method in case.methods:
        start = time.perf_counter()
        try:
            new = _run_method(method, case, problem, device, settings.threads, log)
        except Exception as err:  # noqa: BLE001 - one failing method must not lose the others' timings
            if settings.fail_fast:
                raise
            first_line = (str(err).strip().splitlines() or [""])[0]
            error = f"{type(err).__name__} after {time.perf_counter() - start:.1f} s: {first_line}"
            log(f"[{case.name}] {method} FAILED ({error}); run with fail_fast=true for the traceback")
            new = [_row(case, method, device, 1, float("nan"), error=error)]
        for row in new:
            row["true_heldout_loglik"] = problem.true_heldout_loglik
            if row["error"] is None:
                log(_progress_line(row))
        rows.extend(new)
    sk = next((r["wall_seconds"] for r in rows if r["method"] == "sklearn" and r["error"] is None), None)
    for row in rows:
        if sk is not None and row["error"] is None:
            row["speedup_vs_sklearn"] = sk * row["B"] / row["wall_seconds"]
    return rows


def _warm_up(device: torch.device) -> None:
    """A tiny fit so that one-off costs (CUDA context, kernels, thread pools) stay out of the timings."""
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    with _quiet():
        DPGMM(truncation=3, max_iter=5, device=str(device)).fit(x.to(device))


def run_benchmark(settings: BenchmarkSettings, log: Log = _stderr) -> list[dict]:
    """Run all cases of ``settings``; returns the rows of every case, in order."""
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(int(settings.threads))
    if settings.warmup:
        _warm_up(device)
    rows: list[dict] = []
    for case in settings.cases:
        rows.extend(run_case(case, settings, log))
    return rows


def environment(device: str = "cpu") -> dict:
    """Versions and hardware that the timings depend on."""
    import sklearn

    dev = torch.device(device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else None,
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


_COLUMNS = (  # header, row key, format
    ("case", "case", ""),
    ("method", "method", ""),
    ("device", "device", ""),
    ("N", "N", "d"),
    ("D", "D", "d"),
    ("K", "K", "d"),
    ("cov", "covariance", ""),
    ("B", "B", "d"),
    ("wall s", "wall_seconds", ".2f"),
    ("loglik/pt", "heldout_loglik", ".3f"),
    ("true/pt", "true_heldout_loglik", ".3f"),
    ("ARI", "ari", ".3f"),
    ("active", "n_active", "g"),
    ("conv", "converged", ""),
    ("vs sklearn", "speedup_vs_sklearn", ".2f"),
    ("batch/single", "batched_over_single", ".2f"),
    ("peak RSS MiB", "peak_rss_mib", ".0f"),
)


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of the rows (one line per method and case), failed methods listed below it."""
    cells = [[h for h, _, _ in _COLUMNS]]
    cells += [[_fmt(row.get(key), spec) for _, key, spec in _COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    left = 3  # text columns (case, method, device) align left, numbers right

    def line(cell_row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cell_row, widths, strict=True))
        )

    lines = [line(r) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines += [f"FAILED {row['case']}/{row['method']}: {row['error']}" for row in rows if row.get("error")]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path`` (readers never see a
    half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    """NaN and infinities as ``None`` so that the JSON stays standard."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def write_results(
    rows: Sequence[dict], output_dir: str | os.PathLike, settings: BenchmarkSettings | None = None
) -> tuple[Path, Path]:
    """Write ``benchmark.csv`` (the rows) and ``benchmark.json`` (rows, settings, environment) into
    ``output_dir``, each atomically; returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = out / "benchmark.csv", out / "benchmark.json"
    _write_atomic(csv_path, buf.getvalue())
    payload = {
        "settings": asdict(settings) if settings is not None else None,
        "environment": environment(settings.device if settings is not None else "cpu"),
        "rows": [{k: _finite(v) for k, v in row.items()} for row in rows],
    }
    _write_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path
