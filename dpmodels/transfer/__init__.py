"""Per-layer transfer analysis: which layers of a network trained on a source data set serve a
target data set (Malmgren-Hansen et al. 2017, arXiv 1702.07189)?

* shift scores from a layer's source DPGMM: :func:`shift_scores`, :func:`layer_shift_table`,
  :func:`joint_usage` (one fit on both sets, per-cluster usage);
* representation similarity between networks: :func:`linear_cka`, :func:`layer_cka`;
* measured transfer: :func:`linear_probe_accuracy`, :func:`finetune_accuracy`,
  :func:`scratch_accuracy`, :func:`transfer_sweep` (``transfer_drop = scratch - frozen``) and the
  few-shot protocol :func:`few_shot_transfer` (``transfer_drop = reference - frozen``, matched depth);
* agreement between the two: :func:`spearman_with_ci` (paired bootstrap interval);
* the whole experiment (:mod:`dpmodels.transfer.experiment`): :func:`make_conditions`,
  :func:`run_conditions`; its report (:mod:`dpmodels.transfer.report`): :func:`correlate`,
  :func:`verdict`, :func:`measurement_check`, :func:`write_report`.
"""

from .cka import layer_cka, linear_cka
from .experiment import Condition, make_conditions, run_conditions
from .freezing import frozen_parameter_names, prepare_transfer_copy, set_train_mode
from .measured import (
    accuracy,
    few_shot_subset,
    few_shot_transfer,
    finetune,
    finetune_accuracy,
    linear_probe_accuracy,
    scratch_accuracy,
    transfer_sweep,
)
from .report import correlate, measurement_check, verdict, write_report
from .scores import as_posterior, js_divergence, occupancy, shift_scores
from .stats import spearman_with_ci
from .table import fit_layers, heldout_split, layer_shift_table
from .usage import JointUsage, joint_usage

__all__ = [
    "Condition",
    "JointUsage",
    "accuracy",
    "as_posterior",
    "correlate",
    "few_shot_subset",
    "few_shot_transfer",
    "finetune",
    "finetune_accuracy",
    "fit_layers",
    "frozen_parameter_names",
    "heldout_split",
    "joint_usage",
    "js_divergence",
    "layer_cka",
    "layer_shift_table",
    "linear_cka",
    "linear_probe_accuracy",
    "make_conditions",
    "measurement_check",
    "occupancy",
    "prepare_transfer_copy",
    "run_conditions",
    "scratch_accuracy",
    "set_train_mode",
    "shift_scores",
    "spearman_with_ci",
    "transfer_sweep",
    "verdict",
    "write_report",
]
