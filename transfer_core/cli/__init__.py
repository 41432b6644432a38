"""The ``transfer-core`` command line (``python -m transfer_core.cli``); see :mod:`~transfer_core.cli.commands`."""
from transfer_core.cli.commands import main

__all__ = ["main"]
