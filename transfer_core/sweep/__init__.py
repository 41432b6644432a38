"""Sweeps: many subset runs of one config, resumable, parallel and distributed, and reading them back.

    summary = sweep_with_summary(build_config("synthetic"), SweepSettings(n_models=8), ctx=ctx)
    runs = collect_sweep(summary.sweep_id, ctx=ctx)   # masks (n_models, n_classes), outputs["margin"] (n_models, n)
"""
from transfer_core.sweep.settings import SweepSettings
from transfer_core.sweep.collect import CollectedRuns, check_sweep_id, collect_sweep, finished_runs
from transfer_core.sweep.sweep import (TUNE_RUN_TAG, SweepConflictError, SweepIncomplete, SweepSummary, find_sweeps,
                                       run_sweep, sweep_id_for, sweep_with_summary)

__all__ = ["SweepSettings", "CollectedRuns", "check_sweep_id", "collect_sweep", "finished_runs", "TUNE_RUN_TAG",
           "SweepConflictError",
           "SweepIncomplete", "SweepSummary", "find_sweeps", "run_sweep", "sweep_id_for", "sweep_with_summary"]
