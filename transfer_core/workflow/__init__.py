"""Workflows over the stages: the one pipeline, and publishing results.

- :mod:`~transfer_core.workflow.pipeline`: tune -> sweep -> analyze -> counterfactual -> register
  -> publish, with every default in :class:`PipelineSettings`; ``transfer-core main``, ``mlflow
  run .`` and the study (a named settings file) all run it.
- :mod:`~transfer_core.workflow.publish`: RESULTS.md, tables and figures from an experiment's runs
  (``from transfer_core.workflow.publish import publish``).
"""
from transfer_core import lazy_exports

_EXPORTS = {
    "STUDIES_DIR": "transfer_core.workflow.settings",
    "PipelineSettings": "transfer_core.workflow.settings",
    "study_names": "transfer_core.workflow.settings",
    "STEPS": "transfer_core.workflow.pipeline",
    "PipelineResult": "transfer_core.workflow.pipeline",
    "run_pipeline": "transfer_core.workflow.pipeline",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
