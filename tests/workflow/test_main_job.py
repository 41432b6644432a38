"""The main job end to end through `mlflow run` (synthetic profile), and docs/serving.md's snippets run as written."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from transfer_core.data import load_split
from transfer_core.track import artifact_path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("tune", "sweep", "analyze", "counterfactual", "register")


SERVING_PAGE = "docs/serving.md"  # the snippets these tests run verbatim (tests/test_docs.py runs every page's)


def doc_block(heading: str, language: str, page: str = SERVING_PAGE) -> str:
    """The first ```language block under the section ``heading`` of ``page``."""
    text = (REPO / page).read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def env_tracking_uri(work) -> str:
    return f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """What `make run` runs (the tool makes its experiment, then `mlflow run . --env-manager local
    --experiment-name transfer_core`), with synthetic parameters, in a fresh folder."""
    work = tmp_path_factory.mktemp("main")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # MLproject calls `python`
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    (work / "mlruns").mkdir()
    made = subprocess.run([sys.executable, "-m", "transfer_core.cli", "experiment", "transfer_core"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and made.stdout.strip().isdigit(), made.stderr[-2000:]
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name",
               "transfer_core", "-P", "profile=synthetic", "-P", "n_models=16", "-P", "ks=0,1", "-P", "orders=bottom",
               "-P", "total_trials=2", "-P", "seeds=3", "-P", "overrides=pretrain.epochs=2,transfer.epochs=4"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return work, env, done.stdout + done.stderr


def test_every_step_ran_once_under_one_main_run(main_job):
    work, env, output = main_job
    summary = output[output.index("main finished (experiment transfer_core)."):]
    # read in ten seconds: what was trained, who is champion (one plain sentence), the registered model's own
    # numbers, one stability verdict, then the links, the registered version's page among them
    lines = summary.splitlines()
    assert [line.split(":")[0] for line in lines[1:4]] == ["Trained", "Champion", "Registered"], lines[:6]
    assert len(lines[2]) < 300 and "look" not in lines[2] and "Bonferroni" not in lines[2]
    assert re.search(r"validation accuracy 0\.\d{4}, test accuracy 0\.\d{4}", lines[3])
    assert lines[4].startswith(("Stable ranking", "Unstable ranking")) and "0.5" in lines[4]
    assert re.search(r"registered model: +http://127\.0\.0\.1:5000/#/models/transfer_core-target/versions/1", summary)
    assert "make ui" in summary and "mlflow ui --backend-store-uri" not in summary
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("transfer_core")
    mains = client.search_runs([experiment.experiment_id], "tags.`transfer_core.kind` = 'main'")
    assert len(mains) == 1 and mains[0].info.status == "FINISHED"
    for step in STEPS:
        run = client.get_run(mains[0].data.tags[f"step.{step}"])
        assert run.info.status == "FINISHED", step
        assert run.data.tags.get("transfer_core.step_key") or step == "register", step  # reusable by its key
    assert mains[0].data.tags.get("mlflow.project.entryPoint") == "main"  # mlflow run's own run is the pipeline's
    assert client.search_runs(["0"]) == []  # no stub left in Default
    every = client.search_runs([experiment.experiment_id], max_results=1000)
    beside = (work / "mlruns" / "artifacts").resolve().as_uri()
    assert every and all(r.info.artifact_uri.startswith(beside) for r in every)  # artifacts beside the store
    version = client.get_model_version_by_alias("transfer_core-target", "champion")
    assert version.tags["counterfactual_run_id"] == mains[0].data.tags["step.counterfactual"]
    sweep = client.get_run(mains[0].data.tags["step.sweep"])
    assert sweep.data.tags["tune_run_id"] == mains[0].data.tags["step.tune"]  # provenance, not a guess


def test_the_printed_links_open_shared_views_that_select_the_runs_they_show(main_job):
    """`main` prints a link per shared view; each view's filter, run through MLflow's own search, selects
    the trained models (flat: no parent run) or the grid's points, and its chart plots k against accuracy."""
    from transfer_core.track.views import CHART_VIEW, RUNS_VIEW, SHARED_VIEW_PREFIX

    work, env, output = main_job
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("transfer_core")
    runs_link = re.search(r"every model: +(\S+)", output).group(1)
    chart_link = re.search(r"accuracy vs k: +(\S+)", output).group(1)
    assert "/runs?" in runs_link and "/runs?" in chart_link  # without the tab, the UI drops the key
    assert f"viewStateShareKey={RUNS_VIEW}" in runs_link and "workflowType=machine_learning" in runs_link
    assert f"viewStateShareKey={CHART_VIEW}" in chart_link and "compareRunsMode=CHART" in chart_link
    views = {}
    for key in (RUNS_VIEW, CHART_VIEW):
        envelope = json.loads(experiment.tags[SHARED_VIEW_PREFIX + key])
        assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
        views[key] = json.loads(envelope["state"])  # the UI reads `state` as a JSON string
    models = client.search_runs([experiment.experiment_id], views[RUNS_VIEW]["searchFilter"], max_results=1000)
    kinds = {r.data.tags["transfer_core.kind"] for r in models}
    assert kinds == {"subset_run", "counterfactual_run"} and len(models) == 16 + 2 * 3  # 16 models, 2 ks x 3 seeds
    points = client.search_runs([experiment.experiment_id], views[CHART_VIEW]["searchFilter"])
    assert len(points) == 6 and all("k" in r.data.params and "target_test_acc" in r.data.metrics for r in points)
    (card,) = views[CHART_VIEW]["compareRunCharts"]
    assert (card["type"], card["xaxis"]["key"], card["yaxis"]["key"]) == ("SCATTER", "k", "target_test_acc")
    assert "metrics.`target_test_acc`" in views[RUNS_VIEW]["selectedColumns"]


def test_the_readme_model_loading_snippet_runs_as_written(main_job):
    """docs/serving.md "Using the registered model", verbatim, in a fresh process in the folder `make run` used: it
    prints the champion's prediction for a test image and its test accuracy, which is the registered version's own."""
    work, env, _ = main_job
    snippet = doc_block("Using the registered model", "python")
    env = dict(env)
    env.pop("MLFLOW_TRACKING_URI")  # the snippet sets it itself
    done = subprocess.run([sys.executable, "-c", snippet], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, last = done.stdout.strip().splitlines()[0], done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test image 0: (vertical|diagonal|rings|horizontal) \(\d\.\d\d\), truly \w+", first), first
    client = MlflowClient(env_tracking_uri(work))
    version = client.get_model_version_by_alias("transfer_core-target", "champion")
    assert last == f"test accuracy: {float(version.tags['test_acc']):.4f}", (last, version.tags["test_acc"])


def test_rerunning_main_reuses_every_step(main_job):
    work, env, _ = main_job
    command = [sys.executable, "-m", "transfer_core.cli", "main", "--profile", "synthetic", "--n-models", "16",
               "--ks", "0,1", "--orders", "bottom", "--total-trials", "2", "--seeds", "3",
               "--set", "pretrain.epochs=2,transfer.epochs=4"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in STEPS:
        assert f"[{step}] reusing FINISHED run" in done.stdout, done.stdout


# ---- what the MLflow UI and the registry show ------------------------------------------------------

STEP_NAMES = {"tune": "tune-", "sweep": "sweep-", "analyze": "analysis-", "counterfactual": "counterfactual-",
              "register": "register-"}


def test_experiments_are_training_experiments_and_step_runs_say_what_they_did(main_job):
    work, env, _ = main_job
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    written = {r.info.experiment_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert written == {client.get_experiment_by_name("transfer_core").experiment_id}  # `mlflow run` used it too
    for experiment_id in written:
        assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    main = client.search_runs(list(written), "tags.`transfer_core.kind` = 'main'",
                              order_by=["attributes.start_time ASC"])[0]  # the first, made under `mlflow run`
    assert main.info.run_name == "main-transfer_core" and "report.html" in main.data.tags["mlflow.note.content"]
    for step, prefix in STEP_NAMES.items():  # each was adopted from `mlflow run`: no random names left
        run = client.get_run(main.data.tags[f"step.{step}"])
        assert run.info.run_name.startswith(prefix), (step, run.info.run_name)
        assert len(run.data.tags["mlflow.note.content"]) > 40, step
    assert main.data.tags.get("mlflow.project.entryPoint") == "main"  # the pipeline's run is mlflow run's run


def test_subset_runs_log_their_source_and_target_splits_as_datasets(main_job):
    _, env, _ = main_job
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = client.get_experiment_by_name("transfer_core").experiment_id
    runs = client.search_runs([experiment_id], "tags.`transfer_core.kind` = 'subset_run' and "
                              "attributes.status = 'FINISHED'")
    assert len(runs) == 16
    for run in runs:
        by_context = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
        assert set(by_context) == {"pretrain", "transfer", "validation", "evaluation"}
        n_classes = len(json.loads(Path(artifact_path(run, "source_classes.json", client)).read_text()))
        kept = int(np.load(artifact_path(run, "class_mask.npy", client)).sum())
        assert by_context["pretrain"].name == f"synthetic-source: {kept} of {n_classes} classes"
    masks = {np.load(artifact_path(r, "class_mask.npy", client)).tobytes(): next(
        d.dataset.digest for d in r.inputs.dataset_inputs if d.tags[0].value == "pretrain") for r in runs}
    assert len(set(masks.values())) == len(masks) == 16  # other kept classes, other digest


@pytest.fixture(scope="module")
def scoring_server(main_job):
    """`mlflow models serve` of the champion on a free loopback port, as docs/serving.md starts it."""
    work, env, _ = main_job
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = doc_block("Serving the champion", "bash").split("\n\n")[0].replace("5001", str(port))
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(["bash", "-c", command], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**env, "MLFLOW_TRACKING_URI": ""})
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    try:
        while True:
            try:
                if requests.get(url + "/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the scoring server did not start:\n" + (work / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_the_champion_served_over_rest_gives_the_in_process_logits(main_job, scoring_server):
    work, env, _ = main_job
    uri = "models:/transfer_core-target@champion"
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        model = mlflow.pytorch.load_model(uri)
        classes = mlflow.models.get_model_info(uri).metadata["target_classes"]
    finally:
        mlflow.set_tracking_uri(None)
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    response = requests.post(scoring_server + "/invocations", json={"inputs": images.tolist()}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, rtol=1e-5, atol=1e-5)

    snippet = doc_block("Serving the champion", "python").replace("http://127.0.0.1:5001", scoring_server)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)  # docs/serving.md's client, verbatim: the target's first test image
    assert done.returncode == 0, done.stderr[-3000:]
    first = load_split("synthetic-target", "test", 16).images[:1]
    with torch.no_grad():
        local = model(first).numpy()
    assert done.stdout.split()[-1] == classes[int(local.argmax(1)[0])]  # the snippet prints the class name


@pytest.mark.parametrize("payload, says", [
    ({"inputs": np.zeros((2, 3, 8, 8), np.uint8).tolist()}, "does not match expected shape"),  # wrong size
    ({"inputs": np.zeros((2, 16, 16, 3), np.uint8).tolist()}, "does not match expected shape"),  # channels last
    ({"inputs": (np.zeros((1, 3, 16, 16), int) + 300).tolist()}, "out of bounds for uint8"),  # not a pixel value
    ({"inputs": "a picture"}, "Failed to convert data"),  # not numbers
    ({"images": []}, "The input must be a JSON dictionary with exactly one of the input fields"),
])
def test_a_bad_request_gets_a_clear_400(scoring_server, payload, says):
    response = requests.post(scoring_server + "/invocations", json=payload, timeout=60)
    assert response.status_code == 400 and says in response.json()["message"], response.text[:500]
    assert requests.get(scoring_server + "/ping", timeout=10).ok  # and the server is still up


def test_a_change_to_the_analysis_code_recomputes_the_analysis_and_what_follows(main_job, monkeypatch):
    """docs/pipeline.md, "Reruns reuse what is done": a rerun after a code change recomputes exactly the steps whose
    computing code changed, and the steps that read them. Simulated: the analysis code's digest changes; the tune
    study and the sweep are reused, a new analysis, counterfactual plan and registration follow."""
    from transfer_core.execute import Context
    from transfer_core.track import steps
    from transfer_core.workflow import PipelineSettings, run_pipeline

    work, env, _ = main_job
    monkeypatch.chdir(work)
    settings = PipelineSettings.load(profile="synthetic", n_models=16, ks=(1,), orders=("bottom",), total_trials=2,
                                     seeds=3, overrides=("pretrain.epochs=2", "transfer.epochs=4"), workers=1)
    ctx = Context.open(env["MLFLOW_TRACKING_URI"], cache_dir=env["TRANSFER_CORE_CACHE"], progress=False,
                       ledger=env["TRANSFER_CORE_LEDGER"])
    lines: list[str] = []
    same = run_pipeline(settings, ctx, echo=lines.append)
    assert all(f"[{step}] reusing FINISHED run" in "\n".join(lines) for step in STEPS), lines  # nothing changed

    real = steps.code_digest
    monkeypatch.setattr(steps, "code_digest", lambda group: real(group) + ("-edited" if group == "analysis" else ""))
    lines.clear()
    changed = run_pipeline(settings, ctx, echo=lines.append)
    text = "\n".join(lines)
    for step in ("tune", "sweep"):
        assert f"[{step}] reusing FINISHED run {same.steps[step]}" in text, text
    for step in ("analyze", "counterfactual"):
        assert changed.steps[step] != same.steps[step] and f"[{step}] run {changed.steps[step]}" in text, text
    assert changed.sweep_id == same.sweep_id and changed.model_version != same.model_version
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("transfer_core-target", changed.model_version)
    assert version.tags["counterfactual_run_id"] == changed.counterfactual_run_id
    assert client.get_run(changed.analysis_run_id).data.tags["transfer_core.code_version"]  # provenance


def test_links_prints_the_same_links_and_refuses_a_missing_store(main_job, tmp_path):
    from click.testing import CliRunner

    from transfer_core.cli import main as cli

    work, env, output = main_job
    shown = CliRunner().invoke(cli, ["links", "--tracking-uri", env["MLFLOW_TRACKING_URI"]])
    assert shown.exit_code == 0, shown.output
    for label in ("every model", "accuracy vs k"):
        printed = re.search(rf"{label}: +(\S+)", output).group(1)
        assert printed in shown.output
    missing = tmp_path / "none" / "mlflow.db"
    refused = CliRunner().invoke(cli, ["links", "--tracking-uri", f"sqlite:///{missing}"])
    assert refused.exit_code == 1 and "no MLflow store at" in refused.output and not missing.parent.exists()
