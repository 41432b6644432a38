"""The ``main`` workflow: tune -> sweep -> analyze -> counterfactual -> register.

Each step is an MLproject entry point run with ``mlflow.run(..., env_manager="local")``
(after mlflow's examples/multistep_workflow); steps hand each other run ids only. A step
whose FINISHED run already exists with the same step key is reused, not recomputed. The
key hashes the entry point, its parameters (which carry the upstream run ids), the
resolved config and a fingerprint of the data; the driver says why it skipped each
other candidate run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.config import DEFAULT_PROFILE, ConfigError, RunConfig, build_config, parse_overrides
from transfer_core.counterfactual.grid import CounterfactualPlan, parse_list
from transfer_core.counterfactual.summary import EvidenceRule
from transfer_core.data import resolve_data_root, synthetic
from transfer_core.track import (DEFAULT_EXPERIMENT, KIND_TAG, artifact_path, describe_step, get_experiment_id,
                                 latest_run, run_filter, set_tags, setup_tracking, to_local_path)
from transfer_core.track.store import mark_training_experiment, ui_url
from transfer_core.track.runs import ANALYSIS, MAIN

PROJECT_DIR = Path(__file__).resolve().parents[2]  # the MLproject folder
STEP_KEY_TAG = "transfer_core.step_key"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"


@dataclass(frozen=True)
class MainSettings:
    """Parameters of the ``main`` entry point.

    Defaults: the quick job, 10.6 min from a brand-new clone on 2 idle cores (BENCHMARKS.md).
    """

    profile: str = DEFAULT_PROFILE
    experiment: str = DEFAULT_EXPERIMENT
    overrides: str = ""  # "section.field=value,..." applied to every step
    tune_trials: int = 8  # 0 skips tuning
    n_models: int = 40
    workers: int = 2  # sweep and counterfactual processes, 1 torch thread each on 2 cores
    orders: str = "bottom,top,random"
    ks: str = "0,10,25"
    seeds: int = 3  # a pruned champion needs a confidence interval over at least 3 seeds

    def __post_init__(self):
        if self.tune_trials < 0:
            raise ConfigError(f"tune_trials must be >= 0 (0 skips tuning), got {self.tune_trials}")
        if self.n_models < 2:
            raise ConfigError(f"n_models must be at least 2 for an analysis, got {self.n_models}")
        if self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {self.workers}")
        CounterfactualPlan(parse_list(self.orders, str, "orders"), parse_list(self.ks, int, "ks"),
                           self.seeds).validate(10**9)
        if self.seeds < EvidenceRule.min_seeds:  # checked now, not after the sweep, since main ends in register
            raise ConfigError(f"main ends by registering a champion, which needs at least {EvidenceRule.min_seeds} "
                              f"counterfactual seeds for a confidence interval, got --seeds {self.seeds}; use "
                              f"--seeds {EvidenceRule.min_seeds} or more")
        self.config()

    def config(self) -> RunConfig:
        return build_config(self.profile, parse_overrides(self.overrides))


def data_fingerprint(config: RunConfig, data_root=None) -> str:
    """What the data of ``config`` is: generator code for synthetic sets, else size and mtime of the files."""
    parts = []
    for spec in (config.data.source, config.data.target):
        if spec.startswith("synthetic"):
            parts.append(hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest())
            continue
        path = Path(spec.split(":", 1)[1]) if spec.startswith("imagefolder:") else None
        root = resolve_data_root(data_root)
        if path is None and root is not None:
            path = next((p for p in (root / f"{spec}.tar.gz", root / spec) if p.exists()), root / spec)
        stat = path.stat() if path is not None and path.exists() else None
        parts.append(f"{spec}|{path}|{stat.st_size if stat else '-'}|{stat.st_mtime_ns if stat else '-'}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def step_key(entry_point: str, params: dict[str, str], config_key: str) -> str:
    blob = json.dumps([entry_point, sorted(params.items()), config_key])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _why_skipped(run, params: dict[str, str]) -> str:
    if run.info.status != "FINISHED":
        return f"its status is {run.info.status}"
    differ = [f"{k}={run.data.params.get(k, '(unset)')} (want {v})" for k, v in params.items()
              if run.data.params.get(k) != v]
    if differ:
        return "different parameters: " + ", ".join(differ[:4])
    if STEP_KEY_TAG not in run.data.tags:
        return "it was not started by `main`, so its config and data are unknown"
    return "same parameters but a different config or data (or code of the synthetic data)"


class Workflow:
    """Runs the steps of ``main`` in one experiment; ``echo`` prints progress."""

    def __init__(self, settings: MainSettings, data_root=None, echo: Callable[[str], None] = print):
        self.settings = settings
        self.client = MlflowClient()
        self.experiment_id = get_experiment_id(settings.experiment)
        self.config_key = f"{settings.config().config_hash()}|{data_fingerprint(settings.config(), data_root)}"
        self.echo = echo
        self.steps: dict[str, str] = {}

    def step(self, entry_point: str, params: dict[str, str]):
        """Reuse the FINISHED run of ``entry_point`` with the same step key, or run it now."""
        params = {k: str(v) for k, v in params.items()}  # MLproject parameters are strings
        key = step_key(entry_point, params, self.config_key)
        found = latest_run(self.client, self.experiment_id, None, **{ENTRY_POINT_TAG: entry_point, STEP_KEY_TAG: key})
        if found is not None:
            self.echo(f"[{entry_point}] reusing FINISHED run {found.info.run_id} (same parameters, config, data)")
            self.steps[entry_point] = found.info.run_id
            return found
        others = self.client.search_runs([self.experiment_id], run_filter(None, **{ENTRY_POINT_TAG: entry_point}),
                                         max_results=5, order_by=["attributes.start_time DESC"])
        for run in others:
            self.echo(f"[{entry_point}] not reusing run {run.info.run_id}: {_why_skipped(run, params)}")
        self.echo(f"[{entry_point}] running with {params}")
        path = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"  # steps use this Python
        try:
            submitted = mlflow.projects.run(str(PROJECT_DIR), entry_point=entry_point, parameters=params,
                                            experiment_id=self.experiment_id, env_manager="local",
                                            synchronous=True)
        except ExecutionException as exc:  # the step printed its own one-sentence error above
            raise ConfigError(f"step {entry_point} failed ({str(exc).strip().splitlines()[0]}); fix what its "
                              "error above says and run `main` again (finished steps are reused)") from None
        finally:
            os.environ["PATH"] = path
        self.client.set_tag(submitted.run_id, STEP_KEY_TAG, key)
        self.steps[entry_point] = submitted.run_id
        return self.client.get_run(submitted.run_id)

    def run(self) -> "MainResult":
        s = self.settings
        common = {"experiment": s.experiment}
        tune_run_id = ""
        if s.tune_trials > 0:
            tune = self.step("tune", {**common, "profile": s.profile, "overrides": s.overrides,
                                      "n_trials": s.tune_trials})
            tune_run_id = tune.info.run_id
        sweep = self.step("sweep", {**common, "profile": s.profile, "overrides": s.overrides,
                                    "n_models": s.n_models, "workers": s.workers,
                                    "transfer_params_from": tune_run_id})
        sweep_id = sweep.data.tags.get("sweep_id")
        if not sweep_id:
            raise ConfigError(f"sweep step run {sweep.info.run_id} carries no sweep_id tag; rerun `main`")
        analysis = self.step("analyze", {**common, "sweep": sweep_id})
        analysis_run_id = self._analysis_run_id(analysis, sweep_id)
        counterfactual = self.step("counterfactual", {**common, "analysis": analysis_run_id, "orders": s.orders,
                                                      "ks": s.ks, "seeds": s.seeds, "workers": s.workers})
        register = self.step("register", {**common, "counterfactual": counterfactual.info.run_id})
        tags = register.data.tags
        return MainResult(self.steps, sweep_id, analysis_run_id, counterfactual.info.run_id,
                          tags.get("registered_model", ""), tags.get("registered_version", ""),
                          tags.get("message", ""), self._report_path(analysis_run_id), self.experiment_id)

    def _analysis_run_id(self, step_run, sweep_id: str) -> str:
        """The analysis run of the ``analyze`` step: the step run itself, or the one it made."""
        if step_run.data.tags.get(KIND_TAG) == ANALYSIS:
            return step_run.info.run_id
        found = latest_run(self.client, self.experiment_id, ANALYSIS, sweep_id=sweep_id)
        if found is None:
            raise ConfigError(f"the analyze step (run {step_run.info.run_id}) left no FINISHED analysis run of "
                              f"sweep {sweep_id}; rerun `main`")
        return found.info.run_id

    def _report_path(self, analysis_run_id: str) -> str:
        run = self.client.get_run(analysis_run_id)
        if to_local_path(run.info.artifact_uri) is None:
            return f"{run.info.artifact_uri}/report.html"
        return str(artifact_path(run, "report.html"))


@dataclass
class MainResult:
    steps: dict[str, str]  # entry point -> run id (run now or reused)
    sweep_id: str
    analysis_run_id: str
    counterfactual_run_id: str
    model_name: str
    model_version: str
    message: str
    report_path: str
    experiment_id: str = ""

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@champion"

    def note(self) -> str:
        """The main run's description in the MLflow UI (markdown)."""
        steps = "\n".join(f"- {step}: run `{run_id}`" for step, run_id in self.steps.items())
        return (f"The main job: tune -> sweep -> analyze -> counterfactual -> register (the child runs).\n\n"
                f"{steps}\n\nReport: `report.html` in the Artifacts of analysis run `{self.analysis_run_id}`. "
                f"Champion: `{self.model_uri}` (version {self.model_version}): {self.message}")

    def where_to_look(self, tracking_uri: str) -> str:
        ui = f"mlflow ui --backend-store-uri {tracking_uri}"
        if tracking_uri.startswith("sqlite:///"):
            ui += f" --default-artifact-root {Path(tracking_uri[len('sqlite:///'):]).parent}"
        return "\n".join([
            "main finished. Where to look:",
            f"  MLflow UI:        {ui}",
            f"                    then open {ui_url(self.experiment_id)}",
            f"  analysis report:  {self.report_path}",
            f"                    in the UI: {ui_url(self.experiment_id, self.analysis_run_id, 'report.html')}",
            f"  registered model: {self.model_uri}  (version {self.model_version})",
            f"  champion:         {self.message}",
            "  step runs:        " + ", ".join(f"{k}={v}" for k, v in self.steps.items()),
        ])


def start_main_run(client: MlflowClient, experiment_id: str, name: str):
    """The run the steps nest under: the enclosing ``mlflow run``'s if it is in the experiment, else new.

    (``mlflow run .`` without ``--experiment-name`` puts its own run in the Default experiment;
    that run then gets a tag pointing to the main run made here.)
    """
    invocation = os.environ.get("MLFLOW_RUN_ID")
    if invocation:  # the tool writes to the experiment of `mlflow run` too: mark it for the UI
        mark_training_experiment(client, client.get_experiment(client.get_run(invocation).info.experiment_id))
    if invocation and client.get_run(invocation).info.experiment_id == experiment_id:
        set_tags(client, invocation, {KIND_TAG: MAIN, MLFLOW_RUN_NAME: name})
        return mlflow.start_run(run_id=invocation)
    os.environ.pop("MLFLOW_RUN_ID", None)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={KIND_TAG: MAIN})
    if invocation:
        set_tags(client, invocation, {"main_run_id": run.info.run_id, MLFLOW_RUN_NAME: name})
    return run


def run_main(settings: MainSettings, data_root=None, tracking_uri: str | None = None,
             echo: Callable[[str], None] = print) -> MainResult:
    """The whole ``main`` job under one main run, which records every step's run id as a tag."""
    if data_root:
        os.environ["TRANSFER_CORE_DATA"] = str(data_root)  # the steps run in subprocesses
    setup_tracking(tracking_uri)
    invocation = os.environ.get("MLFLOW_RUN_ID")
    workflow = Workflow(settings, data_root, echo=echo)
    with start_main_run(workflow.client, workflow.experiment_id, f"main-{settings.experiment}") as run:
        result = workflow.run()
        set_tags(workflow.client, run.info.run_id, {**{f"step.{k}": v for k, v in result.steps.items()},
                                                    "model_uri": result.model_uri, "report_path": result.report_path})
        describe_step(workflow.client, run.info.run_id, result.note(), invocation_run_id=invocation)
    return result
