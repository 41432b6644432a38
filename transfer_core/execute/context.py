"""Where a command works: the tracking store, the data folders and the executor, in one object made once.

The entry point (a ``transfer-core`` command, the pipeline, a test or a script) opens a
:class:`Context` and hands it to every stage; nothing below it reads the environment, MLflow's
global tracking URI, or opens a store of its own. The command line reads ``$MLFLOW_TRACKING_URI``,
``$TRANSFER_CORE_DATA``, ``$TRANSFER_CORE_CACHE`` and ``$TRANSFER_CORE_LEDGER`` (as option defaults)
and passes them here::

    ctx = Context.open(tracking_uri="sqlite:///runs/mlflow.db", data_root="../shared/data")
    analyze("demo", ctx=ctx)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError
from transfer_core.data import DataDirs, check_data_root
from transfer_core.data.images import DEFAULT_CACHE
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.track import client_for, open_store


# Where the look ledger lives unless the entry point says otherwise (``--ledger``, ``$TRANSFER_CORE_LEDGER``):
# a state folder, not the data cache. Caches are there to be deleted (``make`` keeps its cache inside the
# checkout), and deleting the ledger forgets every look it holds.
DEFAULT_LEDGER = Path.home() / ".local" / "state" / "transfer_core" / "looks.jsonl"


def check_ledger(path: Path) -> Path:
    """``path`` if the look ledger can live there (a file, or a name in a folder that is or can be made);
    one sentence otherwise, before anything trains."""
    folder = next((p for p in path.parents if p.exists()), None)
    if path.is_dir() or (folder is not None and not folder.is_dir()):
        raise ConfigError(f"--ledger {path} cannot be the look ledger: it must name a file (e.g. "
                          f"{path / 'looks.jsonl' if path.is_dir() else DEFAULT_LEDGER}), not a folder or a path "
                          "under a file")
    return path


@dataclass(frozen=True)
class Context:
    """The tracking store (``tracking_uri``), the data folders (``dirs``: the data root, None to download
    CIFAR, and the cache), where models train (``execution``), whether to show progress bars, and the look
    ledger (``ledger``, a file path; :mod:`transfer_core.counterfactual.looks`): None in a context made by
    hand, which can train and read but not show or register a plan's results. Picklable."""

    tracking_uri: str
    dirs: DataDirs = field(default_factory=DataDirs)
    execution: ExecutorSettings = field(default_factory=ExecutorSettings)
    progress: bool = True
    ledger: str | None = None

    @classmethod
    def open(cls, tracking_uri: str | None = None, data_root=None, cache_dir=None,
             execution: ExecutorSettings | None = None, progress: bool = True, ledger=None) -> "Context":
        """Resolve and check the store (default: the embedded ``mlruns/mlflow.db``), the data root, the
        cache folder (default ``~/.cache/transfer_core``) and the look ledger's path (default
        :data:`DEFAULT_LEDGER`); one sentence when one is wrong."""
        root = check_data_root(data_root)
        dirs = DataDirs(None if root is None else str(root), str(cache_dir or DEFAULT_CACHE))
        ledger = check_ledger(Path(ledger or DEFAULT_LEDGER).expanduser())
        return cls(open_store(tracking_uri), dirs, execution or ExecutorSettings(), progress, ledger=str(ledger))

    @property
    def client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def with_execution(self, execution: ExecutorSettings) -> "Context":
        return replace(self, execution=execution)
