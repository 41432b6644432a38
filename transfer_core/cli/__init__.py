"""The ``transfer-core`` command line (``python -m transfer_core.cli``); see :mod:`~transfer_core.cli.commands`."""
from __future__ import annotations

import sys

from transfer_core.cli.commands import main
from transfer_core.execute.local import end_process

__all__ = ["main", "run"]


def run(argv: list[str] | None = None) -> None:
    """The console entry point: run one command, then end the process without the interpreter's teardown.

    :func:`~transfer_core.execute.local.end_process` does what a normal exit does that
    matters (threads, ``atexit`` handlers, flushed output) and skips freeing the modules of
    torch and mlflow, about 1.4 s of every process. Errors exit as ``sys.exit`` would.
    """
    try:
        main.main(args=argv, prog_name="transfer-core")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): print it, status 1
        print(code, file=sys.stderr)
        code = 1
    end_process(code or 0)
