"""Analysis: class influences of a sweep, their uncertainty, and the findings built on them.

    result = analyze("demo", options=AnalysisOptions(output="correct", bootstrap=200))
    ranking = class_ranking(result.run_id)       # class_influence.csv: one row per source class

Pure computation (:mod:`~transfer_core.analysis.influence` estimators,
:mod:`~transfer_core.analysis.estimate`, :mod:`~transfer_core.analysis.findings`,
:mod:`~transfer_core.analysis.duplicates`) is kept apart from pictures
(:mod:`~transfer_core.analysis.figures`), the report and the MLflow step
(:mod:`~transfer_core.analysis.run`). To add an estimator, add a function to
``influence.ESTIMATORS`` and test it against a naive loop in ``tests/analysis``.
Sign convention everywhere: positive influence = including the source class helps the target.
"""
from transfer_core.analysis.estimate import OUTPUTS, AnalysisOptions, Estimates, estimate
from transfer_core.analysis.run import (AnalysisResult, analyze, class_ranking, find_analysis_run,
                                        get_analysis_run)

__all__ = ["OUTPUTS", "AnalysisOptions", "Estimates", "estimate", "AnalysisResult", "analyze", "class_ranking",
           "find_analysis_run", "get_analysis_run"]
