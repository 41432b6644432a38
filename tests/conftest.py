"""Shared fixtures: a private MLflow store and data cache per test session, real data root."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TRANSFER_CORE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep decoded tensors in a per-session cache unless the caller chose one."""
    if "TRANSFER_CORE_CACHE" not in os.environ:
        os.environ["TRANSFER_CORE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store in tmp_path; returns its tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def data_root():
    """The offline CIFAR archives (../shared/data); tests needing them skip only if absent."""
    if not (SHARED_DATA / "cifar10.tar.gz").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}; set TRANSFER_CORE_DATA")
    return SHARED_DATA
