"""The MLflow Model Registry: register the target model of the best (pruned) source.

The champion is the fine-tuned target model of the pruned source that a counterfactual
plan chose on the validation selection half, when the evidence rule holds; otherwise the
full-source model is registered as champion, and the version says so. The decision is
recomputed here from the plan's logged runs and its look at the selection half, counted in the
look ledger (:func:`transfer_core.counterfactual.recompute_selection`), never read from
``selection.json``; the rule's version is recorded on the model version (tag ``gate_rule``).
What can be checked is, before anything is recorded: the plan record against its id, each
point's validation outputs against their digest and metric, the selection half's images
against the plan's key, and the look against the one the run reported (a ledger that now counts
fewer looks than the run saw has lost some, and is refused).

The model is logged in MLflow's ``pickle`` format, not the default ``pt2``: ``pt2``
(torch.export) loads back as a GraphModule with the traced input shape baked in, while
``pickle`` loads back the very :class:`~transfer_core.models.Normalized` module. The
package's code travels with the model (``code_paths``), so loading needs only torch and
mlflow::

    model = mlflow.pytorch.load_model("models:/<name>@champion")
    logits = model(uint8_images)  # (N, 3, R, R) uint8 -> (N, n_target_classes) float32
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.config import ConfigError
from transfer_core.counterfactual import (RULE_VERSION, SELECTION_ARTIFACT, EvidenceRule, Selection, read_plan,
                                          recompute_selection)
from transfer_core.counterfactual.looks import LEDGER_ARTIFACT, LookLedger
from transfer_core.counterfactual.step import stability_warning
from transfer_core.data import load_split, selection_half_key
from transfer_core.execute import Context
from transfer_core.track import (CHECKPOINT_ARTIFACT, KIND_TAG, artifact_path, describe_run, existing_experiment,
                                 get_run_of_kind, latest_run, load_checkpoint, log_metrics, quote, run_config,
                                 run_scope, set_tags)
from transfer_core.track.runs import COUNTERFACTUAL, REGISTER

CHAMPION = "champion"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # transfer_core/, shipped with the model
N_EXAMPLE_IMAGES = 4


def model_name(experiment: str) -> str:
    """Registered model name of an experiment: ``<experiment>-target`` in safe characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_") + "-target"


@dataclass
class Registration:
    """What :func:`register_champion` did."""

    name: str
    version: str
    pruned: bool  # True: the pruned source's model is champion; False: the full source's
    message: str
    run_id: str  # the register run that logged the model
    warnings: list[str] = field(default_factory=list)  # e.g. an unstable ranking, one sentence each
    reused: bool = False  # a version registered earlier from the same decision got the alias again

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{CHAMPION}"


def read_selection(client: MlflowClient, counterfactual_run_id: str):
    """The counterfactual run and the :class:`Selection` it stored when it reported, with clear errors."""
    run = get_run_of_kind(client, counterfactual_run_id, COUNTERFACTUAL, "transfer-core counterfactual")
    path = artifact_path(run, SELECTION_ARTIFACT, client)
    if not path.is_file():
        raise ConfigError(f"counterfactual run {counterfactual_run_id} has no {SELECTION_ARTIFACT}; it did not "
                          "finish: rerun `transfer-core counterfactual`")
    return run, Selection.from_json(path.read_text())


def _decision(selection: Selection) -> tuple:
    chosen = selection.model_run_id if selection.is_champion else selection.full_run_id
    return selection.is_champion, selection.k, chosen, selection.look


def _disagreement(stored: Selection, recomputed: Selection) -> str:
    """A sentence when the stored selection differs from the recomputed one (which is what counts):
    another decision, or another look at the selection half."""
    if _decision(stored) == _decision(recomputed):
        return ""
    return (f" (its stored {SELECTION_ARTIFACT} said {'pruned' if stored.is_champion else 'full'} source, k="
            f"{stored.k}, look {stored.look}; the decision recomputed from its runs and the look ledger, look "
            f"{recomputed.look}, is what counts)")


def _check_look(run_id: str, stored: Selection, recomputed: Selection, ledger: LookLedger) -> None:
    """Refuse when the ledger, merged with the store, counts fewer looks before this run than it saw when it
    reported: looks were removed, so the level it may spend cannot be known."""
    if recomputed.look >= stored.look:
        return
    raise ConfigError(f"counterfactual run {run_id} reported look {stored.look} at its selection half, but the look "
                      f"ledger {ledger.path}, merged with this store's runs, now counts it as look {recomputed.look}: "
                      f"earlier looks were removed (the ledger deleted or replaced, and their runs garbage-collected "
                      f"or their {LEDGER_ARTIFACT} copies deleted), so the level it may spend is unknown; restore the "
                      "ledger (or point TRANSFER_CORE_LEDGER at the file that holds those looks) and register again, "
                      "or decide on a fresh selection half (another data.split_seed, a new sweep)")


def _check_key(run_id: str, record: dict, cf_run, dirs) -> None:
    """Refuse when the plan's data no longer gives the selection half its record names."""
    found = selection_half_key(run_config(cf_run).data, dirs)
    if found != record["look_key"]:
        raise ConfigError(f"counterfactual run {run_id} records selection half {record['look_key']} but its data "
                          f"settings give {found} here (other images, or another --data-root), so its look cannot be "
                          "counted; register it with the data root it was trained on")


def _version_tags(selection: Selection, model_run, counterfactual_run, pruned: bool) -> dict[str, str]:
    metrics = model_run.data.metrics
    removed = selection.removed if pruned else []
    return {
        "pruned": str(pruned).lower(), "order": selection.order if pruned else "full",
        "k": str(len(removed)), "removed_classes": json.dumps(removed)[:4900],
        "source_sweep_id": counterfactual_run.data.tags.get("source_sweep_id", ""),
        "analysis_run_id": counterfactual_run.data.tags.get("analysis_run_id", ""),
        "counterfactual_run_id": counterfactual_run.info.run_id, "source_run_id": model_run.info.run_id,
        "val_acc": f"{metrics['target_val_acc']:.6f}", "test_acc": f"{metrics['target_test_acc']:.6f}",
        "mean_val_acc": f"{selection.val_acc if pruned else selection.full_val_acc:.6f}",
        "mean_test_acc": f"{selection.test_acc if pruned else selection.full_test_acc:.6f}",
        "full_val_acc": f"{selection.full_val_acc:.6f}", "full_test_acc": f"{selection.full_test_acc:.6f}",
        "test_diff_vs_full": f"{selection.test_diff if pruned else 0.0:+.6f}",
        "test_diff_ci": f"[{selection.diff_ci_low:+.6f}, {selection.diff_ci_high:+.6f}]" if pruned else "",
        "evidence": selection.reason[:4900],
        "select_diff_vs_full": f"{selection.select_diff:+.6f}",
        "select_diff_ci": f"[{selection.select_diff_ci_low:+.6f}, {selection.select_diff_ci_high:+.6f}]",
        "evidence_level": f"{selection.level:.4f}",
        "ranking_split_half": f"{selection.ranking_split_half:.4f}",
        "gate_rule": str(RULE_VERSION), "look": str(selection.look), "look_alpha": f"{selection.look_alpha:.6f}",
    }


def _existing_version(client: MlflowClient, name: str, counterfactual_run_id: str, chosen_run_id: str):
    """The latest version registered from this counterfactual run, under the current rule, of the same model."""
    try:
        found = client.search_model_versions(f"name = {quote(name)} and "
                                             f"tags.counterfactual_run_id = {quote(counterfactual_run_id)}")
    except mlflow.exceptions.MlflowException:  # no such registered model yet
        return None
    found = [v for v in found if v.tags.get("gate_rule") == str(RULE_VERSION)
             and v.tags.get("source_run_id") == chosen_run_id]
    return max(found, key=lambda v: int(v.version)) if found else None


def register_champion(counterfactual_run_id: str, *, ctx: Context, name: str | None = None,
                      run_id: str | None = None, rule: EvidenceRule = EvidenceRule()) -> Registration:
    """Log and register the champion model chosen by a counterfactual run; set alias ``champion``.

    The pruned source is champion only on evidence (see :mod:`transfer_core.counterfactual.summary`),
    recomputed from the plan's runs and its look at the selection half. A plan with fewer than
    ``rule.min_seeds`` seeds cannot give it and is refused, naming the command that makes a new
    plan; so is a counterfactual run made before plans were records. Idempotent: a version
    registered from this counterfactual run with the same recomputed decision is reused.
    ``run_id`` is the run to log the model in (e.g. ``mlflow run``'s); default a new run.
    """
    ledger = LookLedger(ctx.ledger)
    client = ctx.client
    cf_run, stored = read_selection(client, counterfactual_run_id)
    record = read_plan(cf_run)  # stale or edited records are refused, naming the command that redoes the plan
    if int(record["n_seeds"]) < rule.min_seeds:
        analysis = record.get("analysis_run_id") or "ANALYSIS_RUN_ID"
        raise ConfigError(f"counterfactual run {counterfactual_run_id} has {record['n_seeds']} seed(s) per point, too "
                          f"few for the confidence interval a champion needs (at least {rule.min_seeds}, fixed in the "
                          f"plan); run a new plan with `transfer-core counterfactual --analysis {analysis} --ks "
                          f"{','.join(map(str, record['ks']))} --seeds {rule.min_seeds}` (it reuses the points "
                          "trained, and counts as another look at the selection half), then register that run")
    _check_key(counterfactual_run_id, record, cf_run, ctx.dirs)
    selection, _ = recompute_selection(client, cf_run, rule, ledger=ledger)
    _check_look(counterfactual_run_id, stored, selection, ledger)
    selection.ranking_split_half = stored.ranking_split_half
    experiment = client.get_experiment(cf_run.info.experiment_id).name
    name = name or model_name(experiment)
    pruned = selection.is_champion
    message = selection.describe() + _disagreement(stored, selection)
    warnings = stability_warning(selection.ranking_split_half, rule.stability_threshold,
                                 cf_run.data.tags.get("analysis_run_id", "?"))
    chosen_run_id = selection.model_run_id if pruned else selection.full_run_id
    existing = _existing_version(client, name, counterfactual_run_id, chosen_run_id)
    if existing is not None:  # the same decision, recomputed now, was registered before: point the alias at it
        client.set_registered_model_alias(name, CHAMPION, existing.version)
        if run_id is not None:  # a fresh `mlflow run` of this step: point it at the reused version
            set_tags(client, run_id, {KIND_TAG: REGISTER, "counterfactual_run_id": counterfactual_run_id,
                                      "registered_model": name, "registered_version": str(existing.version),
                                      "message": message[:4900]})
            describe_run(client, run_id, register_note(name, str(existing.version), message + " (version reused)"),
                         f"register-{name}")
        register_run = run_id or _register_run_of(client, cf_run.info.experiment_id, name, existing.version)
        return Registration(name, str(existing.version), existing.tags.get("pruned") == "true",
                            message + f" (version {existing.version} reused)", register_run, warnings, reused=True)

    model_run = client.get_run(chosen_run_id)
    checkpoint = artifact_path(model_run, CHECKPOINT_ARTIFACT, client)
    if not checkpoint.is_file():
        raise ConfigError(f"run {model_run.info.run_id} kept no {CHECKPOINT_ARTIFACT}; rerun the "
                          "counterfactual (it logs checkpoints) before registering")
    model = load_checkpoint(checkpoint)
    config = run_config(model_run)
    test = load_split(config.data.target, "test", config.data.resolution, ctx.dirs)
    tags = _version_tags(selection, model_run, cf_run, pruned)
    if run_id is None:
        run_id = client.create_run(cf_run.info.experiment_id, tags={
            MLFLOW_RUN_NAME: f"register-{name}"}).info.run_id
    set_tags(client, run_id, {KIND_TAG: REGISTER, "counterfactual_run_id": counterfactual_run_id})
    with run_scope(client, run_id):
        source = log_model_files(client, run_id, model, test, config.data.target)
        version = str(_new_version(client, name, source, model_run.info.run_id, tags, message).version)
        log_metrics(client, run_id, {"val_acc": float(tags["val_acc"]), "test_acc": float(tags["test_acc"])})
        set_tags(client, run_id, {"registered_model": name, "registered_version": version, "pruned": tags["pruned"],
                                  "source_run_id": model_run.info.run_id, "message": message[:4900]})
    client.set_registered_model_alias(name, CHAMPION, version)
    describe_run(client, run_id, register_note(name, version, message), f"register-{name}")
    client.update_registered_model(name, description=(
        f"Target model ({config.data.target}, {len(test.class_names)} classes: {', '.join(test.class_names)}) "
        f"fine-tuned from a source model pretrained on {config.data.source}, with the source classes that "
        f"the influence analysis found most detrimental removed only when a held-out half of the validation "
        f"split showed a gain whose confidence interval lies above zero. Alias `{CHAMPION}` is the current best. "
        f"Input: uint8 images (N, 3, "
        f"{config.data.resolution}, {config.data.resolution}); output: logits (N, {len(test.class_names)}). "
        f"Experiment {experiment!r}."))
    for key, value in {"target": config.data.target, "source": config.data.source, "experiment": experiment,
                       "gate_rule": str(RULE_VERSION), "champion_rule": RULE_SUMMARY}.items():
        client.set_registered_model_tag(name, key, value)
    return Registration(name, version, pruned, message, run_id, warnings)


def _register_run_of(client: MlflowClient, experiment_id: str, name: str, version: str) -> str:
    """The register run that logged version ``version`` of ``name`` ("" when it cannot be found)."""
    found = latest_run(client, experiment_id, REGISTER, registered_model=name, registered_version=str(version))
    return found.info.run_id if found is not None else ""


RULE_SUMMARY = ("the pruned source only when its paired selection-half gain over the full source has a two-sided "
                "t-interval above zero over >= 3 seeds fixed in its plan, at the level its look at that half may spend "
                "(5% / 2^look two-sided, Bonferroni over its candidates; looks counted in the look ledger, by the "
                "half's images); else the full source")


PICKLE_NOTE = ("the model is saved with pickle, not MLflow's pt2 (torch.export): pickle loads back the very module, "
               "for any batch size; like any pickle, load it only from a store you trust")


@contextmanager
def _quiet(logger: str):
    """Hold back ``logger``'s warnings for the block (the caller says the same thing in its own words)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def log_model_files(client: MlflowClient, run_id: str, model, test, target: str) -> str:
    """Save ``model`` as an MLflow model (``pickle`` format, the package's code along) into run ``run_id``'s
    artifacts under ``model/``; returns the source URI a model version points to. Its metadata name the
    ``target`` dataset (its spec), its classes and resolution, so a user can score its test split.

    ``pickle``, not the default ``pt2``: ``pt2`` (torch.export) loads back as a GraphModule with the
    traced input shape baked in; ``pickle`` loads back the very :class:`Normalized` module.
    """
    example = test.images[:N_EXAMPLE_IMAGES].numpy()
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pytorch"):  # its pickle warning: PICKLE_NOTE instead
        path = Path(tmp) / "model"
        mlflow.pytorch.save_model(
            model, str(path), signature=signature, input_example=example, serialization_format="pickle",
            code_paths=[str(PACKAGE_DIR)],
            metadata={"target": target, "target_classes": list(test.class_names),
                      "resolution": int(test.images.shape[-1]),
                      "input": "uint8 images (N, 3, R, R), RGB, values 0-255", "output": "logits (N, C)"},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              f"numpy=={np.__version__}"])
        client.log_artifacts(run_id, str(path), "model")
    return f"{client.get_run(run_id).info.artifact_uri}/model"


def _new_version(client: MlflowClient, name: str, source: str, trained_by: str, tags: dict, message: str):
    """A new version of ``name`` (made if missing) whose files are ``source`` and whose source run, as the
    UI's "Source Run" opens it, is the run that trained the model."""
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:  # it exists
        pass
    return client.create_model_version(name, source, run_id=trained_by, tags=tags, description=message)


def register_note(name: str, version: str, message: str) -> str:
    """The register run's description in the MLflow UI."""
    uri = f"models:/{name}@{CHAMPION}"
    return (f"Registered model `{name}` version {version} with alias `{CHAMPION}`: {message}. Model files: `model/` "
            f"in Artifacts. Load it with `mlflow.pytorch.load_model(\"{uri}\")`; serve it over REST with "
            f"`mlflow models serve -m {uri} --env-manager local`.")


def latest_counterfactual_run(client: MlflowClient, experiment: str) -> str:
    """Id of the experiment's latest FINISHED counterfactual run."""
    run = latest_run(client, existing_experiment(client, experiment), COUNTERFACTUAL)
    if run is None:
        raise ConfigError(f"experiment {experiment!r} has no FINISHED counterfactual run; run "
                          "`transfer-core counterfactual` first or pass --counterfactual RUN_ID")
    return run.info.run_id
