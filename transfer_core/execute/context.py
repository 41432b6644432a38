"""Where a command works: the tracking store, the data and the executor, in one object made once.

The entry point (a ``transfer-core`` command, the pipeline) opens a :class:`Context` and hands
it to every stage; nothing below it reads MLflow's global tracking URI or sets environment
variables. A library caller that passes none gets :meth:`Context.open` of the environment
(``$MLFLOW_TRACKING_URI``, else the embedded store ``mlruns/mlflow.db``; ``$TRANSFER_CORE_DATA``).

    ctx = Context.open(tracking_uri="sqlite:///runs/mlflow.db", data_root="../shared/data")
    analyze("demo", ctx=ctx)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlflow.tracking import MlflowClient

from transfer_core.data import resolve_data_root
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.track import client_for, open_store


@dataclass(frozen=True)
class Context:
    """The tracking store (``tracking_uri``), the data root (None: torchvision downloads CIFAR),
    where models train (``execution``) and whether to show progress bars. Picklable."""

    tracking_uri: str
    data_root: str | None = None
    execution: ExecutorSettings = field(default_factory=ExecutorSettings)
    progress: bool = True

    @classmethod
    def open(cls, tracking_uri: str | None = None, data_root=None, execution: ExecutorSettings | None = None,
             progress: bool = True) -> "Context":
        """Resolve and check the store and the data root (one sentence when either is wrong)."""
        root = resolve_data_root(data_root)
        return cls(open_store(tracking_uri), None if root is None else str(root), execution or ExecutorSettings(),
                   progress)

    @property
    def client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def with_execution(self, execution: ExecutorSettings) -> "Context":
        return replace(self, execution=execution)
