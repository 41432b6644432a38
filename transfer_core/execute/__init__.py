"""Execution: where models train, one way for every retraining (sweeps and counterfactual grids).

    from transfer_core.execute import Context, SubsetRunner
    ctx = Context.open(data_root="../shared/data")           # the store, the data folders, the executor
    runner = SubsetRunner(build_config("quick"), experiment="demo", ctx=ctx)   # one model, in this process
    run_id, result = runner.run(index=0)

:class:`Context` is what every stage receives from its entry point: the tracking store, the
data folders and the :class:`ExecutorSettings`.

A :class:`Task` is one model named by its key tags; :func:`run_tasks` claims each task
through the tracking store and trains it on local worker processes or a Ray cluster, so
two commands at once never train the same model twice. With ``ExecutorSettings(pack=N)``
a worker trains up to N claimed models at once as one network (:mod:`~transfer_core.execute.pack_tasks`).
"""
from transfer_core.execute.context import Context
from transfer_core.execute.executor import drive, make_executor, run_tasks
from transfer_core.execute.pack_tasks import resolve_pack
from transfer_core.execute.subset_runner import SubsetRunner
from transfer_core.execute.settings import AUTO, EXECUTORS, ExecutionError, ExecutorSettings, check_executor
from transfer_core.execute.tasks import Job, Outcome, Task, threads_per_worker

__all__ = ["Context", "AUTO", "EXECUTORS", "ExecutorSettings", "check_executor", "drive", "make_executor", "run_tasks",
           "resolve_pack", "SubsetRunner", "ExecutionError", "Job", "Outcome", "Task", "threads_per_worker"]
