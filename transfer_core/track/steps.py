"""One notion of a step, and of "already done".

Every step the tool can reuse (a sweep, a counterfactual grid and plan, an analysis, a tuning
study, a registration) is named by :func:`step_key`, a hash of what its result is a function of:

- its **resolved config** (every field, as MLflow params);
- the **ids of the steps it reads** (an analysis run, a grid, the runs it analyses);
- the **content digest of its data** (:func:`transfer_core.data.data_digest`: pixels and labels
  of what it trains and scores on, never file sizes or times);
- the **code that computes its numbers** (:func:`code_digest`: the syntax trees of the modules
  in :data:`CODE`, so comments, docstrings and formatting do not count);
- any option that changes the result.

A FINISHED run with the same key is reused (:func:`find_step`, or, for parents that several
commands may start at once, :func:`transfer_core.track.claims.settle_parent` on the key's tag).
**After a code change** a rerun recomputes exactly the steps whose computing code changed (a
change to training code makes a new sweep; a change to the analysis only a new analysis; a
change to tracking, the command line or the docs reuses everything). The package version and
git commit of the code that made a run are recorded beside the key (tag ``transfer_core.code_version``)
for provenance; they are not part of it, so an upgrade that does not touch a step's code keeps it.
"""
from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

from mlflow.tracking import MlflowClient

from transfer_core.config import RunConfig
from transfer_core.track.runs import latest_run

PACKAGE = Path(__file__).resolve().parents[1]  # transfer_core/
STEP_KEY_TAG = "transfer_core.step_key"
CODE_VERSION_TAG = "transfer_core.code_version"
# What computes each kind of result (paths under transfer_core/; a folder means every module in it).
CODE = {
    "models": ("config.py", "data", "train", "execute/subset_runner.py", "execute/pack_tasks.py",
               "track/run_record.py"),
    "analysis": ("analysis", "sweep/collect.py"),
    "tune": ("tune",),
}


def _normalised_source(path: Path) -> str:
    """The module's syntax tree without docstrings: what it computes, not how it is written down."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@lru_cache(maxsize=None)
def code_digest(group: str) -> str:
    """Digest of the code in :data:`CODE` ``[group]``: changes when what it computes changes."""
    h = hashlib.sha256(group.encode())
    for entry in CODE[group]:
        path = PACKAGE / entry
        for module in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(module.relative_to(PACKAGE)).encode() + b"\0")
            h.update(_normalised_source(module).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_version() -> str:
    """``<package version>`` plus ``+g<commit>`` (``.dirty`` with uncommitted changes) in a git checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        text = version("transfer-core")
    except PackageNotFoundError:
        text = "unknown"
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10)
        commit = git("rev-parse", "--short=12", "HEAD")
        if commit.returncode == 0 and commit.stdout.strip():
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
            text += f"+g{commit.stdout.strip()}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def step_key(kind: str, *, config: RunConfig | None = None, upstream: dict[str, object] | None = None,
             data: str | None = None, code: str | None = None, extra: object = None) -> str:
    """The key of a step of ``kind``: a sha256 hex digest of everything its result is a function of.

    ``config``: the resolved config; ``upstream``: ids of what it reads (``{"analysis": run_id}``);
    ``data``: a content digest of its data; ``code``: a :data:`CODE` group whose digest counts;
    ``extra``: options that change the result (JSON-serialisable). Callers shorten it for names.
    """
    blob = json.dumps({"kind": kind, "config": config.to_params() if config is not None else None,
                       "upstream": upstream or {}, "data": data, "code": code_digest(code) if code else None,
                       "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def step_tags(key: str) -> dict[str, str]:
    """The tags that record a step's key and the code version that computed it."""
    return {STEP_KEY_TAG: key, CODE_VERSION_TAG: code_version()}


def find_step(client: MlflowClient, experiment_id: str, kind: str, key: str):
    """The latest FINISHED run of ``kind`` with step key ``key``, or None: reuse it instead of recomputing."""
    return latest_run(client, experiment_id, kind, **{STEP_KEY_TAG: key})
