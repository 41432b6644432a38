"""Analysis: class influences of a sweep, their uncertainty, and the findings built on them.

    result = analyze("demo", settings=AnalysisSettings(output="correct", bootstrap=200), ctx=ctx)
    ranking = class_ranking(ctx.client, result.run_id)   # one row per source class

Pure computation (:mod:`~transfer_core.analysis.influence` estimators,
:mod:`~transfer_core.analysis.estimate`, :mod:`~transfer_core.analysis.findings`,
:mod:`~transfer_core.analysis.duplicates`) is kept apart from pictures
(:mod:`~transfer_core.analysis.figures`), the report and the MLflow step
(:mod:`~transfer_core.analysis.step`); its settings are :class:`AnalysisSettings`. To add an
estimator, subclass ``influence.Estimator``, add it to ``influence.ESTIMATORS`` (the setting
``estimator`` then accepts its name) and test it against a naive loop in ``tests/analysis``.
Sign convention everywhere: positive influence = including the source class helps the target.
"""
from transfer_core import lazy_exports
from transfer_core.analysis.settings import OUTPUTS, AnalysisSettings
from transfer_core.analysis.estimate import Estimates, estimate  # eager: `estimate` is
# also the name of its module, which would shadow a lazy export of the function

_EXPORTS = {
    "AnalysisResult": "transfer_core.analysis.step",
    "analyze": "transfer_core.analysis.step",
    "class_ranking": "transfer_core.analysis.step",
    "find_analysis_run": "transfer_core.analysis.step",
    "get_analysis_run": "transfer_core.analysis.step",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["OUTPUTS", "AnalysisSettings", "Estimates", "estimate", *_EXPORTS]
