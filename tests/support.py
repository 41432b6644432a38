"""Helpers the test modules share (``from support import ...``; pyproject puts tests/ on the path)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TRANSFER_CORE_DATA", REPO.parent / "shared" / "data"))


def session_dirs():
    """The data folders tests read: the real data root (when present) and the session's cache (conftest sets
    ``$TRANSFER_CORE_CACHE`` to a temporary folder, so that commands the tests start use it too)."""
    from transfer_core.data import DataDirs
    root = SHARED_DATA if (SHARED_DATA / "cifar10.tar.gz").is_file() else None
    return DataDirs(None if root is None else str(root), os.environ["TRANSFER_CORE_CACHE"])


def store_context(tracking_uri: str | None = None, ledger=None, **execution):
    """A :class:`transfer_core.execute.Context` without progress bars, for ``tracking_uri`` (default: the store
    the tracking fixture put in ``$MLFLOW_TRACKING_URI``), the session's data folders, the look ``ledger``
    (default: the session's, ``$TRANSFER_CORE_LEDGER``, never the user's) and the given executor settings
    (``workers=2``, ``pack=3``, ...). Tests are entry points: they may read the environment."""
    from transfer_core.execute import Context, ExecutorSettings
    dirs = session_dirs()
    return Context.open(tracking_uri or os.environ["MLFLOW_TRACKING_URI"], dirs.root, dirs.cache,
                        ExecutorSettings(**execution), progress=False,
                        ledger=ledger or os.environ["TRANSFER_CORE_LEDGER"])


def serve_mlflow(tmp_path, empty_store, *args, env=None):
    """A real `mlflow server` on loopback with a sqlite backend and served artifacts; yields its URL, then stops it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shutil.copy(empty_store, tmp_path / "server.db")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "served-artifacts"), "--workers", "1", *args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers: a session of our own
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
