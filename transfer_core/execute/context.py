"""Where a command works: the tracking store, the data folders and the executor, in one object made once.

The entry point (a ``transfer-core`` command, the pipeline, a test or a script) opens a
:class:`Context` and hands it to every stage; nothing below it reads the environment, MLflow's
global tracking URI, or opens a store of its own. The command line reads ``$MLFLOW_TRACKING_URI``,
``$TRANSFER_CORE_DATA`` and ``$TRANSFER_CORE_CACHE`` (as option defaults) and passes them here::

    ctx = Context.open(tracking_uri="sqlite:///runs/mlflow.db", data_root="../shared/data")
    analyze("demo", ctx=ctx)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlflow.tracking import MlflowClient

from transfer_core.data import DataDirs, check_data_root
from transfer_core.data.images import DEFAULT_CACHE
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.track import client_for, open_store


@dataclass(frozen=True)
class Context:
    """The tracking store (``tracking_uri``), the data folders (``dirs``: the data root, None to download
    CIFAR, and the cache), where models train (``execution``) and whether to show progress bars. Picklable."""

    tracking_uri: str
    dirs: DataDirs = field(default_factory=DataDirs)
    execution: ExecutorSettings = field(default_factory=ExecutorSettings)
    progress: bool = True

    @classmethod
    def open(cls, tracking_uri: str | None = None, data_root=None, cache_dir=None,
             execution: ExecutorSettings | None = None, progress: bool = True) -> "Context":
        """Resolve and check the store (default: the embedded ``mlruns/mlflow.db``), the data root and the
        cache folder (default ``~/.cache/transfer_core``); one sentence when either is wrong."""
        root = check_data_root(data_root)
        dirs = DataDirs(None if root is None else str(root), str(cache_dir or DEFAULT_CACHE))
        return cls(open_store(tracking_uri), dirs, execution or ExecutorSettings(), progress)

    @property
    def client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def with_execution(self, execution: ExecutorSettings) -> "Context":
        return replace(self, execution=execution)
