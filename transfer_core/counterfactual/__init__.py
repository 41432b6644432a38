"""Counterfactuals: retrain without the classes an influence ranking names, and compare.

    outcome = counterfactual_from_analysis("demo", CounterfactualPlan(ks=(0, 10, 20), n_seeds=3))
    outcome.selection.describe()     # the pruned source chosen on validation, with its test figures

Pure pieces (:mod:`~transfer_core.counterfactual.grid`: which classes each point removes;
:mod:`~transfer_core.counterfactual.summary`: intervals over seeds and the selection) are kept
apart from training the grid and logging its report.
"""
from transfer_core.counterfactual.grid import FULL, ORDERS, CounterfactualPlan, ranking_order, removal_set
from transfer_core.counterfactual.report import SELECTION_ARTIFACT, SUMMARY_ARTIFACT, TABLE_ARTIFACT, log_report
from transfer_core.counterfactual.run import (CounterfactualOutcome, CounterfactualRuns, counterfactual_from_analysis,
                                              run_counterfactual)
from transfer_core.counterfactual.summary import Selection, select, summarize, t_interval

__all__ = ["FULL", "ORDERS", "CounterfactualPlan", "ranking_order", "removal_set", "SELECTION_ARTIFACT",
           "SUMMARY_ARTIFACT", "TABLE_ARTIFACT", "log_report", "CounterfactualOutcome", "CounterfactualRuns",
           "counterfactual_from_analysis", "run_counterfactual", "Selection", "select", "summarize", "t_interval"]
