"""Shared fixtures: a private MLflow store, data cache and look ledger per test session (a store and a
ledger per test where a test asks for a store), real data root."""
from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile

# Tests leave the user's files alone: the session, and every process it starts, gets a temporary home, so
# a default that lives under ~ (the look ledger ~/.local/state/transfer_core/looks.jsonl, the cache
# ~/.cache/transfer_core) is a temporary one whatever a test or a documented snippet forgets to pass. Set
# before anything imports transfer_core (its defaults are read at import).
os.environ["HOME"] = tempfile.mkdtemp(prefix="transfer_core-tests-home-")
atexit.register(shutil.rmtree, os.environ["HOME"], True)

import mlflow  # noqa: E402
import pytest  # noqa: E402
from support import SHARED_DATA, session_dirs, store_context  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep decoded tensors in a per-session cache unless the caller chose one, and looks in a per-session
    ledger always (a test never adds a look to the user's ledger). Commands the tests start read both from the
    environment; library calls get them through :func:`support.store_context` (and the ``dirs`` fixture)."""
    if "TRANSFER_CORE_CACHE" not in os.environ:
        os.environ["TRANSFER_CORE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["TRANSFER_CORE_LEDGER"] = str(tmp_path_factory.mktemp("ledger") / "looks.jsonl")
    yield


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    """An MLflow sqlite file with the schema made once: creating one costs seconds, copying it none."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking(tmp_path, monkeypatch, _empty_store):
    """A fresh sqlite MLflow store in tmp_path; returns its tracking URI."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    db = sqlite3.connect(tmp_path / "mlflow.db")
    with db:  # the Default experiment's artifacts go under tmp_path too
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(tmp_path / "mlruns" / "0"),))
    db.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRANSFER_CORE_LEDGER", str(tmp_path / "looks.jsonl"))  # this test's looks only
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def new_store(tmp_path, monkeypatch):
    """A tracking URI whose sqlite file does not exist yet: the first process to open it creates it."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRANSFER_CORE_LEDGER", str(tmp_path / "looks.jsonl"))
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def ctx(tracking):
    """The tracking fixture's store as a Context (no progress bars, one worker in this process)."""
    return store_context(tracking)


@pytest.fixture(scope="session")
def make_ctx():
    """:func:`support.store_context`, for tests that make their own store or executor."""
    return store_context


@pytest.fixture(scope="session")
def dirs():
    """:func:`support.session_dirs` as a fixture: pass it where the library takes a DataDirs."""
    return session_dirs()


@pytest.fixture(scope="session")
def data_root():
    """The offline CIFAR archives (../shared/data); tests needing them skip only if absent."""
    if not (SHARED_DATA / "cifar10.tar.gz").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}; set TRANSFER_CORE_DATA")
    return SHARED_DATA
