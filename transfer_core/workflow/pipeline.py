"""The pipeline: tune -> sweep -> analyze (-> attribute) -> counterfactual -> register -> publish, defined once.

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
topped up to ``tune.total_trials`` and then reused, the sweep trains only missing models, an analysis
of the same runs with the same options is reused, the counterfactual plan resumes, and register
re-points the alias after recomputing the gate. So a rerun (after an interruption, or of the
same settings) trains nothing it has, and a code change recomputes the steps it touches. The
pipeline's own run (``main-<experiment>``) records every step's run id.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.analysis import analyze
from transfer_core.config import resolve_config
from transfer_core.counterfactual import counterfactual_from_analysis
from transfer_core.execute import Context
from transfer_core.registry import register_champion
from transfer_core.registry.champion import PICKLE_NOTE
from transfer_core.sweep import SweepIncomplete, sweep_with_summary
from transfer_core.track import (KIND_TAG, describe_run, get_experiment_id, run_scope, set_tags,
                                 to_local_path)
from transfer_core.track.runs import MAIN
from transfer_core.track.store import mark_training_experiment
from transfer_core.track.views import save_pipeline_views
from transfer_core.tune import tune, tuned_recipe
from transfer_core.workflow.links import study_links
from transfer_core.workflow.publish import publish
from transfer_core.workflow.settings import STUDY, PipelineSettings


@dataclass
class PipelineResult:
    steps: dict[str, str]  # step -> its run id
    experiment: str
    experiment_id: str
    sweep_id: str
    analysis_run_id: str
    counterfactual_run_id: str
    model_name: str
    model_version: str
    message: str  # the champion decision with its protocol details, as register words it
    report_path: str
    split_half: float  # the validation ranking's split-half Spearman
    n_models: int
    stability_threshold: float  # below it the ranking is called unstable (EvidenceRule.stability_threshold)
    trained: str = ""  # what was trained, one sentence
    champion: str = ""  # who is champion and why, one plain sentence
    registered: str = ""  # the registered model's own numbers, one sentence
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (label, UI link): workflow.links
    results_path: str = ""

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@champion"

    @property
    def stable(self) -> bool:
        return self.split_half >= self.stability_threshold

    def stability_line(self) -> str:
        if self.stable:
            return (f"Stable ranking: two disjoint halves of the {self.n_models} models rank the classes alike "
                    f"(validation split-half Spearman {self.split_half:.2f}, at least {self.stability_threshold}).")
        return (f"Unstable ranking: two disjoint halves of the {self.n_models} models rank the classes with "
                f"Spearman {self.split_half:.2f}, below {self.stability_threshold}, so this run demonstrates the "
                f"pipeline rather than a finding; `transfer-core main --settings {STUDY}` runs the study that makes "
                "one (docs/results.md).")

    def note(self) -> str:
        """The pipeline run's description in the MLflow UI (markdown)."""
        steps = "\n".join(f"- {step}: run `{run_id}`" for step, run_id in self.steps.items())
        links = " ".join(f"[{label}]({link})" for label, link in self.links)
        return (f"{self.trained}\n\n**{self.champion}** {self.registered}\n\n{self.stability_line()}\n\n"
                f"{links}\n\nThe steps: {' -> '.join(self.steps)}.\n\n{steps}\n\nThe decision in full: "
                f"{self.message}")

    def where_to_look(self) -> str:
        """What ``main`` prints at the end: read in ten seconds, links last."""
        lines = [f"main finished (experiment {self.experiment}).", f"Trained: {self.trained}",
                 f"Champion: {self.champion}", f"Registered: {self.registered}", self.stability_line(),
                 "Look at it in the MLflow UI: `make ui` (or `.venv/bin/transfer-core ui`), then open:"]
        lines += [f"  {label + ':':<18}{link}" for label, link in self.links]
        lines.append(f"  {'report file:':<18}{self.report_path}")
        if self.results_path:
            lines.append(f"  {'results:':<18}{self.results_path}")
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
    attribution: Any = None  # attribution.step.AttributionResult, when the counterfactual takes its ranking
    counterfactual: Any = None  # counterfactual.CounterfactualOutcome
    registration: Any = None  # registry.Registration
    results_path: str = ""

    def done(self, step: str, run_id: str, reused: bool, what: str) -> None:
        self.echo(f"[{step}] reusing FINISHED run {run_id} ({what})" if reused else f"[{step}] run {run_id}: {what}")
        self.steps[step] = run_id

    def result(self) -> PipelineResult:
        s, client = self.settings, self.ctx.client
        save_pipeline_views(client, self.experiment_id, self.counterfactual.runs.grid_id)
        analysis_run = client.get_run(self.analysis.run_id)
        report = str(self.analysis.report_path) if to_local_path(analysis_run.info.artifact_uri) is not None else \
            f"{analysis_run.info.artifact_uri}/report.html"
        r = self.registration
        version = client.get_model_version(r.name, r.version)
        return PipelineResult(self.steps, s.experiment, self.experiment_id, self.sweep.sweep_id, self.analysis.run_id,
                              self.counterfactual.runs.parent_run_id, r.name, r.version, r.message, report,
                              analysis_run.data.metrics.get("selection_split_half_spearman", float("nan")),
                              self.sweep.n_models, s.evidence.stability_threshold, self.trained_line(),
                              champion_line(r.pruned, self.counterfactual.selection, s.counterfactual.orders),
                              registered_line(r, version.tags), study_links(client, client.get_experiment(
                                  self.experiment_id)), self.results_path)

    def trained_line(self) -> str:
        config = resolve_config(self.settings.profile, self.settings.override_dict())[0]
        table = self.counterfactual.runs.table
        classes = len(self.counterfactual.runs.class_names)
        plan = self.settings.counterfactual
        removed = ", ".join(f"k={k}" for k in plan.ks if k)
        share = "half" if config.alpha == 0.5 else f"{config.alpha:g}"
        return (f"{self.sweep.n_models} models, each pretrained on a random {share} of the {classes} "
                f"{config.data.source} classes and transferred to {config.data.target} ({config.transfer.mode} "
                f"transfer, profile {self.settings.profile}); then {len(table)} counterfactual models: {plan.seeds} "
                f"seeds of the full source and of the source without the classes the ranking picks "
                f"({'/'.join(plan.orders)}, {removed}).")


def champion_line(pruned: bool, selection, orders) -> str:
    """Who is champion and why, in one plain sentence (the protocol's details: selection.json and the report)."""
    gain = 100 * selection.select_diff if selection.select_diff == selection.select_diff else float("nan")
    if pruned:
        return (f"the source without the {selection.k} classes the ranking calls most harmful "
                f"({', '.join(selection.removed[:4])}{', ...' if len(selection.removed) > 4 else ''}): on held-out "
                f"validation images it beat the full source by {gain:+.2f} points, clearly enough (why, in full: "
                "selection.json of the counterfactual run, and the report).")
    if "bottom" not in orders:
        return "the full source: the plan removed no class it ranks harmful, so no pruned source was a candidate."
    return (f"the full source: removing the classes the ranking calls most harmful changed held-out validation "
            f"accuracy by {gain:+.2f} points, not clearly above zero (why, in full: selection.json of the "
            "counterfactual run, and the report).")


def registered_line(registration, tags: dict) -> str:
    """The registered model's own numbers: it is one seed's model, not the mean the champion's decision used."""
    mean = tags.get("mean_test_acc")
    return (f"{registration.uri} (version {registration.version}), one seed's model: validation accuracy "
            f"{float(tags['val_acc']):.4f}, test accuracy {float(tags['test_acc']):.4f}"
            + (f" (its source's mean over the plan's seeds: test {float(mean):.4f})." if mean else "."))


def _tune(state: PipelineState) -> None:
    s = state.settings
    if s.tune.total_trials == 0:
        return
    state.echo(f"[tune] {s.tune.total_trials} trials on the validation ranking half")
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


def _attribute(state: PipelineState) -> None:
    s = state.settings
    if s.counterfactual.ranking != "attribution":
        return
    from transfer_core.attribution.step import attribute

    state.echo(f"[attribute] gradient attribution from {s.attribution.ensemble_models} {s.attribution.ensemble} "
               "models (the counterfactual's ranking)")
    state.attribution = attribute(s.experiment, state.sweep.sweep_id, s.attribution, ctx=state.ctx)
    state.done("attribute", state.attribution.run_id, state.attribution.reused, "the same config, data and options")


def _counterfactual(state: PipelineState) -> None:
    s, plan = state.settings, state.settings.counterfactual
    ranker = state.attribution if plan.ranking == "attribution" else state.analysis
    state.echo(f"[counterfactual] orders {','.join(plan.orders)}, k = {','.join(map(str, plan.ks))}, "
               f"{plan.seeds} seeds, on the {plan.ranking} ranking")
    outcome = counterfactual_from_analysis(s.experiment, plan, ctx=state.ctx, analysis_run_id=ranker.run_id,
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
    state.done("register", r.run_id, r.reused, f"{r.name} version {r.version}; {PICKLE_NOTE}")


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
    "tune": _tune, "sweep": _sweep, "analyze": _analyze, "attribute": _attribute, "counterfactual": _counterfactual,
    "register": _register, "publish": _publish,
}
