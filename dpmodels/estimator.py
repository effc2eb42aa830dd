"""``DPGMM``: one call for people who want a fitted Dirichlet-process Gaussian mixture.

>>> from dpmodels import DPGMM
>>> model = DPGMM(truncation=30).fit(X)          # X: (N, D) NumPy array or torch tensor
>>> labels, k = model.predict(X), model.n_active_
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ._validation import NotFittedError, Param, as_points, check_device, check_params
from .data.source import PointSource, spool
from .distributed import Shard, check_shards, resolve_group
from .infer import FitResult, NaturalOptions, PyroOptions, fit_natural, fit_pyro
from .infer.degenerate import warn_if_degenerate
from .infer.memory import check_memory, estimate_fit_bytes
from .models.affine import AffineScaling, repeat_source, standardize
from .models.base_measure import COVARIANCE_TYPES, empirical_base_measure
from .models.dpgmm import ModelSpec
from .posterior import MixturePosterior
from .priors import make_prior

__all__ = ["DPGMM", "ENGINES", "TruncationWarning", "fit_batched"]

ENGINES = ("natural", "pyro")


class TruncationWarning(UserWarning):
    """Every one of the ``truncation`` components is in use: the data may hold more clusters."""


class DPGMM:
    """Truncated Dirichlet-process (or Pitman–Yor, or finite) Gaussian mixture, fitted by VI.

    Parameters
    ----------
    truncation : upper bound ``K`` on the number of components (not a guess of it).
    prior : a name in :data:`dpmodels.priors.PRIORS`: ``"dp"``, ``"pitman_yor"``, ``"finite"``
        (symmetric Dirichlet) or ``"beta_sticks"`` (two-parameter stick breaking).
    concentration : ``alpha``; the starting value when ``learn_concentration``.
    discount : Pitman–Yor discount ``d`` in ``[0, 1)``.
    learn_concentration : infer ``alpha`` under a ``Gamma(1, 1)`` hyperprior.
    prior_settings : further settings of the chosen prior by name (keywords of
        :func:`~dpmodels.priors.make_prior`), e.g. ``{"a": 0.5}`` for ``"beta_sticks"``.
    covariance : ``"full"`` (Normal–Wishart), ``"diag"`` (Normal–Gamma) or ``"lowrank"`` (a
        factor analyser per component: ``rank`` loadings plus diagonal noise,
        :mod:`dpmodels.models.lowrank`; for wide layers, between the two in cost and fit).
    rank : the number of factors of ``"lowrank"`` components, ``1 <= rank < D`` (``None``:
        ``min(16, D - 1)``); ignored by the other types.
    loading_precision : the loadings' prior precision relative to the noise precision
        (``"lowrank"`` only; ``None``: ``1 / D``, a prior as wide as the data's spread).
    engine : ``"natural"`` (closed-form natural-gradient VI, default) or ``"pyro"`` (Pyro SVI).
    batch_size : minibatch size (``None`` = full batch).
    seed : seeds the initialisation and minibatch order; same seed, same result (CPU).
    device : ``"cpu"`` or ``"cuda"``.
    n_restarts : independent initialisations fitted together; the best ELBO is kept.
    max_iter, tol : iteration limit (full-batch iterations or Pyro steps) and ELBO tolerance
        (nats per point); ``None`` keeps the engine's default.
    active_threshold : share of the data a component must explain to count in ``n_active_``.
    mean_precision, dof, scale : base-measure overrides (defaults follow the data; ``scale`` is
        ``Psi`` in the data's units; ``mean_precision=None`` is 1, or ``1 / D`` for ``"lowrank"``,
        see :func:`~dpmodels.models.empirical_base_measure`).
    progress : show a progress bar while fitting.
    chunk_size : points per E-step chunk (``None``: sized to keep temporaries near 4 MiB).
    checkpoint : file path for fit checkpoints (natural engine only). The engine's state is saved
        there atomically at most every ``checkpoint_every`` seconds (``0``: every step); calling
        ``fit`` again with the same data and settings resumes from it and ends, on CPU, with the
        same result bit for bit as an uninterrupted fit. A checkpoint of another fit, or a corrupt
        one, raises :class:`~dpmodels.infer.FitCheckpointError` and is left untouched. It is removed
        after a successful fit unless ``keep_checkpoint``.
    checkpoint_every : seconds of wall time between checkpoint saves.
    keep_checkpoint : keep the final state in ``checkpoint`` after the fit (a repeated call then
        returns at once with the same result).

    The fit runs on standardised data (centred at the data mean, divided by one global scale, both
    in float64), so it does not depend on the data's units or offset; ``means_``,
    ``covariances_``, ``posterior_``, ``fit_result_`` and every score are in the data's units.
    When all ``truncation`` components end up active a :class:`TruncationWarning` says to raise
    ``truncation``. A fit that would need more memory than is available is refused before it
    allocates, with :class:`~dpmodels.infer.memory.InsufficientMemoryError` (a ``ValueError``)
    giving the estimate and what to lower.
    """

    #: What every parameter must be; :meth:`validate` checks them (``fit`` calls it) and the
    #: config layer reuses the table (``experiments`` checks a job's settings before any work).
    _parameter_constraints: dict[str, Param] = {
        "truncation": Param("int", low=1, hint="try 30 (an upper bound on clusters)"),
        "prior": Param("any"),  # the prior registry checks names and settings (dpmodels.priors.make_prior)
        "concentration": Param("number"),
        "discount": Param("number"),
        "learn_concentration": Param("bool"),
        "prior_settings": Param("dict", none=True),
        "covariance": Param("choice", choices=COVARIANCE_TYPES, hint="try 'diag' for many features or 'full' otherwise"),
        "rank": Param("int", low=1, none=True, hint="try 16, or None for min(16, D - 1)"),
        "loading_precision": Param("number", low=0, open_low=True, none=True, hint="None means 1 / D"),
        "engine": Param("choice", choices=ENGINES, hint="try engine='natural'"),
        "batch_size": Param("int", low=1, none=True, hint="use None for full-batch fitting"),
        "seed": Param("int"),
        "device": Param("device"),
        "n_restarts": Param("int", low=1, hint="try 1 or 4"),
        "max_iter": Param("int", low=1, none=True, hint="use None for the engine's default"),
        "tol": Param("number", low=0, open_low=True, none=True, unit="nats per point", hint="try 1e-5"),
        "active_threshold": Param("number", low=0, high=1, open_high=True, hint="try 0.01"),
        "mean_precision": Param("number", low=0, open_low=True, none=True, hint="try 1.0, or None for the default"),
        "dof": Param("number", none=True, hint="None follows the data (dof = D)"),
        "scale": Param("any"),
        "progress": Param("bool"),
        "chunk_size": Param("int", low=1, none=True, hint="use None to size chunks automatically"),
        "checkpoint": Param("path", none=True, hint="pass a file path such as 'fit.ckpt'"),
        "checkpoint_every": Param("number", low=0, unit="seconds", hint="try 30.0"),
        "keep_checkpoint": Param("bool"),
    }  # fmt: skip

    def __init__(
        self,
        *,
        truncation: int = 30,
        prior: str = "dp",
        concentration: float = 1.0,
        discount: float = 0.0,
        learn_concentration: bool = False,
        prior_settings: dict | None = None,
        covariance: str = "full",
        rank: int | None = None,
        loading_precision: float | None = None,
        engine: str = "natural",
        batch_size: int | None = None,
        seed: int = 0,
        device: str = "cpu",
        n_restarts: int = 1,
        max_iter: int | None = None,
        tol: float | None = None,
        active_threshold: float = 0.01,
        mean_precision: float | None = None,
        dof: float | None = None,
        scale=None,
        progress: bool = False,
        chunk_size: int | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: float = 30.0,
        keep_checkpoint: bool = False,
    ):
        self.truncation = truncation
        self.prior = prior
        self.concentration = concentration
        self.discount = discount
        self.learn_concentration = learn_concentration
        self.prior_settings = prior_settings
        self.covariance = covariance
        self.rank = rank
        self.loading_precision = loading_precision
        self.engine = engine
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.n_restarts = n_restarts
        self.max_iter = max_iter
        self.tol = tol
        self.active_threshold = active_threshold
        self.mean_precision = mean_precision
        self.dof = dof
        self.scale = scale
        self.progress = progress
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoint = keep_checkpoint

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters and their values (scikit-learn's estimator API)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names if name != "kwargs"}

    def set_params(self, **params):
        """Set constructor parameters (checked at the next :meth:`fit` or :meth:`validate`)."""
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {name!r}; its parameters: {sorted(valid)}."
                )
            setattr(self, name, value)
        return self

    def validate(self):
        """Check every parameter against :attr:`_parameter_constraints` and the ones that depend on
        each other (a learned concentration needs a closed form on the natural engine; checkpoints
        need the natural engine); build the weight prior. ``fit`` calls it; call it yourself to
        check settings before any work. Returns ``self``; raises one ``ValueError`` per problem."""
        check_params(self.get_params(), self._parameter_constraints)
        self.weight_prior = make_prior(
            self.prior,
            concentration=float(self.concentration),
            discount=float(self.discount),
            learn_concentration=bool(self.learn_concentration),
            **(self.prior_settings or {}),
        )
        if self.engine == "natural":
            self.weight_prior.require_closed_form(
                "a learned concentration has closed-form updates",
                "use engine='pyro' for it, or learn_concentration=False.",
            )
        if self.covariance == "lowrank" and self.engine != "natural":
            raise ValueError(
                f"covariance='lowrank' is fitted by engine='natural' only, got engine={self.engine!r}; use "
                "engine='natural' (the Pyro model of low-rank components is there to check the bound: "
                "dpmodels.models.lowrank_pyro)."
            )
        if self.checkpoint is not None and self.engine != "natural":
            raise ValueError(
                f"checkpoint is supported by engine='natural' only, got engine={self.engine!r}; "
                "use engine='natural' or checkpoint=None."
            )
        self._device = check_device(self.device)
        return self

    # ---- fitting --------------------------------------------------------------------------------
    def _options(self, num_points: int):
        batch = self.batch_size
        if batch is not None and batch > num_points:
            warnings.warn(
                f"batch_size={batch} exceeds the {num_points} points; fitting full batch instead.",
                UserWarning,
                stacklevel=3,
            )
            batch = None
        overrides = {}
        if self.tol is not None:
            overrides["tol"] = self.tol
        if self.engine == "natural":
            if self.max_iter is not None:
                overrides["max_iter"] = self.max_iter
            return NaturalOptions(
                batch_size=batch, progress=self.progress, chunk_size=self.chunk_size, **overrides
            )
        if self.max_iter is not None:
            overrides["max_steps"] = self.max_iter
        return PyroOptions(batch_size=batch, progress=self.progress, **overrides)

    def fit(self, X, *, distributed="auto") -> DPGMM:
        """Fit to ``X``: an ``(N, D)`` array or tensor, or the path of an ``(N, D)`` ``.npy`` file (or
        an ``np.memmap``), which is read in chunks and never loaded whole. Returns ``self``.

        ``distributed``: inside an initialised ``torch.distributed`` process group (``"auto"``, the
        default, or ``True``), ``X`` is this rank's shard and the fit is that of all ranks' shards
        together (natural engine): every rank ends with the same posterior, equal to the fit of the
        concatenated data up to summation order (:mod:`dpmodels.distributed`). ``False`` fits this
        process's ``X`` alone even inside a group."""
        self.validate()
        group = resolve_group(distributed, self._device)
        raw = self._load_shard(group, "DPGMM.fit", lambda least: self._source(X, min_points=least))
        self._check_memory(self.n_restarts, *raw.shape[1:], in_memory=raw._mapping is None)
        # z = (x - centre) / scale (1, N, D); full covariance: on the data's range where it is smaller
        warn_if_degenerate(raw, self.covariance, stacklevel=3, group=group)
        source, scaling = standardize(raw, group=group, on_range=self.covariance == "full")
        N, D = source.shape[1:]
        data = repeat_source(source, self.n_restarts)  # (B, N, D), restarts share memory
        base = self._base_measure(source, scaling, group)
        base = base.map(lambda t: t.expand((self.n_restarts,) + t.shape[1:]).clone())
        spec = ModelSpec(self.weight_prior, base.to(device=self._device), self.truncation)
        result = self._run(data, spec, group, check_degenerate=False)
        scaling = scaling.expand(self.n_restarts)
        best = int(torch.nan_to_num(result.elbo, nan=-torch.inf).argmax())
        self._adopt(result, scaling.result_to_user(result), scaling, best)
        return self

    def fit_stream(self, batches, spool_dir: str | Path | None = None, *, distributed="auto") -> DPGMM:
        """Fit to a stream: an iterable of ``(n, D)`` arrays or tensors (e.g. a DataLoader of layer
        activations), read once. The points are spooled to a float32 file in a temporary folder
        (inside ``spool_dir`` if given; removed afterwards) and fitted from disk chunk by chunk, so
        memory stays bounded whatever the stream's length. Returns ``self``."""
        if isinstance(batches, (np.ndarray, torch.Tensor, str, Path)):
            raise ValueError(
                "fit_stream takes an iterable of (n, D) batches; use fit(X) for one array or file."
            )
        with tempfile.TemporaryDirectory(prefix="dpmodels-stream-", dir=spool_dir) as folder:
            points = spool(batches, Path(folder) / "points.f32")
            try:
                return self.fit(points, distributed=distributed)
            finally:
                del points

    def _resolved_rank(self, num_features: int):
        """``rank``, or ``min(16, D - 1)`` when it is ``None`` (low-rank components)."""
        return max(1, min(16, num_features - 1)) if self.rank is None else self.rank

    def _base_measure(self, source, scaling, group):
        """The empirical base measure of the standardised ``source`` with this estimator's overrides.
        Diagonal covariance takes ``z``'s moments from the pass that measured the scaling
        (:meth:`~dpmodels.models.affine.AffineScaling.z_moments`): one pass over the data less."""
        D = source.shape[-1]
        rank = self._resolved_rank(D) if self.covariance == "lowrank" else None
        moments = scaling.z_moments() if self.covariance == "diag" else None
        return empirical_base_measure(
            source,
            self.covariance,
            mean_precision=self.mean_precision,
            dof=self.dof,
            scale=scaling.scale_to_z(self.scale, self.covariance, D),
            group=group,
            rank=rank,
            loading_precision=self.loading_precision,
            moments=moments,
        )

    def _check_memory(self, B: int, N: int, D: int, in_memory: bool = True) -> None:
        """Refuse, before allocating, a fit that would not fit in memory (see :mod:`dpmodels.infer.memory`)."""
        needed = estimate_fit_bytes(
            B,
            N,
            D,
            self.truncation,
            self.covariance,
            chunk_size=self.chunk_size,
            batch_size=self.batch_size,
            merge=self.engine == "natural",
            data_in_memory=in_memory,
            rank=self._resolved_rank(D) if self.covariance == "lowrank" else 0,
        )
        check_memory(
            needed,
            f"fitting {B} mixture(s) with truncation={self.truncation}, covariance={self.covariance!r} "
            f"to {N} points of {D} features",
            "Lower truncation (an upper bound on the clusters; memory grows as its square), use "
            "covariance='diag' or fewer features (pca_dim), or set chunk_size/batch_size; "
            "DPMODELS_MEMORY_LIMIT=0 skips this check.",
            self._device,
        )

    def _settings(self) -> dict:
        """Every setting that shapes a fit, as strings (data-parallel ranks must agree on them)."""
        keys = (
            "truncation", "weight_prior", "covariance", "rank", "loading_precision", "engine", "batch_size", "seed", "device", "n_restarts",
            "max_iter", "tol", "active_threshold", "mean_precision", "dof", "scale", "chunk_size", "checkpoint",
            "checkpoint_every", "keep_checkpoint",
        )  # fmt: skip
        return {k: repr(getattr(self, k)) for k in keys}

    def _load_shard(self, group, what: str, load):
        """``load(min_points)``: this process's points as a ``(B, N, D)`` source or tensor. Data-parallel
        (``group``), a collective check too: every rank's shard valid, non-empty and of the same
        ``(B, D)``, the settings equal on every rank; any failure is one error on every rank."""
        if group is None:
            return load(2)
        error, data = None, None
        try:
            if self.engine != "natural":
                raise ValueError(
                    f"engine={self.engine!r} fits one process's data only; use engine='natural' for a "
                    "data-parallel fit, or distributed=False to fit each rank's data alone."
                )
            data = load(0)
        except ValueError as err:
            error = err
        B, N, D = tuple(data.shape) if data is not None else (0, 0, 0)
        dtype = str(getattr(data, "dtype", None))
        sizes = group.check(error, what, local=N, settings=self._settings(), dtype=dtype, B=B, D=D)
        check_shards(sizes, what)
        return data

    def _run(self, data, spec: ModelSpec, group=None, check_degenerate: bool = True) -> FitResult:
        if check_degenerate:
            warn_if_degenerate(data, self.covariance, stacklevel=4, group=group)
        num_points = data.shape[1] if group is None else Shard.of(data.shape[1], group).total
        options = self._options(num_points)
        if self.engine == "pyro":
            return fit_pyro(data, spec, seed=int(self.seed), options=options, device=self._device)
        return fit_natural(
            data,
            spec,
            seed=int(self.seed),
            options=options,
            device=self._device,
            checkpoint=None if self.checkpoint is None else Path(self.checkpoint),
            checkpoint_every=float(self.checkpoint_every),
            keep_checkpoint=bool(self.keep_checkpoint),
            group=group,
        )

    def _adopt(self, result: FitResult, user: FitResult, scaling: AffineScaling, index: int) -> None:
        """Take fit ``index`` of a (batched) result as this estimator's fit: ``result`` as fitted on
        standardised data, ``user`` the same in the data's units."""

        def posterior(r: FitResult) -> MixturePosterior:
            full = MixturePosterior(r.params, r.spec, r.counts, r.num_points, self.active_threshold)
            return full.select(index)

        self.posterior_ = posterior(user)  # the data's units: what maps and diagnostics consume
        self._z_posterior, self._scaling = posterior(result), scaling.select(index)
        self.fit_result_ = user
        self.n_features_in_ = scaling.centre.shape[-1]  # the user's D (z may be narrower: on the range)
        self.elbo_ = float(user.elbo[index])
        self.elbo_history_ = user.elbo_history[:, index].numpy()
        self.n_iter_ = result.n_iter
        self.converged_ = bool(result.converged[index])
        z_post, s = self._z_posterior, float(self._scaling.scale[0])
        self.weights_ = z_post.weights[0].cpu().numpy()
        centre = self._scaling.centre[0].numpy()
        means, covariances = z_post.means[0].cpu().double(), z_post.covariances[0].cpu().double()
        if self._scaling.basis is not None:  # fitted on the data's range: back to all D coordinates
            q = self._scaling.basis[0]
            means, covariances = means @ q.T, self.posterior_.covariances[0].cpu().double() / s**2
        self.means_ = centre + s * means.numpy()  # float64, the data's units
        self.covariances_ = s**2 * covariances.numpy()
        self.n_active_ = int(z_post.n_active[0])
        if self.truncation > 1 and self.n_active_ >= self.truncation:
            warnings.warn(
                f"all {self.truncation} components are active (n_active_ == truncation): the data may "
                f"hold more clusters than the truncation allows; refit with a larger truncation "
                f"(e.g. truncation={2 * self.truncation}).",
                TruncationWarning,
                stacklevel=4,
            )

    @staticmethod
    def _source(X, min_points: int = 2) -> PointSource:
        """Validated ``(1, N, D)`` view of the training data (in-memory data is checked at once,
        on-disk data chunk by chunk)."""
        if isinstance(X, (str, Path, np.memmap)):
            source = PointSource(X)
            if source.shape[0] != 1:
                raise ValueError(f"X must have shape (N, D), got {tuple(source.shape)}.")
            N, D = source.shape[1:]
            if D == 0 or N < min_points:
                raise ValueError(f"X needs at least {min_points} points and 1 feature, got shape ({N}, {D}).")
            source.check_finite()
            return source
        return PointSource(as_points(X, dtype=_input_dtype(X), min_points=min_points))

    # ---- prediction -----------------------------------------------------------------------------
    def _check(self, X) -> torch.Tensor:
        """``X`` standardised as the training data were (in float64, then the fit's dtype)."""
        if not hasattr(self, "posterior_"):
            raise NotFittedError("this DPGMM is not fitted yet; call fit(X) first.")
        x = as_points(X, dtype=_input_dtype(X), min_points=1)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features but the model was fitted on {self.n_features_in_}; "
                "pass points with the same features (columns)."
            )
        return self._scaling.apply(x, self._z_posterior.params.mean.dtype).to(self._device)

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities ``(N, K)``, components ordered by weight."""
        x = self._check(X)
        return self._z_posterior.responsibilities(x)[0].cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """Most probable component per point ``(N,)``."""
        x = self._check(X)
        return self._z_posterior.predict(x)[0].cpu().numpy()

    def score_samples(self, X) -> np.ndarray:
        """Posterior predictive log density per point (nats, in the data's units) ``(N,)``."""
        x = self._check(X)
        log_z = self._z_posterior.log_predictive(x)[0].cpu().double().numpy()
        return log_z - float(self._scaling.log_det()[0])  # Jacobian of z = (x - centre) / scale

    def score(self, X) -> float:
        """Mean posterior predictive log density (nats per point)."""
        return float(self.score_samples(X).mean())

    def __repr__(self) -> str:
        return (
            f"DPGMM(truncation={self.truncation}, prior={self.prior!r}, concentration={self.concentration}, "
            f"covariance={self.covariance!r}, engine={self.engine!r}, seed={self.seed})"
        )


def _input_dtype(X) -> torch.dtype:
    """float64 for float64 input (standardisation then runs on the exact values), else float32."""
    dtype = getattr(X, "dtype", None)
    return torch.float64 if dtype in (np.float64, torch.float64) else torch.float32


def fit_batched(datasets, *, distributed="auto", **kwargs) -> list[DPGMM]:
    """Fit one mixture per data set, all ``B`` of them in one batched tensor program.

    ``datasets``: an array or tensor ``(B, N, D)``, or a list of ``B`` arrays ``(N, D)`` of equal
    shape (e.g. several layers projected to a common dimension, or seeds of one layer). Keyword
    arguments are those of :class:`DPGMM` (``n_restarts`` must be 1). Each data set gets its own
    empirical-Bayes base measure. Returns one fitted :class:`DPGMM` per data set; they share one
    ``fit_result_`` (wall time and iterations are those of the whole batch). Inside a
    ``torch.distributed`` process group (``distributed="auto"``), each rank passes its shard of every
    data set and each fit is that of all ranks' shards of its data set (see :meth:`DPGMM.fit`).
    """
    if kwargs.get("n_restarts", 1) != 1:
        raise ValueError(
            "fit_batched runs one fit per data set; use n_restarts=1 (or DPGMM.fit for restarts)."
        )
    template = DPGMM(**kwargs).validate()
    group = resolve_group(distributed, template._device)
    data = template._load_shard(
        group, "fit_batched", lambda least: _batched_points(datasets, min_points=least)
    )
    template._check_memory(*data.shape)
    source, scaling = standardize(PointSource(data), group=group)  # each data set by its own centre and scale
    base = template._base_measure(source, scaling, group)
    spec = ModelSpec(template.weight_prior, base.to(device=template._device), template.truncation)
    result = template._run(source, spec, group)
    user = scaling.result_to_user(result)
    models = []
    for b in range(data.shape[0]):
        model = DPGMM(**kwargs).validate()
        model._adopt(result, user, scaling, b)
        models.append(model)
    return models


def _batched_points(datasets, min_points: int = 2) -> torch.Tensor:
    """``datasets`` (a ``(B, N, D)`` array or a list of ``(N, D)`` arrays) as one validated tensor."""
    if isinstance(datasets, (list, tuple)):
        if not datasets:
            raise ValueError("fit_batched needs at least one data set, got an empty list.")
        points = [
            as_points(x, name=f"datasets[{i}]", dtype=_input_dtype(x), min_points=min_points)
            for i, x in enumerate(datasets)
        ]
        shapes = {tuple(p.shape) for p in points}
        if len(shapes) > 1:
            raise ValueError(
                f"all data sets must share one shape (N, D) to be batched, got {sorted(shapes)}; "
                "subsample to a common N and project to a common D (e.g. PCA) first."
            )
        data = torch.stack([p.to(points[0].dtype) for p in points])
    else:
        data = torch.as_tensor(np.asarray(datasets) if not isinstance(datasets, torch.Tensor) else datasets)
        if data.dim() != 3:
            raise ValueError(f"datasets must have shape (B, N, D), got {tuple(data.shape)}.")
        dtype = _input_dtype(data)
        data = torch.stack(
            [
                as_points(x, name=f"datasets[{i}]", dtype=dtype, min_points=min_points)
                for i, x in enumerate(data)
            ]
        )
    return data
