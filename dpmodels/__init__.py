"""dpmodels: what has a convnet learned, layer by layer? Bayesian nonparametric clustering of
layer activations with Dirichlet-process Gaussian mixtures written in Pyro.

Shape vocabulary used throughout the code and its comments:

* ``B`` independent fits batched together (layers, restarts, hyperparameter settings);
* ``N`` data points (spatial positions of a layer), ``n`` points of one chunk or minibatch;
* ``D`` features (channels or PCA dimensions);
* ``K`` truncation level (an upper bound on the number of clusters);
* ``S`` posterior draws; ``I`` images; ``H, W`` map height and width.

Log-space values carry a ``log_`` prefix. ELBOs are total nats per fit unless a name or docstring
says "per point".
"""

import os as _os

# torch's CPU wheels carry two OpenMP runtimes: MKL's (Intel) spin-waits 200 ms after every BLAS
# call, starving torch's own OpenMP threads. On 2 cores that made small fits 10-30x slower. Not
# spinning costs nothing measurable on large problems. The runtime reads this lazily, so setting
# it here works even when torch was imported first; a user's own setting wins.
_os.environ.setdefault("KMP_BLOCKTIME", "0")

from .estimator import DPGMM, TruncationWarning, fit_batched  # noqa: E402
from .infer import ConvergenceWarning, FitResult  # noqa: E402
from .posterior import MixturePosterior  # noqa: E402
from .priors import WeightPrior, make_prior  # noqa: E402

__all__ = [
    "DPGMM",
    "fit_batched",
    "ConvergenceWarning",
    "TruncationWarning",
    "FitResult",
    "MixturePosterior",
    "WeightPrior",
    "make_prior",
]
__version__ = "0.1.0"
