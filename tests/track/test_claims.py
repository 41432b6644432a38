"""The claim protocol on a real sqlite MLflow store: who may train an index, and what gets superseded."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from transfer_core.track import claims
from transfer_core.track import run_filter
from transfer_core.track.claims import HEARTBEAT, HOST, PID, claim_tags, contest, is_live


@pytest.fixture
def store(tracking):
    client = MlflowClient()
    return client, client.create_experiment("claims")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(client, experiment_id, index=0, status=None, **tags):
    base = {"transfer_core.kind": "subset_run", "sweep_id": "s1", "index": str(index)}
    run_id = client.create_run(experiment_id, tags={**base, **tags}).info.run_id
    if status:
        client.set_terminated(run_id, status=status)
    return run_id


def claim(client, experiment_id, index=0):
    own = make_run(client, experiment_id, index, **claim_tags())
    return own, contest(client, experiment_id, own, run_filter("subset_run", sweep_id="s1", index=str(index)))


def test_first_claim_wins_and_a_live_rival_makes_the_second_withdraw(store):
    client, exp = store
    first, state = claim(client, exp)
    assert state == "claimed"
    second, state = claim(client, exp)
    assert state == "busy"  # the first claimer (this process) is alive
    withdrawn = client.get_run(second)
    assert withdrawn.info.status == "KILLED" and withdrawn.data.tags["superseded"] == "true"
    assert client.get_run(first).info.status == "RUNNING"
    other_index, state = claim(client, exp, index=1)  # other indices are independent
    assert state == "claimed"


def test_dead_and_failed_runs_are_superseded_by_the_next_claim(store):
    client, exp = store
    orphan = make_run(client, exp, **{HOST: claim_tags()[HOST], PID: str(dead_pid()),
                                      HEARTBEAT: f"{time.time():.1f}"})
    failed = make_run(client, exp, status="FAILED")
    own, state = claim(client, exp)
    assert state == "claimed"
    for run_id, status in ((orphan, "KILLED"), (failed, "FAILED")):
        run = client.get_run(run_id)
        assert run.info.status == status
        assert run.data.tags["superseded"] == "true" and run.data.tags["superseded_by"] == own


def test_a_finished_run_ends_the_claim(store):
    client, exp = store
    make_run(client, exp, status="FINISHED")
    own, state = claim(client, exp)
    assert state == "done"
    assert client.get_run(own).data.tags["superseded"] == "true"


def test_liveness_of_claims_from_other_hosts_follows_the_heartbeat(store):
    client, exp = store
    now = time.time()
    fresh = make_run(client, exp, **{HOST: "elsewhere", PID: "1", HEARTBEAT: f"{now - 10:.1f}"})
    stale = make_run(client, exp, **{HOST: "elsewhere", PID: "1",
                                     HEARTBEAT: f"{now - claims.STALE_AFTER_S - 5:.1f}"})
    here_alive = make_run(client, exp, **{HOST: claim_tags()[HOST], PID: str(os.getpid()),
                                          HEARTBEAT: f"{now - 300:.1f}"})
    assert is_live(client.get_run(fresh), now)
    assert not is_live(client.get_run(stale), now)
    assert is_live(client.get_run(here_alive), now)  # same host: the pid decides, not the beat


def test_heartbeat_refreshes_the_tag_of_held_runs(store):
    client, exp = store
    run_id = make_run(client, exp, **{HEARTBEAT: "0"})
    beat = claims.Heartbeat(client, interval=0.05)
    beat.hold(run_id)
    deadline = time.time() + 10
    while client.get_run(run_id).data.tags[HEARTBEAT] == "0" and time.time() < deadline:
        time.sleep(0.05)
    beat.release(run_id)
    beat.stop()
    assert float(client.get_run(run_id).data.tags[HEARTBEAT]) > time.time() - 10
