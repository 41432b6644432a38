"""The pipeline: tune -> sweep -> analyze -> counterfactual -> register -> publish, defined once.

:class:`PipelineSettings` composes the stages' settings (each stage's own dataclass is the one home
of its fields). :data:`STEPS` lists the steps in order, by name: each is a function of the
:class:`PipelineState` that runs (or reuses) one step and records its run; adding a step is one
function and one line there. ``transfer-core main``, the MLproject
``main`` entry point (``mlflow run .``, which calls it) and the study (a named settings file,
``transfer-core main --settings cifar100_to_cifar10``) all run :func:`run_pipeline`; the
settings files ship with the package (``transfer_core/presets/studies/``).

Each step runs in this process through its library function, with the one :class:`Context`
(store, data, executor) the entry point opened, and is its own MLflow run. Each step reuses
what is already done by its own step key (:mod:`transfer_core.track.steps`): the tune study is
topped up to ``tune_trials`` and then reused, the sweep trains only missing models, an analysis
of the same runs with the same options is reused, the counterfactual plan resumes, and register
re-points the alias after recomputing the gate. So a rerun (after an interruption, or of the
same settings) trains nothing it has, and a code change recomputes the steps it touches. The
pipeline's own run (``main-<experiment>``) records every step's run id.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.analysis import analyze
from transfer_core.config import resolve_config
from transfer_core.counterfactual import counterfactual_from_analysis
from transfer_core.counterfactual.report import PLOT_ARTIFACT
from transfer_core.execute import Context
from transfer_core.registry import register_champion
from transfer_core.sweep import SweepIncomplete, sweep_with_summary
from transfer_core.track import (KIND_TAG, describe_run, get_experiment_id, run_scope, set_tags,
                                 to_local_path)
from transfer_core.track.runs import MAIN
from transfer_core.track.store import mark_training_experiment, ui_url
from transfer_core.track.views import save_pipeline_views
from transfer_core.tune import tune, tuned_recipe
from transfer_core.workflow.publish import publish
from transfer_core.workflow.settings import STUDY, PipelineSettings


@dataclass
class PipelineResult:
    steps: dict[str, str]  # step -> its run id
    experiment_id: str
    sweep_id: str
    analysis_run_id: str
    counterfactual_run_id: str
    model_name: str
    model_version: str
    message: str  # the champion decision, one sentence
    report_path: str
    split_half: float  # the validation ranking's split-half Spearman
    n_models: int
    stability_threshold: float  # below it the ranking is called unstable (EvidenceRule.stability_threshold)
    results_path: str = ""
    views: dict[str, str] = dataclasses.field(default_factory=dict)  # "runs"/"chart" -> a link (track.views)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@champion"

    def stability_line(self) -> str:
        if self.split_half >= self.stability_threshold:
            return (f"the validation class ranking reproduces with split-half Spearman {self.split_half:.2f} at "
                    f"{self.n_models} models")
        return (f"the class ranking is too unstable for a finding at {self.n_models} models (validation split-half "
                f"Spearman {self.split_half:.2f}, below {self.stability_threshold}): this run demonstrates the "
                f"pipeline; `transfer-core main --settings {STUDY}` runs the study that makes one "
                "(README, \"Results\")")


    def note(self) -> str:
        """The pipeline run's description in the MLflow UI (markdown)."""
        steps = "\n".join(f"- {step}: run `{run_id}`" for step, run_id in self.steps.items())
        return (f"The pipeline: {' -> '.join(self.steps)}.\n\n{steps}\n\nReport: `report.html` in the Artifacts "
                f"of analysis run `{self.analysis_run_id}`. Champion: `{self.model_uri}` (version "
                f"{self.model_version}): {self.message}\n\n"
                + "".join(f"[{label}]({self.views[key]}) " for key, label in
                          (("runs", "Every trained model"), ("chart", "Accuracy against k")) if key in self.views)
                + f"\n\nNote: {self.stability_line()}.")

    def where_to_look(self, tracking_uri: str) -> str:
        ui = f"mlflow ui --backend-store-uri {tracking_uri}"
        if tracking_uri.startswith("sqlite:///"):
            ui += f" --default-artifact-root {Path(tracking_uri[len('sqlite:///'):]).parent}"
        lines = ["main finished. Where to look:",
                 f"  MLflow UI:        {ui}",
                 f"                    then open {ui_url(self.experiment_id)}",
                 f"  analysis report:  {self.report_path}",
                 f"                    in the UI: {ui_url(self.experiment_id, self.analysis_run_id, 'report.html')}",
                 *([f"  every model:      {self.views['runs']}",
                    f"  accuracy vs k:    {self.views['chart']}"] if self.views else []),
                 f"  its figure:       {ui_url(self.experiment_id, self.counterfactual_run_id, PLOT_ARTIFACT)}",
                 f"  registered model: {self.model_uri}  (version {self.model_version})",
                 f"  champion:         {self.message}"]
        if self.results_path:
            lines.append(f"  results:          {self.results_path}")
        lines += ["  step runs:        " + ", ".join(f"{k}={v}" for k, v in self.steps.items()),
                  f"  note:             {self.stability_line()}"]
        return "\n".join(lines)


def run_pipeline(settings: PipelineSettings, ctx: Context, echo: Callable[[str], None] = print,
                 invocation_run_id: str | None = None) -> PipelineResult:
    """Run (or resume) every step of ``settings`` under one pipeline run; returns where everything is.

    ``ctx`` is the entry point's store and data; the models train where ``settings.executor`` says.
    ``invocation_run_id`` is the run of an enclosing ``mlflow run``: in the experiment it becomes
    the pipeline's run, elsewhere it gets a pointer to it.
    """
    ctx = ctx.with_execution(settings.executor)
    client = ctx.client
    experiment_id = get_experiment_id(client, settings.experiment)
    name = f"main-{settings.experiment}"
    if invocation_run_id:  # the tool writes into the experiment of `mlflow run` too: mark it for the UI
        mark_training_experiment(client, client.get_experiment(client.get_run(invocation_run_id).info.experiment_id))
    if invocation_run_id and client.get_run(invocation_run_id).info.experiment_id == experiment_id:
        run_id = invocation_run_id
    else:
        run_id = client.create_run(experiment_id, tags={KIND_TAG: MAIN, MLFLOW_RUN_NAME: name}).info.run_id
        if invocation_run_id:
            set_tags(client, invocation_run_id, {"main_run_id": run_id, MLFLOW_RUN_NAME: name})
    set_tags(client, run_id, {KIND_TAG: MAIN, MLFLOW_RUN_NAME: name, "settings": _describe(settings)[:4900]})
    with run_scope(client, run_id):
        state = PipelineState(settings, ctx, experiment_id, echo)
        for step in STEPS.values():
            step(state)
        result = state.result()
        set_tags(client, run_id, {**{f"step.{k}": v for k, v in result.steps.items()},
                                  "model_uri": result.model_uri, "report_path": result.report_path})
        describe_run(client, run_id, result.note())
    return result


def _describe(settings: PipelineSettings) -> str:
    """``name=value, ...`` of every setting, components' fields dotted (``sweep.n_models=40``)."""
    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}{k}.", v)]
        return [f"{prefix[:-1]}={value}"]
    return ", ".join(flat("", settings.as_dict()))


@dataclass
class PipelineState:
    """What the steps hand each other: the settings, the context, and each step's result as it comes."""

    settings: PipelineSettings
    ctx: Context
    experiment_id: str
    echo: Callable[[str], None]
    steps: dict[str, str] = field(default_factory=dict)  # step name -> its run id
    recipe: Any = None  # the tuned recipe (tune.TunedRecipe), None without tuning
    sweep: Any = None  # sweep.SweepSummary
    analysis: Any = None  # analysis.AnalysisResult
    counterfactual: Any = None  # counterfactual.CounterfactualOutcome
    registration: Any = None  # registry.Registration
    results_path: str = ""

    def done(self, step: str, run_id: str, reused: bool, what: str) -> None:
        self.echo(f"[{step}] reusing FINISHED run {run_id} ({what})" if reused else f"[{step}] run {run_id}: {what}")
        self.steps[step] = run_id

    def result(self) -> PipelineResult:
        s, ctx = self.settings, self.ctx
        views = save_pipeline_views(ctx.client, self.experiment_id, self.counterfactual.runs.grid_id)
        analysis_run = ctx.client.get_run(self.analysis.run_id)
        report = str(self.analysis.report_path) if to_local_path(analysis_run.info.artifact_uri) is not None else \
            f"{analysis_run.info.artifact_uri}/report.html"
        r = self.registration
        return PipelineResult(self.steps, self.experiment_id, self.sweep.sweep_id, self.analysis.run_id,
                              self.counterfactual.runs.parent_run_id, r.name, r.version, r.message, report,
                              analysis_run.data.metrics.get("selection_split_half_spearman", float("nan")),
                              self.sweep.n_models, s.evidence.stability_threshold, self.results_path, views)


def _tune(state: PipelineState) -> None:
    s = state.settings
    if s.tune.total_trials == 0:
        return
    state.echo(f"[tune] {s.tune.total_trials} trials on the validation split")
    config, _ = resolve_config(s.profile, s.override_dict())
    tuned = tune(config, s.tune, s.experiment, ctx=state.ctx, profile=s.profile)
    state.done("tune", tuned.run_id, tuned.reused, f"study {tuned.study_name}")
    state.recipe = tuned_recipe(state.ctx.client, state.experiment_id, tuned.run_id)


def _sweep(state: PipelineState) -> None:
    s, recipe = state.settings, state.recipe
    state.echo(f"[sweep] {s.sweep.n_models} models on random halves of the source classes")
    config, provenance = resolve_config(s.profile, s.override_dict(), recipe=recipe.overrides if recipe else None,
                                        tune_run_id=recipe.run_id if recipe else None)
    summary = sweep_with_summary(config, s.sweep, ctx=state.ctx, experiment=s.experiment, provenance=provenance)
    if not summary.complete:
        raise SweepIncomplete(summary)
    state.sweep = summary
    state.done("sweep", summary.parent_run_id, summary.n_trained == 0,
               f"{summary.sweep_id}, {summary.n_trained} models trained, {summary.n_reused} reused")


def _analyze(state: PipelineState) -> None:
    s = state.settings
    state.echo(f"[analyze] influences of sweep {state.sweep.sweep_id}")
    state.analysis = analyze(s.experiment, state.sweep.sweep_id, s.analysis, ctx=state.ctx)
    state.done("analyze", state.analysis.run_id, state.analysis.reused, "the same runs and options")


def _counterfactual(state: PipelineState) -> None:
    s, plan = state.settings, state.settings.counterfactual
    state.echo(f"[counterfactual] orders {','.join(plan.orders)}, k = {','.join(map(str, plan.ks))}, "
               f"{plan.seeds} seeds")
    outcome = counterfactual_from_analysis(s.experiment, plan, ctx=state.ctx, analysis_run_id=state.analysis.run_id,
                                           rule=s.evidence)
    state.counterfactual = outcome
    state.done("counterfactual", outcome.runs.parent_run_id, outcome.runs.n_trained == 0,
               f"plan {outcome.runs.counterfactual_id}, {outcome.runs.n_trained} models trained")
    for warning in outcome.warnings:
        state.echo(f"Warning: {warning}")


def _register(state: PipelineState) -> None:
    state.echo("[register] the champion, on held-out evidence only")
    r = register_champion(state.counterfactual.runs.parent_run_id, ctx=state.ctx, rule=state.settings.evidence)
    state.registration = r
    state.done("register", r.run_id, r.reused, f"{r.name} version {r.version}")


def _publish(state: PipelineState) -> None:
    s = state.settings
    if not s.publish:
        return
    state.echo(f"[publish] results into {s.publish}")
    state.results_path = str(publish(s.experiment, s.publish, ctx=state.ctx, analysis_run_id=state.analysis.run_id,
                                     counterfactual_run_id=state.counterfactual.runs.parent_run_id,
                                     subpopulation=s.subpopulation or None))


# The steps in order, by name; each runs (or reuses) one step of the pipeline and records its run.
STEPS: dict[str, Callable[[PipelineState], None]] = {
    "tune": _tune, "sweep": _sweep, "analyze": _analyze, "counterfactual": _counterfactual, "register": _register,
    "publish": _publish,
}
