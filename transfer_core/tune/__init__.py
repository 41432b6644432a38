"""Tuning: Optuna searches the transfer recipe on the target validation split, tracked in MLflow.

    result = tune(build_config("quick"), TuneSettings(n_trials=20), experiment="demo")
    recipe = tuned_recipe(experiment_id)          # TunedRecipe(run_id, overrides) of the latest study

Pure pieces (the search space, the schedule-aware pruner) are kept apart from the MLflow
records of a study (:mod:`~transfer_core.tune.records`).
"""
from transfer_core.tune.pruning import ScheduleMedianPruner
from transfer_core.tune.space import TUNABLE, Choices, Range, SearchSpace
from transfer_core.tune.study import (StorageError, TunedRecipe, TuneResult, TuneSettings, find_tune_run, recipe_from,
                                      tune, tuned_recipe)

__all__ = ["ScheduleMedianPruner", "TUNABLE", "Choices", "Range", "SearchSpace", "StorageError", "TunedRecipe",
           "TuneResult", "TuneSettings", "find_tune_run", "recipe_from", "tune", "tuned_recipe"]
