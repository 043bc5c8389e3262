"""Evaluation of frozen representations: linear probes, site-aware CV and the OpenBHB challenge score.

Probes, scores and plots work on feature matrices (numpy) and participants tables (pandas)
with scikit-learn and matplotlib. Fine-tuning, which trains, is ``medssl.finetune``'s: this
package imports nothing from ``medssl.train`` or ``medssl.finetune``. Names are imported on
first use, so ``from medssl.eval import score_predictions`` loads only the scoring module (no
probes, matplotlib or torch) and scoring a predictions file starts fast.

Example:
    >>> from medssl.eval import challenge_score, evaluate_representation, print_report
    >>> round(challenge_score(mae_ext=3.76, bacc=0.051), 2)
    1.54
    >>> results = evaluate_representation(features, table, "eval_out", baseline_features=random_features)
    >>> print_report(results)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medssl.lazy import lazy_exports

_MODULE_OF = {
    "EvaluationError": "score",
    "challenge_score": "score",
    "ramp_combined": "score",
    "read_predictions": "score",
    "score_predictions": "score",
    "leave_site_out_folds": "folds",
    "site_stratified_folds": "folds",
    "challenge_protocol": "probes",
    "cross_validate_probes": "probes",
    "plot_age_predictions": "plots",
    "plot_embedding": "plots",
    "plot_loss_curve": "plots",
    "plot_roc_curves": "plots",
    "evaluate_representation": "report",
    "print_report": "report",
}

__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from medssl.eval.folds import leave_site_out_folds, site_stratified_folds
    from medssl.eval.plots import plot_age_predictions, plot_embedding, plot_loss_curve, plot_roc_curves
    from medssl.eval.probes import challenge_protocol, cross_validate_probes
    from medssl.eval.report import evaluate_representation, print_report
    from medssl.eval.score import EvaluationError, challenge_score, ramp_combined, read_predictions, score_predictions


__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF, globals())
