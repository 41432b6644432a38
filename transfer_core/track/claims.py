"""Claiming work through the tracking store, so no model is trained twice at once.

A *key* is a set of tags that names one piece of work: ``sweep_id`` + ``index`` for a
sweep's model, ``grid_id`` + ``order`` + ``k`` + ``seed`` for a grid point, or
just ``sweep_id`` for the parent run of a sweep.

The protocol needs nothing but a tracking store whose writes are visible to later reads
(sqlite, an ``mlflow server`` on a database): no unique constraints, no locks.

1. Write a claim: a RUNNING run tagged with who holds it (``transfer_core.claim_host``,
   ``transfer_core.claim_pid``) and a ``transfer_core.heartbeat`` (unix seconds) that a
   background thread refreshes every :data:`HEARTBEAT_S` seconds while the run trains.
2. Read every other run of the same key (``tags.sweep_id = ... and tags.index = ...``).
3. If any of them is FINISHED, or is a *live* claim, withdraw: tag our claim
   ``superseded=true`` and end it KILLED. Otherwise we hold the key.

Two claimers each write before they read, so the later reader always sees the earlier
claim: at most one of them proceeds (both may withdraw and retry after a random delay).
A claim is live while its process is: on the same host, while its pid exists; elsewhere,
while its heartbeat is younger than :data:`STALE_AFTER_S`. Dead claims (a killed worker,
a lost machine) and FAILED runs are *superseded* by the next claim, which tags them
``superseded=true`` (ending orphaned RUNNING ones KILLED), so that no run counts twice.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import random
from typing import Callable

from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.track.runs import KIND_TAG, log_new_params, run_filter, set_tags
from transfer_core.track.store import TrackingError

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # how often a claim's heartbeat tag is refreshed
STALE_AFTER_S = 90.0  # a claim from another host without a heartbeat for this long is dead
SAME_HOST_STALE_AFTER_S = 3600.0  # guards against a reused pid on the same host
SUPERSEDED_TAG = "superseded"
# Internal bookkeeping, under the package's tag prefix so that it stays apart from the user's tags.
HOST, PID = "transfer_core.claim_host", "transfer_core.claim_pid"
HEARTBEAT = "transfer_core.heartbeat"
ESTABLISHED_TAG = "transfer_core.established"  # on a parent run: it won its creation race
LEGACY = {HOST: "claim_host", PID: "claim_pid", HEARTBEAT: "heartbeat",  # names before 2026-12-03, still read
          ESTABLISHED_TAG: "established"}
ACTIVE = ("RUNNING", "SCHEDULED")
PARENT_TRIES = 30


def claim_tags() -> dict[str, str]:
    """Tags that say this process holds a run, written when the run is created."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), HEARTBEAT: f"{time.time():.1f}"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _tag(run, name: str, default=None):
    """Tag ``name`` of ``run``, or its name before 2026-12-03 (:data:`LEGACY`)."""
    return run.data.tags.get(name, run.data.tags.get(LEGACY.get(name, name), default))


def is_established(run) -> bool:
    return _tag(run, ESTABLISHED_TAG) == "true"


def is_superseded(run) -> bool:
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


def is_live(run, now: float | None = None) -> bool:
    """Whether ``run`` is an active claim whose holder still runs (see the module docstring)."""
    if run.info.status not in ACTIVE or is_superseded(run):
        return False
    now = time.time() if now is None else now
    try:
        age = now - float(_tag(run, HEARTBEAT, run.info.start_time / 1000))
    except ValueError:
        age = float("inf")
    pid = _tag(run, PID, "")
    if _tag(run, HOST) == socket.gethostname() and pid.isdigit():
        return pid_alive(int(pid)) and age < SAME_HOST_STALE_AFTER_S
    return age < STALE_AFTER_S


def withdraw(client: MlflowClient, run_id: str, reason: str) -> None:
    """Give up a claim we hold: it never trained, so it must never count."""
    client.log_batch(run_id, tags=[RunTag(SUPERSEDED_TAG, "true"), RunTag("superseded_reason", reason)])
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))


def supersede(client: MlflowClient, run, by_run_id: str) -> None:
    """Mark a dead claim or a FAILED run as replaced by ``by_run_id`` (ending it if still RUNNING)."""
    client.log_batch(run.info.run_id, tags=[RunTag(SUPERSEDED_TAG, "true"), RunTag("superseded_by", by_run_id)])
    if run.info.status in ACTIVE:
        client.set_terminated(run.info.run_id, status="KILLED")


def contest(client: MlflowClient, experiment_id: str, own_run_id: str, filter_string: str) -> str:
    """Step 2-3 of the protocol for a claim ``own_run_id`` already written.

    Returns ``"claimed"`` (stale and FAILED rivals are superseded), ``"done"`` (a rival is
    FINISHED) or ``"busy"`` (a rival is a live claim); on the last two our claim is withdrawn.
    """
    rivals = [r for r in client.search_runs([experiment_id], filter_string, max_results=1000)
              if r.info.run_id != own_run_id and not is_superseded(r)]
    finished = [r for r in rivals if r.info.status == "FINISHED"]
    if finished:
        withdraw(client, own_run_id, f"run {finished[0].info.run_id} already finished this index")
        return "done"
    live = [r for r in rivals if is_live(r)]
    if live:
        withdraw(client, own_run_id, f"run {live[0].info.run_id} holds this index")
        return "busy"
    for rival in rivals:
        supersede(client, rival, own_run_id)
    return "claimed"


def settle_parent(client: MlflowClient, experiment_id: str, kind: str, key: dict[str, str], *,
                  params: dict[str, str], run_name: str, extra_tags: dict[str, str] | None = None,
                  invocation_run_id: str | None = None, check: Callable | None = None) -> str:
    """The one parent run of ``kind`` with tags ``key``: the established one, else a new one.

    Creation is a claim: a candidate is written, and it becomes the parent only if no other
    candidate is live, so commands started together agree on one parent. ``check(run)`` may
    refuse an established parent (e.g. made with another config). ``invocation_run_id`` (the
    run of an enclosing ``mlflow run``, in this experiment) becomes the parent when there is
    none yet; otherwise (or in another experiment) it gets ``run_name`` and a ``parent_run_id``
    tag pointing to the parent.
    """
    adopt = invocation_run_id
    if adopt and client.get_run(adopt).info.experiment_id != experiment_id:
        adopt = None
    parent = _settle(client, experiment_id, kind, key, params, run_name, extra_tags or {}, adopt, check)
    if invocation_run_id and invocation_run_id != parent:
        set_tags(client, invocation_run_id, {**key, "parent_run_id": parent, MLFLOW_RUN_NAME: run_name})
    return parent


def _settle(client, experiment_id, kind, key, params, run_name, extra_tags, invocation_run_id, check) -> str:
    wanted = run_filter(kind, **key)
    for _ in range(PARENT_TRIES):
        parents = [r for r in client.search_runs([experiment_id], wanted, order_by=["attributes.start_time ASC"])
                   if not is_superseded(r)]
        settled = [r for r in parents if is_established(r)]
        if settled:
            if check is not None:
                check(settled[0])
            return settled[0].info.run_id
        if not any(is_live(r) for r in parents):
            tags = {KIND_TAG: kind, **key, **extra_tags, SUPERSEDED_TAG: "false", **claim_tags()}
            if invocation_run_id:
                own = invocation_run_id
                set_tags(client, own, {**tags, MLFLOW_RUN_NAME: run_name})
            else:
                own = client.create_run(experiment_id, tags={**tags, MLFLOW_RUN_NAME: run_name}).info.run_id
            rivals = [r for r in client.search_runs([experiment_id], wanted)
                      if r.info.run_id != own and not is_superseded(r)]
            if not any(is_live(r) or is_established(r) for r in rivals):
                for rival in rivals:  # candidates of commands that died before settling
                    supersede(client, rival, own)
                log_new_params(client, own, params)
                client.set_tag(own, ESTABLISHED_TAG, "true")
                return own
            client.set_tag(own, SUPERSEDED_TAG, "true")
            if own != invocation_run_id:
                client.set_terminated(own, status="KILLED")
        time.sleep(random.uniform(0.2, 1.5))
    raise TrackingError(f"could not settle on one parent run for {kind} {key} after {PARENT_TRIES} tries; "
                        "other commands keep creating it, so wait for them and run again")


class Heartbeat:
    """A daemon thread that refreshes the ``heartbeat`` tag of the claim(s) this process holds."""

    def __init__(self, client: MlflowClient, interval: float = HEARTBEAT_S):
        self.client, self.interval = client, interval
        self._runs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="claim-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, run_id: str) -> None:
        with self._lock:
            self._runs.add(run_id)

    def release(self, run_id: str) -> None:
        with self._lock:
            self._runs.discard(run_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                runs = list(self._runs)
            for run_id in runs:
                try:
                    self.client.set_tag(run_id, HEARTBEAT, f"{time.time():.1f}")
                except Exception as exc:  # a missed beat is harmless; the next one retries
                    log.warning("heartbeat for run %s failed: %s", run_id, exc)
