"""The look ledger: looks at a selection half survive `mlflow gc`, a new store and a new resolution, and
stored records that can be checked are checked (issue 30's findings 1, 2 and 4, reproduced on the
synthetic profile with real MLflow stores, real training and the real `mlflow gc`)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from transfer_core.cli import main
from transfer_core.config import ConfigError, build_config
from transfer_core.counterfactual import CounterfactualPlan, log_report, run_counterfactual
from transfer_core.counterfactual.gate import recompute_selection
from transfer_core.counterfactual.looks import (FIRST_SHOWN_TAG, LEDGER_ARTIFACT, Look, LookLedger, merge,
                                                read_lines)
from transfer_core.data import DataDirs, selection_half_key, validation_digests
from transfer_core.data.synthetic import SOURCE_CLASSES
from transfer_core.execute import Context
from transfer_core.execute.context import DEFAULT_LEDGER
from transfer_core.track import VAL_OUTPUTS_ARTIFACT, VAL_OUTPUTS_DIGEST_TAG, artifact_path
from transfer_core.registry import register_champion
from support import store_context

TINY = {"pretrain.epochs": "1", "transfer.epochs": "2"}
EXPERIMENT = "looks"


def ranking() -> pd.DataFrame:
    """A class ranking whose most detrimental class is the planted ``misleading`` one."""
    influence = np.linspace(0.5, -0.4, len(SOURCE_CLASSES))
    worst = SOURCE_CLASSES.index("misleading")
    influence[worst], influence[-1] = influence[-1], influence[worst]
    return pd.DataFrame({"class_index": range(len(SOURCE_CLASSES)), "class_name": SOURCE_CLASSES,
                         "influence": influence})


def context(folder: Path, ledger: Path) -> Context:
    """A new sqlite store in ``folder`` (artifacts beside it) that counts looks in ``ledger``."""
    return store_context(f"sqlite:///{folder / 'mlflow.db'}", ledger=ledger)


def plan(ctx: Context, n_seeds: int = 3, ks=(0, 1), resolution: int = 16, orders=("bottom",)):
    """A plan on the planted ranking (trains what the grid lacks; shows nothing). ``ks=(0,)`` is a plan of
    the full source alone: one run per seed, and a look like any other when it is shown."""
    config = build_config("synthetic", {**TINY, "data.resolution": str(resolution)})
    return run_counterfactual(config, ranking(), CounterfactualPlan(orders, ks, n_seeds), ctx=ctx,
                              experiment=EXPERIMENT, analysis_run_id="a" * 32)


def show(ctx: Context, runs):
    """Report a plan: the look at its selection half."""
    return log_report(ctx.client, runs.parent_run_id, runs.table, ledger=ctx.ledger)


def register(ctx: Context, run_id: str) -> tuple[int, str]:
    """``transfer-core register`` on ``run_id`` as a user types it: (exit code, output)."""
    env = {"MLFLOW_TRACKING_URI": ctx.tracking_uri, "TRANSFER_CORE_LEDGER": ctx.ledger}
    result = CliRunner().invoke(main, ["register", "--counterfactual", run_id], env=env)
    return result.exit_code, result.output


def recorded(ctx: Context) -> tuple[int, int]:
    """(runs in every experiment, deleted included; model versions): what a refusal must leave as it was."""
    client = ctx.client
    runs = client.search_runs([e.experiment_id for e in client.search_experiments(ViewType.ALL)],
                              run_view_type=ViewType.ALL, max_results=5000)
    return len(runs), len(client.search_model_versions())


def gc(ctx: Context, *run_ids: str) -> None:
    """Delete runs and garbage-collect them with the real `mlflow gc`: metadata and artifacts are gone."""
    for run_id in run_ids:
        ctx.client.delete_run(run_id)
    done = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", ctx.tracking_uri],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ctx.tracking_uri})
    assert done.returncode == 0, done.stderr[-2000:]
    for run_id in run_ids:
        with pytest.raises(MlflowException):
            ctx.client.get_run(run_id)


@pytest.fixture(scope="module")
def store_a(tmp_path_factory):
    """Store A: one 3-seed plan on the synthetic selection half, trained (6 runs) and shown once."""
    root = tmp_path_factory.mktemp("store_a")
    ctx = context(root, root / "looks.jsonl")
    runs = plan(ctx)
    show(ctx, runs)
    return ctx, runs


# ---- the key and the ledger, without training ------------------------------------------------------------

def write_folder(root: Path, seed: int = 0) -> Path:
    """A tiny image-folder target: 4 classes of 10 train and 2 test images, 40 px."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", 10), ("test", 2)):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_the_key_names_the_images_not_the_resolution_nor_the_store(tmp_path, dirs):
    """Finding 2's root: the validation digests change with data.resolution for the same images, the
    selection half's key does not; it changes with the images in the half, and only with those."""
    synthetic = {r: build_config("synthetic", {"data.resolution": str(r)}).data for r in (16, 24)}
    assert selection_half_key(synthetic[16], dirs) == selection_half_key(synthetic[24], dirs)
    from transfer_core.data import load_transfer_data
    digests = {r: validation_digests(load_transfer_data(d, dirs).target_val, 0) for r, d in synthetic.items()}
    assert digests[16]["selection_half_digest"] != digests[24]["selection_half_digest"]  # what the old count keyed on
    assert selection_half_key(build_config("synthetic", {"data.split_seed": "1"}).data, dirs) != \
        selection_half_key(synthetic[16], dirs)  # other halves

    folder = write_folder(tmp_path / "target")
    spec = {"data.target": f"imagefolder:{folder}", "data.val_fraction": "0.5"}
    config = {r: build_config("synthetic", {**spec, "data.resolution": str(r)}).data for r in (16, 24)}
    key = selection_half_key(config[16], dirs)
    assert key.startswith("half-") and key == selection_half_key(config[24], dirs)
    assert key != selection_half_key(build_config("synthetic", {**spec, "data.split_seed": "3"}).data, dirs)
    assert key != selection_half_key(build_config("synthetic", {**spec, "data.val_fraction": "0.4"}).data, dirs)

    from transfer_core.data import validation_halves
    from transfer_core.data.loading import validation_images
    val, _ = validation_images(config[16], 32, dirs)
    ranking_half = validation_halves(val.labels.numpy(), config[16].split_seed)

    def edited(position: int) -> str:
        """The key after one validation image's pixels change (read through a fresh cache: the tensor cache is
        keyed by the folder's path, not its content)."""
        from PIL import Image
        path = folder / "train" / f"{val.file_names[position]}.png"
        original = path.read_bytes()
        pixels = np.asarray(Image.open(path)).copy()
        pixels[0, 0] ^= 255
        Image.fromarray(pixels).save(path)
        try:
            return selection_half_key(config[16], DataDirs(dirs.root, str(tmp_path / f"cache-{position}")))
        finally:
            path.write_bytes(original)

    assert edited(int(np.flatnonzero(ranking_half)[0])) == key  # a ranking-half image: not what a look sees
    assert edited(int(np.flatnonzero(~ranking_half)[0])) != key  # a selection-half image: another half


def test_the_ledger_is_state_resolved_once_by_the_entry_point(tmp_path):
    """Context.open: the path given (the command line's --ledger, else $TRANSFER_CORE_LEDGER), else the
    user's state folder (not the cache); nothing is made until a look is written."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Context.open(uri).ledger == str(DEFAULT_LEDGER)
    assert DEFAULT_LEDGER.parts[-4:] == (".local", "state", "transfer_core", "looks.jsonl")
    assert Context.open(uri, ledger=tmp_path / "mine.jsonl").ledger == str(tmp_path / "mine.jsonl")
    assert Context(uri).ledger is None and not (tmp_path / "mine.jsonl").exists()
    from transfer_core.cli.options import store_options
    import click

    @click.command()
    @store_options
    def probe(**store):
        click.echo(store["ledger"])

    found = CliRunner().invoke(probe, [], env={"TRANSFER_CORE_LEDGER": str(tmp_path / "shared.jsonl")})
    assert found.output.strip() == str(tmp_path / "shared.jsonl")
    given = CliRunner().invoke(probe, ["--ledger", "x.jsonl"], env={"TRANSFER_CORE_LEDGER": "y.jsonl"})
    assert given.output.strip() == "x.jsonl"


def test_the_merge_rule_prefers_the_ledger_file_and_skips_a_torn_last_line(tmp_path):
    file = [Look("half-x", "r2", 20), Look("half-x", "r1", 10)]
    copies = [Look("half-x", "r3", 30), Look("half-x", "r3", 25), Look("half-x", "r1", 1)]
    tags = [Look("half-x", "r1", 0), Look("half-x", "r4", 5)]
    merged = merge(file, copies, tags)
    assert [(look.run_id, look.shown_ms) for look in merged] == [("r4", 5), ("r1", 10), ("r2", 20), ("r3", 25)]

    path = tmp_path / "looks.jsonl"
    path.write_text(Look("half-x", "r1", 10).to_line() + "\n" + '{"key": "half-x", "run_')  # killed mid-line
    assert [look.run_id for look in read_lines(path)] == ["r1"]
    path.write_text('{"key": "half-x", "run_\n' + Look("half-x", "r1", 10).to_line() + "\n")
    with pytest.raises(ConfigError, match="line 1 is not a look record"):
        read_lines(path)
    with pytest.raises(ConfigError, match="has no look ledger"):
        LookLedger(None)


APPENDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow.tracking import MlflowClient
    from transfer_core.counterfactual.looks import LookLedger, record_look
    uri, ledger, experiment_id, run_id, go = sys.argv[1:]
    client = MlflowClient(uri)
    while not Path(go).exists():
        time.sleep(0.01)
    look, earlier = record_look(client, LookLedger(ledger), client.get_run(run_id), "half-race")
    print(look)
""")


def test_processes_that_show_plans_at_once_get_distinct_looks(tmp_path):
    """Three processes record a look at one half at the same moment: the lock gives them looks 1 to 3, the
    ledger holds three lines, and each run's copy holds the looks before it."""
    ctx = context(tmp_path, tmp_path / "state" / "looks.jsonl")  # a folder made on first write
    from transfer_core.track import get_experiment_id
    experiment_id = get_experiment_id(ctx.client, EXPERIMENT)
    run_ids = [ctx.client.create_run(experiment_id, tags={"transfer_core.kind": "counterfactual",
                                                          "counterfactual_id": f"cf-{i}"}).info.run_id
               for i in range(3)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, ctx.tracking_uri, ctx.ledger, experiment_id, run_id,
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run_id in run_ids]
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, [err[-1500:] for _, err in results]
    looks = sorted(int(out.strip().splitlines()[-1]) for out, _ in results)
    assert looks == [1, 2, 3]
    ledger = LookLedger(ctx.ledger).read("half-race")
    assert sorted(look.run_id for look in ledger) == sorted(run_ids) and len(ledger) == 3
    times = [look.shown_ms for look in ledger]
    assert times == sorted(times) and len(set(times)) == 3  # strictly later, in append order
    for position, look in enumerate(ledger, start=1):
        run = ctx.client.get_run(look.run_id)
        assert run.data.tags[FIRST_SHOWN_TAG] == str(look.shown_ms)
        copy = read_lines(artifact_path(run, LEDGER_ARTIFACT, ctx.client))
        assert [c.run_id for c in copy][:position] == [c.run_id for c in ledger[:position]]


# ---- the findings, on trained plans -----------------------------------------------------------------------

def test_gc_then_register_counts_every_look(tmp_path):
    """Finding 1: three plans shown, the first two deleted and garbage-collected; the third is registered as
    look 3 (it was recomputed as look 1 before), and the next plan is look 4 (it was look 2). Deleting the
    ledger file changes nothing while a run's copy survives; when the copies are gone too, register refuses."""
    ctx = context(tmp_path / "g", tmp_path / "looks.jsonl")
    third = plan(ctx, 3, ks=(0,))  # trains the full source for 3 seeds
    first, second = plan(ctx, 1, ks=(0,)), plan(ctx, 2, ks=(0,))  # other plans on those runs: nothing to train
    fourth = plan(ctx, 3, ks=(0,), orders=("top",))
    assert first.n_trained == second.n_trained == fourth.n_trained == 0
    assert [show(ctx, runs).look for runs in (first, second, third)] == [1, 2, 3]
    gc(ctx, first.parent_run_id, second.parent_run_id)

    registered = register_champion(third.parent_run_id, ctx=ctx, name="gc")
    version = ctx.client.get_model_version("gc", registered.version)
    assert version.tags["look"] == "3" and float(version.tags["look_alpha"]) == pytest.approx(0.05 / 8)
    assert "is what counts" not in registered.message  # the stored selection.json said look 3 as well
    assert show(ctx, fourth).look == 4

    Path(ctx.ledger).unlink()  # the file alone: the runs' copies still hold every look
    ledger = LookLedger(ctx.ledger)
    assert recompute_selection(ctx.client, ctx.client.get_run(third.parent_run_id), ledger=ledger)[0].look == 3

    for runs in (third, fourth):  # now the copies too: a reset by hand
        copy = artifact_path(ctx.client.get_run(runs.parent_run_id), LEDGER_ARTIFACT, ctx.client)
        copy.write_text("".join(look.to_line() + "\n" for look in read_lines(copy)
                                if look.run_id == runs.parent_run_id))
    before = recorded(ctx)
    code, output = register(ctx, third.parent_run_id)
    assert code == 1 and len(output.strip().splitlines()) == 1, output
    assert f"counterfactual run {third.parent_run_id} reported look 3" in output and "now counts it as look 1" in output
    assert "restore the ledger" in output and recorded(ctx) == before


def test_a_second_store_on_the_same_half_counts_the_first_stores_looks(store_a, tmp_path):
    """Finding 2: the same job in a new store, on the same images, is the second look (it was look 1), and
    stays so when read with a ledger file that never saw the first store (the copy on its run remembers)."""
    ctx_a, runs_a = store_a
    ledger = tmp_path / "looks.jsonl"
    assert show(dataclasses.replace(ctx_a, ledger=str(ledger)), runs_a).look == 1  # the store's look, in this ledger
    ctx_b = context(tmp_path / "b", ledger)
    runs_b = plan(ctx_b, ks=(0,))  # the full source alone: 3 runs, enough seeds to register
    assert runs_b.plan["look_key"] == runs_a.plan["look_key"]
    selection = show(ctx_b, runs_b)
    assert selection.look == 2 and selection.earlier_looks == [runs_a.parent_run_id]
    assert selection.look_alpha == pytest.approx(0.05 / 4)
    registered = register_champion(runs_b.parent_run_id, ctx=ctx_b, name="second")
    assert ctx_b.client.get_model_version("second", registered.version).tags["look"] == "2"

    # read from another machine (a ledger file that never saw store A): the copy on store B's run remembers
    assert recompute_selection(ctx_b.client, ctx_b.client.get_run(runs_b.parent_run_id),
                               ledger=LookLedger(tmp_path / "other.jsonl"))[0].look == 2


def test_a_new_resolution_is_another_look_at_the_same_half(store_a, tmp_path):
    """Finding 2, related: a sweep at another data.resolution reads the same images, so its plan is the
    second look, although its (resolution-bound) selection-half digest differs."""
    ctx_a, runs_a = store_a
    ledger = tmp_path / "looks.jsonl"
    show(dataclasses.replace(ctx_a, ledger=str(ledger)), runs_a)
    ctx = context(tmp_path / "r24", ledger)
    runs = plan(ctx, 1, ks=(0,), resolution=24)  # one run: a look all the same
    assert runs.plan["selection_half_digest"] != runs_a.plan["selection_half_digest"]
    selection = show(ctx, runs)
    assert selection.look == 2 and selection.earlier_looks == [runs_a.parent_run_id]
    assert recompute_selection(ctx.client, ctx.client.get_run(runs.parent_run_id),
                               ledger=LookLedger(ledger))[0].look == 2


def test_an_edited_plan_tag_is_refused(store_a):
    """Finding 4: a plan record edited after the fact (here its seeds) no longer hashes to the run's
    counterfactual_id: register refuses in one sentence naming the run, and records nothing."""
    ctx, runs = store_a
    client = ctx.client
    original = client.get_run(runs.parent_run_id).data.tags["plan"]
    client.set_tag(runs.parent_run_id, "plan", json.dumps({**json.loads(original), "n_seeds": 4}, sort_keys=True))
    try:
        before = recorded(ctx)
        code, output = register(ctx, runs.parent_run_id)
    finally:
        client.set_tag(runs.parent_run_id, "plan", original)
    assert code == 1 and len(output.strip().splitlines()) == 1, output
    assert f"counterfactual run {runs.parent_run_id}: its plan tag does not hash to its counterfactual_id" in output
    assert recorded(ctx) == before


def test_overwritten_validation_outputs_are_refused(store_a):
    """Finding 4: a point's validation outputs replaced after training (every selection-half example of the
    pruned points made correct) are refused by their digest; with the digest tag forged to match, by their
    accuracy against the logged metric. One sentence naming the point's run; nothing recorded."""
    ctx, runs = store_a
    client = ctx.client
    point = client.get_run(runs.table[runs.table.order == "bottom"].run_id.iloc[0])
    path = artifact_path(point, VAL_OUTPUTS_ARTIFACT, client)
    original, digest = path.read_bytes(), point.data.tags[VAL_OUTPUTS_DIGEST_TAG]
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["correct"] = np.ones_like(arrays["correct"])
    try:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        before = recorded(ctx)
        code, output = register(ctx, runs.parent_run_id)
        assert code == 1 and len(output.strip().splitlines()) == 1, output
        assert f"grid run {point.info.run_id}: its {VAL_OUTPUTS_ARTIFACT} does not match the digest" in output
        from transfer_core.data import file_digest
        client.set_tag(point.info.run_id, VAL_OUTPUTS_DIGEST_TAG, file_digest(path))
        code, output = register(ctx, runs.parent_run_id)
        assert code == 1 and "gives validation accuracy 1.000000 but the run logged target_val_acc" in output, output
        assert recorded(ctx) == before
    finally:
        path.write_bytes(original)
        client.set_tag(point.info.run_id, VAL_OUTPUTS_DIGEST_TAG, digest)


@pytest.mark.parametrize("bad", ["folder", "file/looks.jsonl"])
def test_a_ledger_that_cannot_be_a_file_is_refused_before_anything_trains(tmp_path, bad):
    """`--ledger` naming a folder, or a path under a file, is one sentence and a non-zero exit; nothing is made."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["counterfactual", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                                       "--ledger", str(tmp_path / bad)])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot be the look ledger: it must name a file" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was opened
