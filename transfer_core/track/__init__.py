"""Tracking: the MLflow store, run lookups and run lifecycle, what a run logs, and claims.

- :mod:`~transfer_core.track.store`: the store (embedded sqlite by default), made safely when
  several processes open a new one at once; experiments, tagged as training experiments.
- :mod:`~transfer_core.track.runs`: the one place for "latest FINISHED run of kind X", "is this
  id a run of kind X", filter quoting, params logged once, and FINISHED/FAILED endings.
- :mod:`~transfer_core.track.run_record`: what a subset run logs; model checkpoints.
- :mod:`~transfer_core.track.claims`: claiming a key (a model, a grid point, a parent run)
  through the store, so no work is done twice when commands overlap.
- :mod:`~transfer_core.track.ui`: the MLflow server app (``mlflow server --app-name transfer-core``)
  whose bare address opens on the study in Model training mode.

Names load their module on first use (:func:`transfer_core.lazy_exports`): the UI's server imports
:mod:`~transfer_core.track.ui` without torch, which :mod:`~transfer_core.track.run_record` needs.
"""
from transfer_core import lazy_exports

_MODULES = {
    "transfer_core.track.run_record": ["CHECKPOINT_ARTIFACT", "CLASSES_ARTIFACT", "MASK_ARTIFACT", "OUTPUTS_ARTIFACT",
                                       "VAL_OUTPUTS_ARTIFACT", "VAL_OUTPUTS_DIGEST_TAG", "load_checkpoint",
                                       "log_subset_result", "save_checkpoint"],
    "transfer_core.track.runs": ["KIND_TAG", "artifact_path", "describe_run", "describe_step", "get_run_of_kind",
                                 "latest_run", "log_metrics", "log_new_params", "mark_failed", "metric_value", "now_ms",
                                 "one_line", "quote", "run_config", "run_filter", "run_scope", "search_all",
                                 "set_tags", "to_local_path"],
    "transfer_core.track.store": ["DEFAULT_EXPERIMENT", "TrackingError", "client_for", "default_tracking_uri",
                                  "existing_experiment", "get_experiment_id", "open_store"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
