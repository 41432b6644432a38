"""The look ledger: every look at a selection half, kept where ``mlflow gc`` and a new store cannot reach it.

Showing a plan's results on a selection half is a *look* at it (champion rule, :mod:`.summary`).
Looks are counted per selection half, named by the identity of its images
(:func:`transfer_core.data.selection_half_key`: which images, by content and index; not the
resolution, not the store). Three places remember a look, and a read merges them:

1. **the ledger file** (``Context.ledger``: ``$TRANSFER_CORE_LEDGER``, else
   ``~/.local/state/transfer_core/looks.jsonl``), append-only JSON lines, one :class:`Look` each.
   It lives outside every tracking store and outside the data cache, so deleting or
   garbage-collecting runs, or starting a new store, forgets nothing;
2. **a copy on each counterfactual run** (artifact :data:`LEDGER_ARTIFACT`): every look at the
   same half the ledger held when the run was shown, itself included. A store read on another
   machine (whose ledger file never saw these looks) still finds them;
3. **the store's tags** of every counterfactual run shown on that half (tag ``look_key``, or, for
   runs made before the ledger, the same ``selection_half_digest``): its first-shown time.

Merge rule: a look is one counterfactual run (``run_id``, unique across stores); its time is the
ledger file's when the file has it, else the earliest copy's, else the store tag's. Looks are
numbered by time (then run id), from 1. Appending happens under a file lock (``filelock``) with
the merge read in the same critical section, and every new look gets a time later than every
look the ledger already holds, so processes that show plans at once get distinct numbers.
What the store knew and the file did not is written back to the file at the same time.

What still resets the count: deleting the ledger file *and* every counterfactual run of the half
that carries a copy (or their ``looks.jsonl`` artifacts), or pointing ``$TRANSFER_CORE_LEDGER``
at another file and using a new store. Two machines with separate ledger files and separate
stores never learn of each other's looks.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError
from transfer_core.track import artifact_path, now_ms, run_filter, search_all, set_tags
from transfer_core.track.claims import is_superseded
from transfer_core.track.runs import COUNTERFACTUAL, all_experiment_ids

LEDGER_ARTIFACT = "looks.jsonl"  # the copy on each counterfactual run
LOOK_KEY_TAG = "look_key"  # on a counterfactual run: the selection half it looks at
FIRST_SHOWN_TAG = "transfer_core.first_shown_ms"  # on a counterfactual run: when its results were first shown
LEGACY_DIGEST_TAG = "selection_half_digest"  # runs made before the ledger name their half by this digest
LOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Look:
    """One counterfactual run's first look at a selection half."""

    key: str  # the selection half (data.selection_half_key)
    run_id: str  # the counterfactual run that looked
    shown_ms: int  # when its results were first shown (unix ms); orders the looks
    counterfactual_id: str = ""  # the plan's id, cf-<hash>
    store: str = ""  # the tracking store the run lives in (credentials removed)
    experiment_id: str = ""

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_line(cls, line: str) -> "Look":
        values = json.loads(line)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def store_label(tracking_uri: str) -> str:
    """The store's URI as a ledger line records it: without a user name or password."""
    return re.sub(r"//[^/@]*@", "//", tracking_uri)


def read_lines(path: Path) -> list[Look]:
    """The looks in a ledger file or copy; an unfinished last line (a writer killed mid-line) is skipped."""
    if not path.is_file():
        return []
    looks = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            looks.append(Look.from_line(line))
        except (ValueError, TypeError):
            if number == len(lines):  # torn by a crash while appending: that look was never shown
                continue
            raise ConfigError(f"look ledger {path} line {number} is not a look record; restore the file from its "
                              f"copy ({LEDGER_ARTIFACT} in a counterfactual run's artifacts) or remove that line")
    return looks


class LookLedger:
    """The ledger file at ``path`` (made on first write) and its lock file beside it."""

    def __init__(self, path):
        if path is None:
            raise ConfigError("this context has no look ledger, so looks at a selection half cannot be counted; "
                              "open it with Context.open() (or pass ledger=PATH)")
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def read(self, key: str | None = None) -> list[Look]:
        return [look for look in read_lines(self.path) if key is None or look.key == key]

    def _append(self, looks: list[Look]) -> None:
        """Append under the lock the caller holds; one write, flushed to disk before the lock is released."""
        if not looks:
            return
        with open(self.path, "a") as f:
            f.write("".join(look.to_line() + "\n" for look in looks))
            f.flush()
            os.fsync(f.fileno())


def merge(file: list[Look], copies: list[Look] = (), tags: list[Look] = ()) -> list[Look]:
    """One look per run: the file's time first, else the earliest copy's, else the tag's; in look order."""
    chosen: dict[str, Look] = {}
    for source in (file, sorted(copies, key=lambda look: look.shown_ms), tags):
        for look in source:
            chosen.setdefault(look.run_id, look)
    return sorted(chosen.values(), key=lambda look: (look.shown_ms, look.run_id))


def shown_runs(client: MlflowClient, key: str, legacy_digest: str | None = None) -> list:
    """Counterfactual runs of every experiment of the store (deleted ones too) shown on half ``key``."""
    experiments = all_experiment_ids(client, ViewType.ALL)
    runs = {r.info.run_id: r for r in search_all(client, experiments, run_filter(COUNTERFACTUAL, **{LOOK_KEY_TAG: key}),
                                                 view_type=ViewType.ALL)}
    if legacy_digest:
        for r in search_all(client, experiments, run_filter(COUNTERFACTUAL, **{LEGACY_DIGEST_TAG: legacy_digest}),
                            view_type=ViewType.ALL):
            if r.data.tags.get(LOOK_KEY_TAG) in (None, key):
                runs.setdefault(r.info.run_id, r)
    return [r for r in runs.values() if FIRST_SHOWN_TAG in r.data.tags and not is_superseded(r)]


def store_looks(client: MlflowClient, key: str, legacy_digest: str | None = None) -> tuple[list[Look], list[Look]]:
    """``(copies, tags)``: the looks at half ``key`` in the ledger copies on the store's runs, and in its tags."""
    copies, tags = [], []
    for run in shown_runs(client, key, legacy_digest):
        tags.append(Look(key, run.info.run_id, int(run.data.tags[FIRST_SHOWN_TAG]),
                         run.data.tags.get("counterfactual_id", ""), store_label(client.tracking_uri),
                         run.info.experiment_id))
        try:
            path = artifact_path(run, LEDGER_ARTIFACT, client)
        except (OSError, MlflowException):  # a remote store without the copy
            continue
        copies += [look for look in read_lines(path) if look.key == key]
    return copies, tags


def looks_at(client: MlflowClient, ledger: LookLedger, key: str, legacy_digest: str | None = None) -> list[Look]:
    """Every look at half ``key`` that the ledger file, the store's copies and its tags know of, in look order."""
    copies, tags = store_looks(client, key, legacy_digest)
    return merge(ledger.read(key), copies, tags)


def look_number(looks: list[Look], run_id: str) -> tuple[int, list[str]]:
    """``(look, earlier run ids)`` of run ``run_id`` among ``looks`` (in look order); look 0 if absent."""
    order = [look.run_id for look in looks]
    if run_id not in order:
        return 0, []
    position = order.index(run_id)
    return position + 1, order[:position]


def record_look(client: MlflowClient, ledger: LookLedger, run, key: str,
                legacy_digest: str | None = None) -> tuple[int, list[str]]:
    """Count the first showing of counterfactual run ``run`` as a look at half ``key``; ``(look, earlier)``.

    Showing the same run again is the same look. Under the ledger's lock: merge what the file and
    the store know, append this look (later than every look the ledger holds) and what the store knew
    that the file did not, then stamp the run's first-shown tag. Outside it: log the run's copy.
    """
    ledger.path.parent.mkdir(parents=True, exist_ok=True)  # the lock file lives beside the ledger
    with ledger.lock:
        file = ledger.read(key)
        copies, tags = store_looks(client, key, legacy_digest)
        looks = merge(file, copies, tags)
        mine = next((look for look in looks if look.run_id == run.info.run_id), None)
        new = []
        if mine is None:  # later than every look known, whatever this machine's clock says
            latest = max((look.shown_ms for look in [*ledger.read(), *looks]), default=0)
            mine = Look(key, run.info.run_id, max(now_ms(), latest + 1), run.data.tags.get("counterfactual_id", ""),
                        store_label(client.tracking_uri), run.info.experiment_id)
            new = [mine]
        known = {look.run_id for look in file}
        ledger._append([look for look in looks if look.run_id not in known] + new)
        if run.data.tags.get(FIRST_SHOWN_TAG) != str(mine.shown_ms):
            set_tags(client, run.info.run_id, {FIRST_SHOWN_TAG: str(mine.shown_ms), LOOK_KEY_TAG: key})
        looks = merge(ledger.read(key), copies, tags)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / LEDGER_ARTIFACT).write_text("".join(look.to_line() + "\n" for look in looks))
        client.log_artifact(run.info.run_id, str(Path(tmp) / LEDGER_ARTIFACT))
    return look_number(looks, run.info.run_id)
