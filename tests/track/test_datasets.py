"""Dataset inputs: digests against a naive recomputation, what a run logs, and concurrent first logs."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
from mlflow.tracking import MlflowClient

from transfer_core.config import build_config
from transfer_core.data import class_mask, load_transfer_data, subset_digest
from transfer_core.data.digest import DIGEST_CHARS, class_digests
from transfer_core.execute import SubsetRunner
from transfer_core.track import get_experiment_id
from transfer_core.track.datasets import CONTEXTS, RunDatasets, log_dataset_inputs
from support import store_context

CONFIG = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2"})


def naive_subset_digest(source, mask) -> str:
    """The documented definition, image by image: per kept class, sha256(name, pixels, labels)."""
    parts = []
    for c in np.flatnonzero(mask):
        h = hashlib.sha256(source.class_names[c].encode() + b"\0")
        members = [i for i in range(len(source)) if int(source.labels[i]) == c]
        for i in members:
            h.update(source.images[i].numpy().tobytes())
        for i in members:
            h.update(int(source.labels[i]).to_bytes(8, "little", signed=True))
        parts.append(h.hexdigest())
    return hashlib.sha256(",".join(parts).encode()).hexdigest()[:DIGEST_CHARS]


def test_subset_digest_follows_the_kept_classes_and_their_pixels():
    source = load_transfer_data(CONFIG.data).source
    digests = class_digests(source)
    a, b = class_mask(0, 0, source.n_classes), class_mask(0, 1, source.n_classes)
    assert not np.array_equal(a, b)
    assert subset_digest(digests, a) == naive_subset_digest(source, a)
    assert subset_digest(digests, a) != subset_digest(digests, b)
    dropped, kept = np.flatnonzero(~a)[0], np.flatnonzero(a)[0]
    for c, should_change in ((dropped, False), (kept, True)):
        changed = source.select(np.arange(len(source)))
        first = int((changed.labels == c).nonzero()[0, 0])
        changed.images[first, 0, 0, 0] ^= 1  # one pixel of one image
        assert (subset_digest(class_digests(changed), a) != subset_digest(digests, a)) == should_change


def test_a_run_logs_its_source_subset_and_the_target_splits(tracking):
    runner = SubsetRunner(CONFIG, "datasets", store_context())
    client = MlflowClient()
    runs = {i: client.get_run(runner.run(i)[0]) for i in (0, 1)}
    logged = {i: {t.value: d.dataset for d in run.inputs.dataset_inputs for t in d.tags
                  if t.key == "mlflow.data.context"} for i, run in runs.items()}
    assert all(set(found) == set(CONTEXTS) for found in logged.values())
    for i, run in runs.items():
        source = logged[i]["pretrain"]
        mask = runner.mask_for(i)
        assert source.digest == naive_subset_digest(runner.data.source, mask)
        assert source.name == f"synthetic-source: {mask.sum()} of {len(mask)} classes"
        assert json.loads(source.source)["spec"] == "synthetic-source"
        assert json.loads(source.profile) == {"num_images": int(np.isin(runner.data.source.labels, np.flatnonzero(
            mask)).sum()), "num_classes": int(mask.sum())}
        assert json.loads(logged[i]["evaluation"].profile)["num_images"] == len(runner.data.target_test)
    assert logged[0]["pretrain"].digest != logged[1]["pretrain"].digest  # other kept classes
    for context in ("transfer", "validation", "evaluation"):  # the same target splits
        assert logged[0][context].digest == logged[1][context].digest
    assert len({logged[0][c].digest for c in ("transfer", "validation", "evaluation")}) == 3


def test_concurrent_first_logs_of_one_dataset_all_succeed(tracking):
    """Eight writers log the same new datasets at the same instant, each into its own runs."""
    client = MlflowClient()
    experiment_id = get_experiment_id(client, "concurrent")
    data = load_transfer_data(CONFIG.data)
    inputs = RunDatasets(CONFIG.data, data).inputs(class_mask(0, 0, data.source.n_classes))
    run_ids = [[client.create_run(experiment_id).info.run_id for _ in range(3)] for _ in range(8)]
    start, results = threading.Barrier(len(run_ids)), []

    def writer(ids):
        start.wait()
        results.extend(log_dataset_inputs(MlflowClient(), run_id, inputs) for run_id in ids)

    threads = [threading.Thread(target=writer, args=(ids,)) for ids in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 24
    for run_id in sum(run_ids, []):
        assert len(client.get_run(run_id).inputs.dataset_inputs) == len(CONTEXTS)
