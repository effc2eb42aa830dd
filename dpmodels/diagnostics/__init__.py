"""Posterior diagnostics with ArviZ: the only part of dpmodels that imports ArviZ.

* :func:`to_inference_data` — draws of fitted variational posteriors (chains = restarts) as an
  ``InferenceData`` with aligned components, label-invariant quantities and pointwise
  log-likelihoods (assignments summed out); :func:`save_inference_data` /
  :func:`load_inference_data` store it as netCDF.
* :func:`summarize`, :func:`loo`, :func:`explain_loo`, :func:`compare_priors` — ArviZ summaries,
  PSIS-LOO and LOO-based comparison of weight priors.
* :func:`vi_pareto_k` — the PSIS ``k_hat`` check of a variational fit (Yao et al. 2018).
* :func:`gibbs_sample`, :func:`gibbs_like` — a blocked Gibbs reference sampler of the same model;
  :func:`sbc_ranks` — simulation-based calibration of it.
* plots: :func:`plot_elbo`, :func:`plot_active_components`, :func:`plot_weights_forest`,
  :func:`plot_predictive_check`.

Shapes follow the package vocabulary; ``C`` is the number of chains.
"""

from .build import FORMAT_VERSION
from .gibbs import GibbsKernel, gibbs_like, gibbs_sample
from .inference_data import to_inference_data
from .io import load_inference_data, save_inference_data
from .plots import plot_active_components, plot_elbo, plot_predictive_check, plot_weights_forest
from .psis import ParetoResult, explain_pareto_k, vi_pareto_k
from .sbc import rank_uniformity_pvalue, sbc_ranks
from .summaries import compare, compare_priors, explain_loo, loo, summarize

__all__ = [
    "FORMAT_VERSION",
    "GibbsKernel",
    "ParetoResult",
    "compare",
    "compare_priors",
    "explain_loo",
    "explain_pareto_k",
    "gibbs_like",
    "gibbs_sample",
    "load_inference_data",
    "loo",
    "plot_active_components",
    "plot_elbo",
    "plot_predictive_check",
    "plot_weights_forest",
    "rank_uniformity_pvalue",
    "save_inference_data",
    "sbc_ranks",
    "summarize",
    "to_inference_data",
    "vi_pareto_k",
]
