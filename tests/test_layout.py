"""The package layout: stages import only earlier stages, no import circles, one place per run lookup,
one step key, no hidden global state below the entry points, and no copied defaults in the CLI's help."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import transfer_core

PACKAGE = Path(transfer_core.__file__).resolve().parent
# The pipeline's stages in data-flow order; a stage may import only the ones before it.
STAGES = ["config", "settings", "data", "train", "track", "execute", "sweep", "tune", "analysis", "attribution",
          "counterfactual", "registry",
          "workflow", "cli"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """transfer_core modules ``path`` imports, anywhere in the file; ``from pkg import sub`` counts as pkg.sub."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transfer_core"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("transfer_core")}
    return out


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_stage_is_a_package_or_module_with_a_docstring():
    for name in STAGES:
        path = PACKAGE / name / "__init__.py" if (PACKAGE / name).is_dir() else PACKAGE / f"{name}.py"
        assert path.is_file(), name
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} says nothing about its stage"
    assert {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")} \
        == {"__init__.py", "config.py", "settings.py", "presets",
            *[s for s in STAGES if s not in ("config", "settings")]}
    assert not list((PACKAGE / "presets").rglob("*.py"))  # presets/ is package data: profiles and studies


def test_stages_import_only_earlier_stages():
    known = modules()
    for name, path in known.items():
        own = stage(name)
        if own is None:
            continue
        for target in imports(path, set(known)):
            other = stage(target)
            if other is not None and other != own:
                assert STAGES.index(other) < STAGES.index(own), f"{name} imports {target}: a later stage"


def test_no_import_circles():
    known = modules()
    graph = {name: imports(path, set(known)) - {name} for name, path in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_one_definition_of_each_run_lookup():
    source = {name: path.read_text() for name, path in modules().items()}
    for helper in ("latest_run", "get_run_of_kind", "run_filter", "quote", "log_new_params", "run_scope",
                   "mark_failed", "search_all", "settle_parent"):
        defined = [name for name, text in source.items() if re.search(rf"^def {helper}\(", text, re.M)]
        assert len(defined) == 1, f"{helper} is defined in {defined}"
    # filter values are quoted one way (track.runs.quote): nobody compares a tag with a literal by hand
    hand_made = [name for name, text in source.items() if re.search(r"tags\.[`\w.]+ = '", text)]
    assert hand_made == []


ENTRY_STAGES = ("cli", "workflow")  # the entry points: they may set up the process, nothing below them may


def test_nothing_below_the_entry_points_sets_the_environment_or_mlflows_global_uri():
    for name, path in modules().items():
        if stage(name) in ENTRY_STAGES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                assert target not in ("mlflow.set_tracking_uri", "mlflow.set_registry_uri", "os.putenv",
                                      "os.environ.pop", "os.environ.update", "os.environ.setdefault",
                                      "mlflow.start_run"), f"{name} calls {target}"
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for target in targets:
                    assert not ast.unparse(target).startswith("os.environ["), f"{name} writes {ast.unparse(target)}"


# Where the library may read the environment, and why: everything else receives a Context (issue 28).
ENVIRONMENT_READERS = {
    "transfer_core.execute.ray_cluster": "forwards MLflow's credential variables to Ray workers",
    "transfer_core.track.store": "names the MLFLOW_TRACKING_USERNAME that MLflow itself sent, in a refusal",
    "transfer_core.track.ui": "the MLflow server app: an entry point of its own (transfer-core ui sets its experiment)",
}


def test_below_the_entry_points_only_known_modules_read_the_environment():
    readers = {}
    for name, path in modules().items():
        if stage(name) in ENTRY_STAGES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, (ast.Attribute, ast.Call)) else ""
            if text.startswith(("os.environ", "os.getenv")):
                readers.setdefault(name, set()).add(text.split("(")[0].split("[")[0])
    assert set(readers) <= set(ENVIRONMENT_READERS), {k: v for k, v in readers.items() if k not in ENVIRONMENT_READERS}


def test_one_step_key_function_and_every_reuse_goes_through_it():
    source = {name: path.read_text() for name, path in modules().items()}
    defined = [name for name, text in source.items() if re.search(r"^def step_key\(", text, re.M)]
    assert defined == ["transfer_core.track.steps"]
    # hashing is for content digests (data, pixels), the config's own digest, cache file names and the one key
    hashing = {name for name, text in source.items() if re.search(r"^import hashlib", text, re.M)}
    assert hashing <= {"transfer_core.config", "transfer_core.data.digest", "transfer_core.data.loading",
                       "transfer_core.data.prepared", "transfer_core.data.stream",
                       "transfer_core.analysis.duplicates", "transfer_core.track.steps", "transfer_core.track.store"}
    for reuser in ("transfer_core.sweep.sweep", "transfer_core.sweep.collect", "transfer_core.counterfactual.grid",
                   "transfer_core.analysis.step", "transfer_core.tune.study"):
        assert "step_key(" in source[reuser], reuser


def test_the_command_line_copies_no_default_by_hand():
    """Every default --help shows is read from the library (a dataclass field or a constant), never written out."""
    for name, path in modules().items():
        if stage(name) != "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "show_default":
                assert not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)), \
                    f"{name}:{node.value.lineno} shows a default written by hand: {node.value.value!r}"
            if isinstance(node, ast.keyword) and node.arg == "help" and isinstance(node.value, ast.Constant):
                assert not re.search(r"[Dd]efault:? (is )?\(?[0-9]", node.value.value), \
                    f"{name}:{node.value.lineno} states a default by hand: {node.value.value!r}"
