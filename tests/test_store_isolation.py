"""The test suite never writes into the user's store: part of the suite runs inside a copy of the checkout
that holds a `mlruns/` store (as `make run` leaves one), and no file or row of that store changes."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
# Tests that run `mlflow run`, the CLI and the claims protocol: the ones that would write into ./mlruns.
SUBSET = ["tests/track", "tests/sweep/test_sweep.py::test_mlflow_run_entry_point_makes_the_sweep_parent"]


def store_state(mlruns: Path) -> dict[str, str]:
    """Every file under ``mlruns`` (size and content digest) and every table of its sqlite store (rows)."""
    state = {}
    for path in sorted(mlruns.rglob("*")):
        if path.is_file() and path.name != "mlflow.db":
            state[path.relative_to(mlruns).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    db = sqlite3.connect(mlruns / "mlflow.db")
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = sorted(map(repr, db.execute(f'SELECT * FROM "{table}"')))
            state[f"table {table}"] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    finally:
        db.close()
    return state


def test_part_of_the_suite_leaves_the_checkouts_store_unchanged(tmp_path):
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    mlruns = checkout / "mlruns"
    mlruns.mkdir(exist_ok=True)
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")  # the user's store, with one run and artifact
    experiment_id = client.create_experiment("transfer_core", artifact_location=str(mlruns / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    (tmp_path / "note.txt").write_text("the user's artifact")
    client.log_artifact(run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run_id)
    before = store_state(mlruns)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # as a user's shell has it
    env["TRANSFER_CORE_DATA"] = os.environ.get("TRANSFER_CORE_DATA", str(REPO.parent / "shared" / "data"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    after = store_state(mlruns)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:20]


def test_the_suite_runs_in_a_temporary_home():
    """The defaults under ~ (the look ledger, the decoded-image cache) are temporary ones in the suite, so a test
    or a documented snippet that passes none writes nothing into the user's home (tests/conftest.py)."""
    import tempfile

    from transfer_core.data.images import DEFAULT_CACHE
    from transfer_core.execute.context import DEFAULT_LEDGER
    for default in (DEFAULT_LEDGER, DEFAULT_CACHE):
        assert Path(default).is_relative_to(tempfile.gettempdir()), default
