"""Workflows over the stages: the ``main`` chain of MLproject entry points, and publishing results.

- :mod:`~transfer_core.workflow.main`: tune -> sweep -> analyze -> counterfactual -> register, each
  step an ``mlflow.run`` of its entry point, reused when a FINISHED run has the same key.
- :mod:`~transfer_core.workflow.publish`: RESULTS.md, tables and figures from an experiment's runs.
"""
