"""The ``transfer-core`` command line (``python -m transfer_core.cli``); see :mod:`~transfer_core.cli.commands`."""
from __future__ import annotations

import atexit
import os
import sys
import threading

from transfer_core.cli.commands import main

__all__ = ["main", "run"]


def run(argv: list[str] | None = None) -> None:
    """The console entry point: run one command, then end the process without the interpreter's teardown.

    Tearing down the modules of torch and mlflow costs about a second of every process
    (BENCHMARKS.md, "Start-up and exit"), and a sweep or the main job starts many. Before
    ending, this does what a normal exit does that matters: it waits for non-daemon threads,
    runs the ``atexit`` handlers (logging, multiprocessing, mlflow) and flushes the output;
    only the freeing of module objects is skipped. Errors exit as ``sys.exit`` would.
    """
    try:
        main.main(args=argv, prog_name="transfer-core")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): print it, status 1
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
