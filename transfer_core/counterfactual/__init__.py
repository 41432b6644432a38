"""Counterfactuals: retrain without the classes an influence ranking names, and compare.

    outcome = counterfactual_from_analysis("demo", CounterfactualPlan(ks=(0, 10, 20), n_seeds=3))
    outcome.selection.describe()     # the pruned source chosen on validation, with its test figures

Pure pieces (:mod:`~transfer_core.counterfactual.grid`: which classes each point removes, and the
plan as a record; :mod:`~transfer_core.counterfactual.summary`: intervals over seeds, the
selection and the paired contrasts) are kept apart from what reads the store
(:mod:`~transfer_core.counterfactual.gate`: a plan's table and its look, recomputed), training
the grid (:mod:`~transfer_core.counterfactual.run`) and logging its report.
"""
from transfer_core.counterfactual.gate import StaleCounterfactual, read_plan, recompute_selection
from transfer_core.counterfactual.grid import FULL, ORDERS, CounterfactualPlan, ranking_order, removal_set
from transfer_core.counterfactual.report import (CONTRASTS_ARTIFACT, SELECTION_ARTIFACT, SUMMARY_ARTIFACT,
                                                 TABLE_ARTIFACT, log_report)
from transfer_core.counterfactual.run import (CounterfactualOutcome, CounterfactualRuns, counterfactual_from_analysis,
                                              run_counterfactual)
from transfer_core.counterfactual.summary import (CONTRASTS, RULE_VERSION, EvidenceRule, Selection, contrasts, select,
                                                  summarize, t_interval)

__all__ = ["StaleCounterfactual", "read_plan", "recompute_selection", "FULL", "ORDERS", "CounterfactualPlan",
           "ranking_order", "removal_set", "CONTRASTS_ARTIFACT", "SELECTION_ARTIFACT", "SUMMARY_ARTIFACT",
           "TABLE_ARTIFACT", "log_report", "CounterfactualOutcome", "CounterfactualRuns",
           "counterfactual_from_analysis", "run_counterfactual", "CONTRASTS", "RULE_VERSION", "EvidenceRule",
           "Selection", "contrasts", "select", "summarize", "t_interval"]
