"""Tracking: the MLflow store, run lookups and run lifecycle, what a run logs, and claims.

- :mod:`~transfer_core.track.store`: the store (embedded sqlite by default), made safely when
  several processes open a new one at once; experiments, tagged as training experiments.
- :mod:`~transfer_core.track.runs`: the one place for "latest FINISHED run of kind X", "is this
  id a run of kind X", filter quoting, params logged once, and FINISHED/FAILED endings.
- :mod:`~transfer_core.track.run_record`: what a subset run logs; model checkpoints.
- :mod:`~transfer_core.track.claims`: claiming a key (a model, a grid point, a parent run)
  through the store, so no work is done twice when commands overlap.
"""
from transfer_core.track.run_record import (CHECKPOINT_ARTIFACT, CLASSES_ARTIFACT, MASK_ARTIFACT, OUTPUTS_ARTIFACT,
                                           VAL_OUTPUTS_ARTIFACT, VAL_OUTPUTS_DIGEST_TAG, load_checkpoint,
                                           log_subset_result, save_checkpoint)
from transfer_core.track.runs import (KIND_TAG, artifact_path, describe_run, describe_step, get_run_of_kind,
                                      latest_run, log_metrics, log_new_params, mark_failed, metric_value, now_ms,
                                      one_line, quote, run_config, run_filter, run_scope, search_all, set_tags,
                                      to_local_path)
from transfer_core.track.store import (DEFAULT_EXPERIMENT, TrackingError, client_for, default_tracking_uri,
                                       existing_experiment, get_experiment_id, open_store)

__all__ = ["CHECKPOINT_ARTIFACT", "CLASSES_ARTIFACT", "MASK_ARTIFACT", "OUTPUTS_ARTIFACT", "VAL_OUTPUTS_ARTIFACT",
           "VAL_OUTPUTS_DIGEST_TAG",
           "load_checkpoint",
           "log_subset_result", "save_checkpoint", "KIND_TAG", "artifact_path", "describe_run", "describe_step",
           "get_run_of_kind", "latest_run",
           "log_metrics", "log_new_params", "mark_failed", "metric_value", "now_ms", "one_line", "quote", "run_config",
           "run_filter", "run_scope", "search_all", "set_tags", "to_local_path", "DEFAULT_EXPERIMENT",
           "TrackingError", "client_for", "default_tracking_uri", "existing_experiment", "get_experiment_id",
           "open_store"]
