"""Tuning: Optuna searches the transfer recipe on the target validation split's ranking half, tracked in MLflow.

    result = tune(build_config("quick"), TuneSettings(n_trials=20), "demo", ctx=ctx)
    recipe = tuned_recipe(ctx.client, experiment_id)   # TunedRecipe(run_id, overrides) of the latest study

Pure pieces (the search space, the schedule-aware pruner) are kept apart from the MLflow
records of a study (:mod:`~transfer_core.tune.records`).
"""
from transfer_core import lazy_exports

_EXPORTS = {
    "ScheduleMedianPruner": "transfer_core.tune.pruning",
    "TUNABLE": "transfer_core.tune.space",
    "Choices": "transfer_core.tune.space",
    "Range": "transfer_core.tune.space",
    "SearchSpace": "transfer_core.tune.space",
    "TuneSettings": "transfer_core.tune.settings",
    "StorageError": "transfer_core.tune.study",
    "TunedRecipe": "transfer_core.tune.study",
    "TuneResult": "transfer_core.tune.study",
    "find_tune_run": "transfer_core.tune.study",
    "recipe_from": "transfer_core.tune.study",
    "tune": "transfer_core.tune.study",
    "tuned_recipe": "transfer_core.tune.study",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
