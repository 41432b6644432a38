"""`transfer-core ui`, started for real over a tiny pipeline store in a temporary folder: the bare address
serves MLflow's page with the script that opens the study in Model training mode, no job-runner process
runs, and every printed link leads to something the server has (nothing of MLflow is mocked)."""
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
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from mlflow.tracking import MlflowClient

from transfer_core.track.ui import APP_NAME, WORKFLOW_KEY

EXPERIMENT = "transfer_core"
# The cheapest pipeline that has every page: 10 models, no tuning, 2 grid points x 3 seeds
MAIN = ["main", "--profile", "synthetic", "--n-models", "10", "--ks", "0,1", "--orders", "bottom", "--total-trials",
        "0", "--seeds", "3", "--min-runs", "2", "--set", "pretrain.epochs=1,transfer.epochs=2", "--no-progress"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "transfer_core.cli", *args]


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root):
    """A tiny store that `transfer-core main` wrote in a temporary folder: (env, what main printed)."""
    work = tmp_path_factory.mktemp("ui")
    (work / "mlruns").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFER_CORE_DATA": str(data_root),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run(cli(*MAIN), cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return work, env, done.stdout


def process_tree(pid: int) -> list[str]:
    """The command lines of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tree.append(Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
        todo += children.get(current, [])
    return tree


@pytest.fixture(scope="module")
def ui(study):
    """`transfer-core ui` on a free loopback port: (base URL, the links it printed, its process id)."""
    work, env, _ = study
    port = free_port()
    log = open(work / "ui.log", "w")
    proc = subprocess.Popen(cli("ui", "--port", str(port), "--workers", "1"), cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    try:
        while True:
            try:
                if requests.get(base + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("transfer-core ui did not answer:\n" + (work / "ui.log").read_text()[-3000:])
            time.sleep(0.5)
        printed = (work / "ui.log").read_text()
        links = dict(re.findall(r"^  ([a-z][a-z ]+[a-z]): +(http\S+)$", printed, re.M))
        yield base, links, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_the_bare_address_serves_mlflows_page_with_the_model_training_script(study, ui):
    work, env, _ = study
    base, _, _ = ui
    experiment_id = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name(EXPERIMENT).experiment_id
    page = requests.get(base, timeout=30)  # what a browser fetches for http://127.0.0.1:PORT
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    head = '<!doctype html><html lang="en"><head><script>'
    assert page.text.startswith(head)  # the script runs first, before anything of MLflow's
    script, rest = page.text[len(head):].split("</script>", 1)
    # MLflow's own page follows, unchanged: its bundle loads after the script (deferred)
    bundle = re.search(r'<script defer="defer" src="(static-files/static/js/main\.[0-9a-f]+\.js)">', rest).group(1)
    assert requests.get(f"{base}/{bundle}", timeout=30).status_code == 200
    # the toggle MLflow's UI reads when the link has no workflowType: set once, only when the browser has none
    key = json.dumps(WORKFLOW_KEY)
    assert f"if (window.localStorage.getItem({key}) === null) window.localStorage.setItem({key}, " \
           f"{json.dumps(json.dumps('machine_learning'))})" in script
    # the bare address (no #/... route) goes to the study's experiment, in Model training mode
    route = json.dumps(f"#/experiments/{experiment_id}?workflowType=machine_learning")
    assert f"if (!window.location.hash) window.history.replaceState(null, '', {route});" in script


def test_the_server_runs_without_mlflows_job_runner(ui):
    _, _, pid = ui
    tree = process_tree(pid)
    assert len(tree) == 2, tree  # `mlflow server` and its one uvicorn worker
    assert f"mlflow server --app-name {APP_NAME}" in tree[0]
    assert not [c for c in tree if "mlflow.server.jobs" in c or "huey" in c], tree


def test_ui_prints_what_main_prints_and_the_registered_versions_page(study, ui):
    _, _, main_output = study
    base, links, _ = ui
    assert list(links) == ["runs", "every model", "accuracy vs k", "analysis report", "its figure",
                           "registered model"]
    # every http link main printed (for port 5000) is printed by ui, for its port
    for link in re.findall(r"http://127\.0\.0\.1:5000(\S+)", main_output):
        assert base + link in links.values(), link
    name, version = re.search(r"Registered: models:/(\S+)@champion \(version (\d+)\)", main_output).groups()
    assert links["registered model"] == f"{base}/#/models/{name}/versions/{version}?workflowType=machine_learning"


def test_every_printed_link_opens_something_the_server_has(study, ui):
    """A link is the page (HTTP 200) plus a #/ route; the route's experiment, view, run, artifact and model
    version are each fetched from the same server, as the page will fetch them."""
    _, env, _ = study
    base, links, _ = ui
    api = f"{base}/api/2.0/mlflow"
    for label, link in links.items():
        parts = urlsplit(link)
        assert f"{parts.scheme}://{parts.netloc}" == base, label
        assert requests.get(f"{base}{parts.path}", timeout=30).status_code == 200, label
        route, _, query = parts.fragment.partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        assert params["workflowType"] == "machine_learning", label
        if label == "registered model":
            _, _, model, _, number = route.split("/")
            got = requests.get(f"{api}/model-versions/get", params={"name": model, "version": number}, timeout=30)
            assert got.status_code == 200, (label, got.text[:300])
            continue
        experiment_id = re.match(r"/experiments/(\d+)", route).group(1)
        experiment = requests.get(f"{api}/experiments/get", params={"experiment_id": experiment_id}, timeout=30)
        assert experiment.status_code == 200 and experiment.json()["experiment"]["name"] == EXPERIMENT, label
        if "viewStateShareKey" in params:
            tags = {t["key"] for t in experiment.json()["experiment"]["tags"]}
            assert f"mlflow.sharedViewState.{params['viewStateShareKey']}" in tags, label
        if "/artifacts/" in route:
            run_id, artifact = re.match(r"/experiments/\d+/runs/(\w+)/artifacts/(.+)", route).groups()
            got = requests.get(f"{base}/get-artifact", params={"path": artifact, "run_uuid": run_id}, timeout=30)
            assert got.status_code == 200 and len(got.content) > 1000, (label, got.status_code)


def test_the_every_model_view_lists_each_model_flat_with_its_own_values(study):
    """One row per model: no group rows (they average every numeric column, k included); a filter and an
    order other than start time, which is what makes MLflow's table list nested runs flat."""
    from transfer_core.track.views import RUNS_VIEW, SHARED_VIEW_PREFIX

    _, env, _ = study
    experiment = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name(EXPERIMENT)
    state = json.loads(json.loads(experiment.tags[SHARED_VIEW_PREFIX + RUNS_VIEW])["state"])
    assert state["groupBy"] is None
    assert state["searchFilter"] and state["orderByKey"] != "attributes.start_time"


def test_ui_refuses_a_missing_store_and_a_busy_port(tmp_path, study):
    work, env, _ = study
    missing = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"}
    done = subprocess.run(cli("ui"), cwd=tmp_path, env=missing, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "there is no MLflow store at" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(cli("ui", "--port", str(port)), cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
