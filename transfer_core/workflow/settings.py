"""The pipeline's settings: its every default, in one typed dataclass, and the named studies.

Light on purpose (no MLflow tracking, Optuna or matplotlib): the command line builds its
``main`` options, help and defaults from :class:`PipelineSettings` when it starts.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field

from transfer_core.config import (DEFAULT_PROFILE, PRESETS_DIR, ConfigError, RunConfig, named_or_path,
                                  parse_overrides, resolve_config)
from transfer_core.track.store import DEFAULT_EXPERIMENT

STUDIES_DIR = PRESETS_DIR / "studies"  # named settings files (package data)
STUDY = "cifar100_to_cifar10"  # the study a finding needs: README "Results"


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class PipelineSettings:
    """Every setting of the pipeline and its default: the `main` job as `make run` runs it.

    Field metadata ``help`` is the command line's help text (``transfer-core main --help``).
    """

    profile: str = field(default=DEFAULT_PROFILE, metadata=_help(
        "Named config of every model (presets/profiles), or a path to a .toml file."))
    experiment: str = field(default=DEFAULT_EXPERIMENT, metadata=_help("MLflow experiment every step writes to."))
    overrides: tuple[str, ...] = field(default=(), metadata=_help(
        "Config overrides FIELD=VALUE applied to every step, e.g. pretrain.epochs=2 (comma-separated)."))
    tune_trials: int = field(default=8, metadata=_help(
        "Optuna trials the tune study holds (topped up on a rerun, never added to); 0 skips tuning.", min=0))
    n_models: int = field(default=40, metadata=_help("Subset runs in the sweep.", min=2))
    workers: int = field(default=2, metadata=_help(
        "Worker processes of the sweep and the counterfactual, cores/workers torch threads each.", min=1))
    output: str = field(default="correct", metadata=_help(
        "Per-example output the influences are fitted to: correct (class influence = effect on accuracy; its "
        "class ranking reproduces best, BENCHMARKS.md \"Signal\"), prob or margin.",
        choices=("correct", "prob", "margin")))
    bootstrap: int = field(default=100, metadata=_help("Bootstrap resamples of the runs for the intervals.", min=0))
    min_runs: int = field(default=5, metadata=_help(
        "Each source class must be kept in, and left out of, at least this many runs.", min=2))
    orders: tuple[str, ...] = field(default=("bottom", "top", "random"), metadata=_help(
        "Counterfactual removal orders (comma-separated): bottom, top, random."))
    ks: tuple[int, ...] = field(default=(25,), metadata=_help(
        "Counterfactual numbers of removed classes, fixed before anything trains (comma-separated; the full "
        "source, k = 0, is always added)."))
    seeds: int = field(default=3, metadata=_help(
        "Counterfactual seeds per point, fixed in the plan (a champion needs at least 3).", min=3))
    publish: str = field(default="", metadata=_help(
        "Folder to write RESULTS.md, figures and tables into at the end (empty: do not publish)."))
    subpopulation: str = field(default="", metadata=_help(
        "Sub-population the published results show, TARGET:SOURCE (empty: the largest group)."))

    def __post_init__(self):
        object.__setattr__(self, "overrides", _as_tuple(self.overrides, str, "overrides"))
        object.__setattr__(self, "orders", _as_tuple(self.orders, str, "orders"))
        object.__setattr__(self, "ks", _as_tuple(self.ks, int, "ks"))
        for f in dataclasses.fields(self):
            if "min" in f.metadata and getattr(self, f.name) < f.metadata["min"]:
                raise ConfigError(f"{f.name} must be at least {f.metadata['min']}, got {getattr(self, f.name)}")
        from transfer_core.analysis.estimate import AnalysisOptions
        AnalysisOptions(output=self.output, bootstrap=self.bootstrap, min_runs=self.min_runs)
        self.plan().validate(10**9)
        self.config()

    def config(self) -> RunConfig:
        return resolve_config(self.profile, self.override_dict())[0]

    def override_dict(self) -> dict[str, str]:
        return parse_overrides(list(self.overrides))

    def plan(self):
        """The counterfactual plan (:class:`~transfer_core.counterfactual.CounterfactualPlan`), k = 0 added."""
        from transfer_core.counterfactual.grid import CounterfactualPlan
        return CounterfactualPlan(self.orders, tuple(sorted({0, *self.ks})), self.seeds)

    @classmethod
    def load(cls, settings: str | None = None, **given) -> "PipelineSettings":
        """A named settings file (``presets/studies/<name>.toml``) or a path to one, then ``given`` on top."""
        values = {}
        if settings:
            path = named_or_path(settings, STUDIES_DIR, "settings")
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ConfigError(f"settings file {path} has unknown field(s) {', '.join(unknown)}; valid fields are "
                                  f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**{**values, **given})


def _as_tuple(value, kind: type, name: str) -> tuple:
    """``"0,10"``, ``[0, 10]`` or ``(0, 10)`` -> ``(0, 10)``, with a clear error naming ``name``."""
    items = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(kind(item) for item in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a comma-separated list of {kind.__name__}s, got {value!r}") from None
