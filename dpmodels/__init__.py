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

from .estimator import DPGMM
from .infer import ConvergenceWarning, FitResult
from .posterior import MixturePosterior
from .priors import WeightPrior

__all__ = ["DPGMM", "ConvergenceWarning", "FitResult", "MixturePosterior", "WeightPrior"]
__version__ = "0.1.0"
