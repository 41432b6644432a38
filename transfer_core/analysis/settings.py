"""How a sweep is analysed: every option of ``transfer-core analyze``, in one place.

Light on purpose (numpy only): the command line reads these fields when it starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from transfer_core.analysis.influence import ESTIMATORS
from transfer_core.config import ConfigError
from transfer_core.settings import Settings, setting

OUTPUTS = ("margin", "prob", "correct")


@dataclass(frozen=True)
class AnalysisSettings(Settings):
    """How to analyse a sweep; validated at construction. Positive influence = including the class helps."""

    estimator: str = setting("dom", "How influences are fitted from the runs' masks and outputs: dom (the paper's "
                                    "difference of means, with Welch errors) or ridge (a linear datamodel whose "
                                    "penalty is chosen on held-out runs); see transfer_core.analysis.influence.",
                             choices=lambda: tuple(ESTIMATORS))
    output: str = setting("correct", "Per-example output the influences are fitted to: correct (a class's influence on "
                                     "the whole target is its effect on accuracy; its class ranking reproduces best, "
                                     "BENCHMARKS.md \"Signal\"), prob (true-class probability) or margin (true-class "
                                     "logit minus the largest other).", choices=OUTPUTS)
    bootstrap: int = setting(100, "Bootstrap resamples of the runs for the intervals (0, or at least 20); 0 uses "
                                  "normal intervals from the estimator's standard errors.", min=0)
    min_runs: int = setting(5, "Each source class must be kept in, and left out of, at least this many runs.", min=2)
    confidence: float = setting(0.95, "Confidence level of every interval.", above=0.5, max=0.999)
    top_k: int = setting(10, "Length of the ranked lists of most helpful and most detrimental classes.", min=1)
    seed: int = setting(0, "Seed of the bootstrap, the split halves and the datamodel's held-out runs.", min=0)
    leak_min_z: float = setting(3.0, "A leakage candidate's top source class is at least this many standard errors "
                                     "above zero ...", min=0)
    leak_dominance: float = setting(2.0, "... and at least this many times the runner-up class.", min=1)
    max_candidates: int = setting(50, "Leakage candidates checked by nearest neighbours.", min=0)
    duplicate_threshold: float = setting(0.99, "Thumbnail cosine from which a (target test, source train) pair counts "
                                               "as a near duplicate.", above=0, max=1)
    duplicate_resolution: int = setting(32, "Pixels a side at which target test and source train images are compared "
                                            "for duplicates.", min=8)
    max_grid_classes: int = setting(20, "Target classes that get an image grid.", min=0)
    feature_neighbours: bool = setting(True, "Also check leakage candidates by nearest neighbours in a backbone's "
                                             "feature space (a logged checkpoint, else one backbone pretrained on the "
                                             "whole source).")

    def check(self) -> None:
        if self.bootstrap and self.bootstrap < 20:
            raise ConfigError(f"bootstrap must be 0 (normal intervals) or at least 20 resamples, got {self.bootstrap}")
        if not self.bootstrap and not ESTIMATORS[self.estimator].has_std_error:
            raise ConfigError(f"the {self.estimator} estimator gives no standard errors, so its intervals need the "
                              "bootstrap; set bootstrap to 20 or more")
