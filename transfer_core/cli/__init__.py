"""The ``transfer-core`` command line (``python -m transfer_core.cli``); see :mod:`~transfer_core.cli.commands`."""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from transfer_core.cli.commands import main
from transfer_core.cli import ui as _ui  # noqa: F401  (registers `transfer-core ui` on main)

__all__ = ["main", "run"]


def run(argv: list[str] | None = None) -> None:
    """The console entry point: run one command, then end the process without the interpreter's teardown.

    :func:`end_process` does what a normal exit does that matters (threads, ``atexit``
    handlers, flushed output) and skips freeing the modules of torch and mlflow, 1.4 s of
    every process (BENCHMARKS.md, "Start-up and exit"). Errors exit as ``sys.exit`` would.
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


def end_process(code: int) -> NoReturn:
    """End this process as a normal exit would, less the interpreter's teardown of its modules.

    Waits for non-daemon threads, runs the ``atexit`` handlers (logging, multiprocessing,
    mlflow) and flushes the standard streams, then ``os._exit(code)``. Under a profiler or a
    tracer (``python -m cProfile``, coverage), which write their data at exit, it exits normally.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:  # a profiler or coverage writes its data at exit
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(code)
