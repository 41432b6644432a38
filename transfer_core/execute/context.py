"""Where a command works: the tracking store, the data and the executor, in one object made once.

The entry point (a ``transfer-core`` command, the pipeline) opens a :class:`Context` and hands
it to every stage; nothing below it reads MLflow's global tracking URI or sets environment
variables. A library caller that passes none gets :meth:`Context.open` of the environment
(``$MLFLOW_TRACKING_URI``, else the embedded store ``mlruns/mlflow.db``; ``$TRANSFER_CORE_DATA``;
``$TRANSFER_CORE_LEDGER``, else :func:`default_ledger`, for the look ledger).

    ctx = Context.open(tracking_uri="sqlite:///runs/mlflow.db", data_root="../shared/data")
    analyze("demo", ctx=ctx)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.tracking import MlflowClient

from transfer_core.data import resolve_data_root
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.track import client_for, open_store


LEDGER_FILE = "looks.jsonl"


def default_ledger() -> Path:
    """Where the look ledger lives unless ``$TRANSFER_CORE_LEDGER`` says otherwise:
    ``$XDG_STATE_HOME/transfer_core/looks.jsonl`` (``~/.local/state/...``). A state folder, not the
    data cache: caches are there to be deleted (``make`` keeps its cache inside the checkout), and
    deleting the ledger forgets every look it holds."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "transfer_core" / LEDGER_FILE


@dataclass(frozen=True)
class Context:
    """The tracking store (``tracking_uri``), the data root (None: torchvision downloads CIFAR),
    where models train (``execution``), whether to show progress bars, and the look ledger
    (``ledger``, a file path; :mod:`transfer_core.counterfactual.looks`): None in a context made by
    hand, which can train and read but not show or register a plan's results. Picklable."""

    tracking_uri: str
    data_root: str | None = None
    execution: ExecutorSettings = field(default_factory=ExecutorSettings)
    progress: bool = True
    ledger: str | None = None

    @classmethod
    def open(cls, tracking_uri: str | None = None, data_root=None, execution: ExecutorSettings | None = None,
             progress: bool = True, ledger=None) -> "Context":
        """Resolve and check the store and the data root (one sentence when either is wrong), and the look
        ledger's path (``ledger``, else ``$TRANSFER_CORE_LEDGER``, else :func:`default_ledger`)."""
        root = resolve_data_root(data_root)
        ledger = Path(ledger or os.environ.get("TRANSFER_CORE_LEDGER") or default_ledger()).expanduser()
        return cls(open_store(tracking_uri), None if root is None else str(root), execution or ExecutorSettings(),
                   progress, str(ledger))

    @property
    def client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def with_execution(self, execution: ExecutorSettings) -> "Context":
        return replace(self, execution=execution)
