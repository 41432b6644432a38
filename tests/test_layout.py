"""The package layout: stages import only earlier stages, no import circles, one place per run lookup."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import transfer_core

PACKAGE = Path(transfer_core.__file__).resolve().parent
# The pipeline's stages in data-flow order; a stage may import only the ones before it.
STAGES = ["config", "data", "train", "track", "execute", "sweep", "tune", "analysis", "counterfactual", "registry",
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
        == {"__init__.py", "config.py", *[s for s in STAGES if s != "config"]}


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
