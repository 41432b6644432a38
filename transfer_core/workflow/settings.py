"""The pipeline's settings: the stages' settings composed, and the named studies.

Light on purpose (no MLflow tracking, Optuna or matplotlib): the command line builds the
``main`` options, help and defaults from :class:`PipelineSettings` when it starts. A study file
(``presets/studies/<name>.toml``) holds the top-level fields and one table per stage::

    profile = "quick"
    overrides = ["data.split_seed=2"]
    [sweep]
    n_models = 2200
    [counterfactual]
    ks = [20]
    seeds = 12
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass

from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.config import DEFAULT_PROFILE, PRESETS_DIR, ConfigError, RunConfig, named_or_path, \
    parse_overrides, resolve_config
from transfer_core.counterfactual.settings import CounterfactualPlan, EvidenceRule
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.settings import Settings, component, from_table, setting, with_flat
from transfer_core.sweep.settings import SweepSettings
from transfer_core.track.store import DEFAULT_EXPERIMENT
from transfer_core.tune.settings import TuneSettings

STUDIES_DIR = PRESETS_DIR / "studies"  # named settings files (package data)
STUDY = "cifar100_to_cifar10"  # the study a finding needs: docs/results.md


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


@dataclass(frozen=True)
class PipelineSettings(Settings):
    """Every setting of the pipeline: its own few, and each stage's settings (with the defaults the
    ``main`` job runs with, as ``make run`` runs it). ``transfer-core main --help`` lists them all."""

    profile: str = setting(DEFAULT_PROFILE, "Named config of every model (presets/profiles), or a path to a .toml "
                                            "file.")
    experiment: str = setting(DEFAULT_EXPERIMENT, "MLflow experiment every step writes to.")
    overrides: tuple[str, ...] = setting((), "Config overrides FIELD=VALUE applied to every step, e.g. "
                                             "pretrain.epochs=2 (repeatable, or comma-separated).", flag="set",
                                       metavar="FIELD=VALUE")
    publish: str = setting("", "Folder to write RESULTS.md, figures and tables into at the end (empty: do not "
                               "publish).")
    subpopulation: str = setting("", "Sub-population the published results show, TARGET:SOURCE (empty: the largest "
                                     "group).")
    tune: TuneSettings = component(TuneSettings(total_trials=8), "Tuning the transfer recipe ([tune]).",
                                   skip=("n_trials",))
    sweep: SweepSettings = component(SweepSettings(), "The sweep of subset runs ([sweep]).")
    analysis: AnalysisSettings = component(AnalysisSettings(), "Fitting the influences ([analysis]).")
    counterfactual: CounterfactualPlan = component(CounterfactualPlan(), "The counterfactual plan ([counterfactual]).")
    evidence: EvidenceRule = component(EvidenceRule(), "When a pruned source becomes champion ([evidence]).",
                                       skip=("confidence",))
    executor: ExecutorSettings = component(ExecutorSettings(workers=2), "Where models train ([executor]); two "
                                                                        "one-thread workers suit two cores.")

    def check(self) -> None:
        self.config()  # the profile and overrides give a valid config: one sentence now, not after tuning
        if self.counterfactual.seeds < self.evidence.min_seeds:
            raise ConfigError(f"the counterfactual plan has {self.counterfactual.seeds} seeds but a champion needs at "
                              f"least min_seeds={self.evidence.min_seeds}; give --seeds {self.evidence.min_seeds} or "
                              "more")

    def config(self) -> RunConfig:
        return resolve_config(self.profile, self.override_dict())[0]

    def override_dict(self) -> dict[str, str]:
        return parse_overrides(list(self.overrides))

    @classmethod
    def load(cls, settings: str | None = None, **given) -> "PipelineSettings":
        """A named study (``presets/studies/<name>.toml``) or a path to one, then ``given`` on top: flat
        field names (``n_models=100``), as the command line gives them."""
        base = cls()
        if settings:
            path = named_or_path(settings, STUDIES_DIR, "settings")
            with open(path, "rb") as fh:
                base = from_table(cls, tomllib.load(fh), f"settings file {path}", base=base)
        return with_flat(base, given)
