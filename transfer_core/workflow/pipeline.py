"""The pipeline: tune -> sweep -> analyze -> counterfactual -> register -> publish, defined once.

:class:`PipelineSettings` holds the steps' every default. ``transfer-core main``, the MLproject
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.analysis import AnalysisOptions, analyze
from transfer_core.config import resolve_config
from transfer_core.counterfactual import EvidenceRule, counterfactual_from_analysis
from transfer_core.execute import Context
from transfer_core.registry import register_champion
from transfer_core.sweep import SweepIncomplete, sweep_with_summary
from transfer_core.track import (KIND_TAG, describe_run, get_experiment_id, run_scope, set_tags,
                                 to_local_path)
from transfer_core.track.runs import MAIN
from transfer_core.counterfactual.report import PLOT_ARTIFACT
from transfer_core.track.store import mark_training_experiment, ui_url
from transfer_core.track.views import save_pipeline_views
from transfer_core.tune import TuneSettings, tune, tuned_recipe
from transfer_core.workflow.publish import publish
from transfer_core.workflow.settings import STUDY, PipelineSettings

STEPS = ("tune", "sweep", "analyze", "counterfactual", "register", "publish")
RELIABLE = 0.5  # validation split-half Spearman below which the summary calls the ranking too unstable


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
    results_path: str = ""
    views: dict[str, str] = dataclasses.field(default_factory=dict)  # "runs"/"chart" -> a link (track.views)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@champion"

    def stability_line(self) -> str:
        if self.split_half >= RELIABLE:
            return (f"the validation class ranking reproduces with split-half Spearman {self.split_half:.2f} at "
                    f"{self.n_models} models")
        return (f"the class ranking is too unstable for a finding at {self.n_models} models (validation split-half "
                f"Spearman {self.split_half:.2f}, below {RELIABLE}): this run demonstrates the pipeline; "
                f"`transfer-core main --settings {STUDY}` runs the study that makes one (README, \"Results\")")

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


def run_pipeline(settings: PipelineSettings, ctx: Context | None = None, echo: Callable[[str], None] = print,
                 invocation_run_id: str | None = None) -> PipelineResult:
    """Run (or resume) every step of ``settings`` under one pipeline run; returns where everything is.

    ``invocation_run_id`` is the run of an enclosing ``mlflow run``: in the experiment it becomes
    the pipeline's run, elsewhere it gets a pointer to it.
    """
    ctx = ctx or Context.open()
    ctx = ctx.with_execution(dataclasses.replace(ctx.execution, workers=settings.workers))
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
    set_tags(client, run_id, {KIND_TAG: MAIN, MLFLOW_RUN_NAME: name,
                              "settings": ", ".join(f"{f.name}={getattr(settings, f.name)}"
                                                    for f in dataclasses.fields(settings))[:4900]})
    with run_scope(client, run_id):
        result = _steps(settings, ctx, experiment_id, echo)
        set_tags(client, run_id, {**{f"step.{k}": v for k, v in result.steps.items()},
                                  "model_uri": result.model_uri, "report_path": result.report_path})
        describe_run(client, run_id, result.note())
    return result


def _done(echo, step: str, run_id: str, reused: bool, what: str) -> str:
    echo(f"[{step}] reusing FINISHED run {run_id} ({what})" if reused else f"[{step}] run {run_id}: {what}")
    return run_id


def _steps(s: PipelineSettings, ctx: Context, experiment_id: str, echo) -> PipelineResult:
    steps: dict[str, str] = {}
    recipe = None
    if s.tune_trials > 0:
        echo(f"[tune] {s.tune_trials} trials on the validation split")
        config, _ = resolve_config(s.profile, s.override_dict())
        tuned = tune(config, TuneSettings(total_trials=s.tune_trials), s.experiment, ctx=ctx, profile=s.profile)
        steps["tune"] = _done(echo, "tune", tuned.run_id, tuned.reused, f"study {tuned.study_name}")
        recipe = tuned_recipe(ctx.client, experiment_id, tuned.run_id)
    echo(f"[sweep] {s.n_models} models on random halves of the source classes")
    config, provenance = resolve_config(s.profile, s.override_dict(), recipe=recipe.overrides if recipe else None,
                                        tune_run_id=recipe.run_id if recipe else None)
    summary = sweep_with_summary(config, s.n_models, ctx=ctx, experiment=s.experiment, provenance=provenance)
    if not summary.complete:
        raise SweepIncomplete(summary)
    steps["sweep"] = _done(echo, "sweep", summary.parent_run_id, summary.n_trained == 0,
                           f"{summary.sweep_id}, {summary.n_trained} models trained, {summary.n_reused} reused")
    echo(f"[analyze] influences of sweep {summary.sweep_id}")
    analysis = analyze(s.experiment, summary.sweep_id, AnalysisOptions(output=s.output, bootstrap=s.bootstrap,
                                                                       min_runs=s.min_runs), ctx=ctx)
    steps["analyze"] = _done(echo, "analyze", analysis.run_id, analysis.reused, "the same runs and options")
    echo(f"[counterfactual] orders {','.join(s.orders)}, k = {','.join(map(str, s.plan().ks))}, {s.seeds} seeds")
    outcome = counterfactual_from_analysis(s.experiment, s.plan(), ctx=ctx, analysis_run_id=analysis.run_id,
                                           rule=EvidenceRule())
    steps["counterfactual"] = _done(echo, "counterfactual", outcome.runs.parent_run_id, outcome.runs.n_trained == 0,
                                    f"plan {outcome.runs.counterfactual_id}, {outcome.runs.n_trained} models trained")
    for warning in outcome.warnings:
        echo(f"Warning: {warning}")
    echo("[register] the champion, on held-out evidence only")
    registration = register_champion(outcome.runs.parent_run_id, ctx=ctx)
    steps["register"] = _done(echo, "register", registration.run_id, registration.reused,
                              f"{registration.name} version {registration.version}")
    results = ""
    if s.publish:
        echo(f"[publish] results into {s.publish}")
        results = str(publish(s.experiment, s.publish, ctx=ctx, analysis_run_id=analysis.run_id,
                              counterfactual_run_id=outcome.runs.parent_run_id,
                              subpopulation=s.subpopulation or None))
    views = save_pipeline_views(ctx.client, experiment_id, outcome.runs.grid_id)
    analysis_run = ctx.client.get_run(analysis.run_id)
    report = str(analysis.report_path) if to_local_path(analysis_run.info.artifact_uri) is not None else \
        f"{analysis_run.info.artifact_uri}/report.html"
    return PipelineResult(steps, experiment_id, summary.sweep_id, analysis.run_id, outcome.runs.parent_run_id,
                          registration.name, registration.version, registration.message, report,
                          analysis_run.data.metrics.get("selection_split_half_spearman", float("nan")),
                          summary.n_models, results, views)

