"""What the benchmark scripts share: they are entry points, so they resolve the data folders from the
environment here, as the command line does (``$TRANSFER_CORE_DATA``, ``$TRANSFER_CORE_CACHE``)."""
from __future__ import annotations

import os


def environment_dirs():
    """The data root and cache the environment names (default cache: ~/.cache/transfer_core)."""
    from transfer_core.data import DataDirs, check_data_root
    from transfer_core.data.images import DEFAULT_CACHE
    root = check_data_root(os.environ.get("TRANSFER_CORE_DATA"))
    return DataDirs(None if root is None else str(root), os.environ.get("TRANSFER_CORE_CACHE") or str(DEFAULT_CACHE))


def environment_context(tracking_uri: str | None = None, **execution):
    """A Context for ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``, else the embedded store) and the environment's
    data folders, without progress bars."""
    from transfer_core.execute import Context, ExecutorSettings
    dirs = environment_dirs()
    return Context.open(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), dirs.root, dirs.cache,
                        ExecutorSettings(**execution), progress=False)
