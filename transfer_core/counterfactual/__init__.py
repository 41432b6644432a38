"""Counterfactuals: retrain without the classes an influence ranking names, and compare.

    outcome = counterfactual_from_analysis("demo", CounterfactualPlan(ks=(10, 20), seeds=3), ctx=ctx)
    outcome.selection.describe()     # the pruned source chosen on validation, with its test figures

Its settings (:mod:`~transfer_core.counterfactual.settings`: the plan and the evidence rule).
Pure pieces (:mod:`~transfer_core.counterfactual.grid`: which classes each point removes, and the
plan as a record; :mod:`~transfer_core.counterfactual.summary`: intervals over seeds, the
selection and the paired contrasts) are kept apart from what reads the store
(:mod:`~transfer_core.counterfactual.gate`: a plan's table and its look, recomputed), training
the grid (:mod:`~transfer_core.counterfactual.step`) and logging its report. Looks at a selection
half are counted in the look ledger (:mod:`~transfer_core.counterfactual.looks`), which neither
``mlflow gc`` nor a new tracking store resets.
"""
from transfer_core import lazy_exports

_EXPORTS = {
    "StaleCounterfactual": "transfer_core.counterfactual.gate",
    "read_plan": "transfer_core.counterfactual.gate",
    "recompute_selection": "transfer_core.counterfactual.gate",
    "FULL": "transfer_core.counterfactual.settings",
    "ORDERS": "transfer_core.counterfactual.settings",
    "CounterfactualPlan": "transfer_core.counterfactual.settings",
    "EvidenceRule": "transfer_core.counterfactual.settings",
    "ranking_order": "transfer_core.counterfactual.grid",
    "removal_set": "transfer_core.counterfactual.grid",
    "LEDGER_ARTIFACT": "transfer_core.counterfactual.looks",
    "Look": "transfer_core.counterfactual.looks",
    "LookLedger": "transfer_core.counterfactual.looks",
    "CONTRASTS_ARTIFACT": "transfer_core.counterfactual.report",
    "SELECTION_ARTIFACT": "transfer_core.counterfactual.report",
    "SUMMARY_ARTIFACT": "transfer_core.counterfactual.report",
    "TABLE_ARTIFACT": "transfer_core.counterfactual.report",
    "log_report": "transfer_core.counterfactual.report",
    "CounterfactualOutcome": "transfer_core.counterfactual.step",
    "CounterfactualRuns": "transfer_core.counterfactual.step",
    "counterfactual_from_analysis": "transfer_core.counterfactual.step",
    "run_counterfactual": "transfer_core.counterfactual.step",
    "CONTRASTS": "transfer_core.counterfactual.summary",
    "RULE_VERSION": "transfer_core.counterfactual.summary",
    "Selection": "transfer_core.counterfactual.summary",
    "contrasts": "transfer_core.counterfactual.summary",
    "select": "transfer_core.counterfactual.summary",
    "summarize": "transfer_core.counterfactual.summary",
    "t_interval": "transfer_core.counterfactual.summary",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
