"""The docs cannot drift: README.md, docs/*.md and the presets' comments are checked against the code.

- **Command lines.** Every ``transfer-core ...`` (also ``.venv/bin/transfer-core``, ``python -m
  transfer_core.cli``) and ``mlflow run ...`` line in a shell block, and every such inline code span,
  is parsed with click's ``make_context`` (never invoked): the command and its options must exist
  and each value must be one its type accepts. Then the values go through what the command itself
  builds from them: the stage settings (``settings_from``), the run config (``resolve_config`` of
  ``--profile`` and ``--set``), the study (``--settings``). An ``mlflow run`` line's ``-e`` must be an
  MLproject entry point and each ``-P`` one of its parameters, checked as the command's option.
  Line continuations (``\\``) are joined, comments dropped, and a command ends at ``|``, ``&&``,
  ``;`` or a redirection. An inline span of the program alone (``transfer-core``, ``mlflow run .``) names
  the tool and is not checked. **One placeholder:** the word ``...`` stands for "options as above" and is
  dropped; everything else is written with concrete values.
- **`mlflow run` lines, run.** Every ``mlflow run`` line also runs for real, in steps' order, from the
  repository root in the README's shell set up into a tmp folder, its heavy values shrunk to the synthetic
  profile's: its run must land in its ``--experiment-name`` with artifacts beside the store, none in Default,
  nothing in the checkout.
- **Python snippets.** Every ```python block runs in a fresh interpreter, in the folder of a tiny
  synthetic main job laid out as ``make run`` leaves a checkout (``mlruns/mlflow.db``, ``.cache/``,
  ``../shared/data``). A block right after ``<!-- needs: REASON -->`` (a GPU, a cluster, a server)
  is skipped with that reason; tests/workflow/test_main_job.py runs the serving client itself
  against a scoring server it starts.
- **Make targets.** Every ``make TARGET`` they show is a target of the Makefile.
- **Links.** Every relative link and picture points at a file that exists, and an ``#anchor`` into
  a Markdown file at one of its headings.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import yaml

from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.attribution.settings import AttributionSettings
from transfer_core.cli import main as cli
from transfer_core.cli.commands import overrides_of
from transfer_core.cli.mlproject import ENTRY_POINTS, parameters
from transfer_core.cli.options import settings_from
from transfer_core.config import resolve_config
from transfer_core.counterfactual.settings import CounterfactualPlan, EvidenceRule
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.sweep.settings import SweepSettings
from transfer_core.tune.settings import TuneSettings
from transfer_core.workflow.settings import PipelineSettings

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # docs/results/ is written by `publish`
PRESETS = sorted((REPO / "transfer_core" / "presets").glob("*/*.toml"))
PROGRAMS = (("transfer-core",), (".venv/bin/transfer-core",), ("python", "-m", "transfer_core.cli"),
            (".venv/bin/python", "-m", "transfer_core.cli"))
PLACEHOLDER = "..."
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}
ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
CONFIG_COMMANDS = {"subset-run", "prepare", "tune", "sweep", "attribute", "counterfactual"}  # they build a RunConfig
COMMAND_SETTINGS = {"tune": (TuneSettings,), "sweep": (SweepSettings, ExecutorSettings), "analyze": (AnalysisSettings,),
                    "attribute": (AttributionSettings,),
                    "counterfactual": (CounterfactualPlan, ExecutorSettings, EvidenceRule), "register": (EvidenceRule,)}


# ---- reading the pages ----------------------------------------------------------------------------

FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)


def fenced_blocks(text: str):
    """``(language, body, needs, line)`` of every fenced block; ``needs`` from ``<!-- needs: ... -->`` right before."""
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        needs = re.fullmatch(r"<!--\s*needs:\s*(.+?)\s*-->", before[-1].strip()) if before else None
        body = textwrap.dedent(match.group(2))  # a block inside a list item is indented
        yield match.group(1), body, needs.group(1) if needs else None, text.count("\n", 0, match.start()) + 1


def outside_fences(text: str) -> str:
    return FENCE.sub("", text)


def words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


WRAPPERS = {"time", "/usr/bin/time", "nice", "exec", "-v"}  # words that run the command after them


def commands_in(line: str):
    """Each command of a shell line (after ``VAR=value`` prefixes, ``time``, ...) as its words; a program name
    counts only where a command starts (``--app-name transfer-core`` is an argument, not a command)."""
    tokens = words(line)
    start, at_command = 0, True
    while start < len(tokens):
        token = tokens[start]
        if at_command:
            for program in PROGRAMS + (("mlflow", "run"),):
                if tuple(tokens[start:start + len(program)]) == program:
                    rest = tokens[start + len(program):]
                    end = next((i for i, t in enumerate(rest) if t in ENDS), len(rest))
                    yield program, [t for t in rest[:end] if t != PLACEHOLDER]
                    start += len(program) + end
                    break
            else:
                at_command = token in WRAPPERS or token in ENDS or re.fullmatch(r"[A-Za-z_]\w*=\S*", token)
                start += 1
        else:
            at_command = token in ENDS
            start += 1


def shell_lines(text: str):
    """``(line number, logical line)`` of every shell block, continuations joined."""
    for language, body, _, first in fenced_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        joined, at = "", first
        for number, line in enumerate(body.splitlines(), first + 1):
            if not joined:
                at = number
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            yield at, joined + line
            joined = ""


def documented_commands():
    """``(where, program, words)`` of every command line in the pages and the presets' comments."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, line in shell_lines(text):
            found += [(f"{page.relative_to(REPO)}:{number}", *c) for c in commands_in(line)]
        for span in re.findall(r"`([^`\n]+)`", outside_fences(text)):  # `transfer-core`, `mlflow run .`: names
            found += [(f"{page.relative_to(REPO)}: `{span}`", *c) for c in commands_in(span)
                      if span.split()[0] in {p[0] for p in PROGRAMS} | {"mlflow"} and c[1] not in ([], ["."])]
    for preset in PRESETS:  # a comment line that starts with a command
        for number, line in enumerate(preset.read_text().splitlines(), 1):
            text = line.strip().lstrip("#").strip()
            if line.lstrip().startswith("#") and text.split(" ", 1)[0] in {p[0] for p in PROGRAMS}:
                found += [(f"{preset.relative_to(REPO)}:{number}", *c) for c in commands_in(text)]
    return found


# ---- checking one command -------------------------------------------------------------------------

def as_transfer_core(program, args: list[str]) -> list[str]:
    """The ``transfer-core`` arguments a line means: itself, or what MLproject runs for an ``mlflow run`` line."""
    if program != ("mlflow", "run"):
        return args
    entry, params, rest = "main", [], list(args)
    assert rest and rest.pop(0) == ".", f"mlflow run of something other than this project (.): {args}"
    while rest:
        word = rest.pop(0)
        if word in ("-e", "--entry-point"):
            entry = rest.pop(0)
        elif word in ("-P", "--param-list"):
            params.append(rest.pop(0))
        elif word in ("--env-manager", "--experiment-name", "--experiment-id", "--run-name"):
            value = rest.pop(0)
            assert word != "--env-manager" or value == "local", "conda is not installed here: --env-manager local"
        else:
            raise AssertionError(f"unexpected mlflow run argument {word!r}")
    assert "--env-manager" in args, "mlflow run picks conda without --env-manager local"
    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert entry in project, f"MLproject has no entry point {entry!r}; it has {', '.join(project)}"
    command = cli.commands[ENTRY_POINTS[entry]]
    options = {p.name: p for p in parameters(command)}
    out = [ENTRY_POINTS[entry]]
    for item in params:
        name, _, value = item.partition("=")
        assert name in options and name in project[entry]["parameters"], \
            f"entry point {entry} has no parameter {name!r}; it has {', '.join(options)}"
        out += [options[name].opts[0], value]
    return out


def check_command(args: list[str]) -> None:
    """Parse ``args`` as ``transfer-core`` would, then build what the command builds from the values."""
    assert args, "a command line names no command"
    name, rest = args[0], [a for a in args[1:] if a not in ("-h", "--help")]
    assert name in cli.commands, f"no command {name!r}; transfer-core has {', '.join(cli.commands)}"
    ctx = cli.commands[name].make_context(name, rest)
    given = {k: v for k, v in ctx.params.items() if v not in (None, ())}
    for cls in COMMAND_SETTINGS.get(name, ()):
        settings_from(cls(), dict(given))
    if name in CONFIG_COMMANDS:
        resolve_config(given.get("profile"), overrides_of(given.get("overrides"), given.get("transfer_mode"),
                                                          given.get("alpha"), given.get("sweep_seed")))
    if name == "main":  # as the command: the study, the options on top, --set added to the study's overrides
        kwargs = dict(given)
        added = list(kwargs.pop("overrides", ()))
        settings = settings_from(PipelineSettings.load(kwargs.pop("study", None)), kwargs)
        if added:
            settings.replace(overrides=",".join([*settings.overrides, *added]))


COMMANDS = documented_commands()


def test_the_pages_show_commands():
    """The extraction finds what it should: if it found nothing, the test below would check nothing."""
    pages = {where.split(":")[0] for where, _, _ in COMMANDS}
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages) and len(COMMANDS) > 40, pages
    assert any(program == ("mlflow", "run") for _, program, _ in COMMANDS)
    assert any(where.startswith("transfer_core/presets/") for where, _, _ in COMMANDS)


@pytest.mark.parametrize("where, program, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_documented_command_parses(where, program, args):
    try:
        check_command(as_transfer_core(program, args))
    except (click.ClickException, click.exceptions.Exit, ValueError, AssertionError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        pytest.fail(f"{where}: {' '.join(program + tuple(args))}\n  -> {message}")


def test_the_checker_refuses_what_would_fail():
    """A wrong command, option, value, setting, profile, config field or entry-point parameter is caught."""
    for line in ["transfer-core swep", "transfer-core sweep --n-model 3", "transfer-core sweep --n-models 0",
                 "transfer-core sweep --pack several", "transfer-core counterfactual --orders bottom,worst",
                 "transfer-core analyze --bootstrap 5", "transfer-core tune --profile fast",
                 "transfer-core tune --set pretrain.epoch=3", "transfer-core main --settings nowhere",
                 "transfer-core main --tune-trials 2", "transfer-core main --seeds 2",
                 "mlflow run . -e sweep --env-manager local -P n_model=3",
                 "mlflow run . -e sweeps --env-manager local"]:
        (program, args), = commands_in(line)
        with pytest.raises((click.ClickException, ValueError, AssertionError)):
            check_command(as_transfer_core(program, args))
    assert list(commands_in("PATH=x /usr/bin/time transfer-core sweep ... --workers 2 > log && echo ok # done")) == \
        [(("transfer-core",), ["sweep", "--workers", "2"])]


MAKE_TARGETS = [(page, target) for page in PAGES for _, line in shell_lines(page.read_text())
                for target in re.findall(r"^\s*make\s+([\w-]+)", line)] + \
               [(page, target) for page in PAGES for target in re.findall(r"`make ([\w-]+)", page.read_text())]


def test_every_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    assert {t for _, t in MAKE_TARGETS} >= {"run", "test"}
    missing = [(page.name, t) for page, t in MAKE_TARGETS if t not in targets]
    assert not missing, f"make targets the Makefile lacks: {missing}"


# ---- links ------------------------------------------------------------------------------------------

def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", outside_fences(markdown.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


LINKS = [(page, target) for page in PAGES
         for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", outside_fences(page.read_text()))
         if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p.name}->{t}" for p, t in LINKS])
def test_every_relative_link_points_at_a_file(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{page.relative_to(REPO)} links to {target}: no such heading in {file.name}"


# ---- Python snippets ----------------------------------------------------------------------------------

SNIPPETS = [(page, line, body, needs) for page in PAGES
            for language, body, needs, line in fenced_blocks(page.read_text()) if language == "python"]


@pytest.fixture(scope="session")
def checkout(tmp_path_factory):
    """A folder laid out as a checkout after ``make run``: a tiny synthetic main job's store in mlruns/mlflow.db
    (tune, sweep, analysis, counterfactual, a registered champion), its cache in .cache/, and ../shared/data."""
    from support import SHARED_DATA, store_context
    from transfer_core.workflow import run_pipeline

    top = tmp_path_factory.mktemp("docs")
    work = top / "transfer_core"
    (work / "mlruns").mkdir(parents=True)
    (top / "shared").mkdir()
    if SHARED_DATA.is_dir():
        (top / "shared" / "data").symlink_to(SHARED_DATA)
    else:  # a data root the snippets can name; the synthetic data reads nothing from it
        (top / "shared" / "data").mkdir()
        (top / "shared" / "data" / "README").write_text("no archives here")
    # The smallest job with every step: 16 models (enough for the analysis's --min-runs 5), one tuning trial,
    # one k and the 3 seeds a champion needs; the analysis with its default settings, as the snippets ask.
    settings = PipelineSettings.load(profile="synthetic", n_models=16, ks=(1,), orders=("bottom",), total_trials=1,
                                     seeds=3, overrides=("pretrain.epochs=1", "transfer.epochs=2"), workers=1)
    old = os.getcwd()
    os.chdir(work)
    try:
        ctx = store_context(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
        run_pipeline(settings, ctx, echo=lambda line: None)
    finally:
        os.chdir(old)
    return work


def test_the_pages_show_python():
    assert len(SNIPPETS) >= 4 and any(needs is None for *_, needs in SNIPPETS)


@pytest.mark.parametrize("page, line, body, needs", SNIPPETS, ids=[f"{p.name}:{n}" for p, n, _, _ in SNIPPETS])
def test_every_python_snippet_runs(page, line, body, needs, checkout):
    if needs:
        pytest.skip(f"needs {needs}")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", body], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{page.relative_to(REPO)}:{line}\n{done.stderr[-3000:]}"


# ---- every `mlflow run` line, run for real ------------------------------------------------------------

MLFLOW_RUNS = [(where, args) for where, program, args in COMMANDS if program == ("mlflow", "run")]
# The order the steps read each other in: a step finds what it reads as "the experiment's latest/only ...".
STEP_ORDER = ("tune", "subset_run", "sweep", "analyze", "attribute", "counterfactual", "register", "main")
# What makes a line run in seconds: only the entry point's own parameters of these are set (replaced or added).
TINY = {"profile": "synthetic", "overrides": "pretrain.epochs=1,transfer.epochs=1", "n_models": "16",
        "total_trials": "1", "n_trials": "1", "min_runs": "2", "bootstrap": "20", "ensemble_models": "1",
        "proj_dim": "16", "ks": "1", "orders": "bottom", "pack": "1",
        "workers": "1", "executor": "local"}
SKIP_MLFLOW_RUNS: dict[str, str] = {}  # where -> why a line cannot run on the synthetic profile (none so far)


def mlflow_run_argv(args: list[str]) -> tuple[str, str, list[str]]:
    """``(entry point, experiment name, mlflow run arguments)`` of a documented line, its heavy values replaced by
    :data:`TINY`: the entry point, ``--env-manager`` and ``--experiment-name`` stay as printed."""
    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    rest, kept, params, entry, experiment = list(args), [], {}, "main", None
    while rest:
        word = rest.pop(0)
        if word in ("-P", "--param-list"):
            name, _, value = rest.pop(0).partition("=")
            params[name] = value
        elif word in ("-e", "--entry-point", "--env-manager", "--experiment-name", "--experiment-id", "--run-name"):
            value = rest.pop(0)
            entry = value if word in ("-e", "--entry-point") else entry
            experiment = value if word == "--experiment-name" else experiment
            kept += [word, value]
        else:
            kept.append(word)
    params.update({k: v for k, v in TINY.items() if k in project[entry]["parameters"]})
    return entry, experiment, kept + [w for k, v in params.items() for w in ("-P", f"{k}={v}")]


def checkout_files() -> set[Path]:
    """What a run could leave in the checkout: mlruns/ (its .gitkeep aside) and a stray mlflow.db."""
    return {p for p in (REPO / "mlruns").rglob("*") if p.name != ".gitkeep"} | \
        {p for p in (REPO / "mlflow.db", REPO / ".cache") if p.exists()}


def test_every_documented_mlflow_run_line_runs_into_its_experiment(tmp_path):
    """Every ``mlflow run`` line of the pages runs, in the shell the README sets up ("Every other command":
    ``.venv`` activated, so its ``bin`` first on PATH; TRANSFER_CORE_DATA, TRANSFER_CORE_CACHE and
    MLFLOW_TRACKING_URI exported, here into ``tmp_path``), from the repository root (``mlflow run .`` reads the
    MLproject there), after ``transfer-core experiment NAME`` as ``make run`` does (a store the docs assume ``make
    run`` made; MLflow would otherwise create the experiment with its artifacts under the checkout's ``mlruns/``).
    Lines run in the order the steps read each other (tune, subset_run, sweep, analyze, attribute,
    counterfactual, register, main), in page order within a step.

    Each keeps its entry point, ``--env-manager local`` and ``--experiment-name``, and the values it prints, except
    these, set wherever the entry point has the parameter so the line runs in seconds (:data:`TINY`):
    ``profile=synthetic`` (quick and cifar read CIFAR archives and train for minutes),
    ``overrides=pretrain.epochs=1,transfer.epochs=1``, ``n_models=16`` with analyze's ``min_runs=2`` (16 models
    keep and leave out each class at least twice, not the default 5 times), ``total_trials=1`` / ``n_trials=1``,
    ``bootstrap=20`` (the least the analysis takes), ``ensemble_models=1`` and ``proj_dim=16`` (attribute),
    ``ks=1`` and ``orders=bottom`` (two grid points, k = 0 and 1, times the 3 seeds a champion needs at least:
    ``seeds`` and ``min_seeds`` stay), ``pack=1``, ``workers=1`` and ``executor=local`` (2 cores; no Ray).

    Each line must exit 0; the run MLflow made is in the experiment its ``--experiment-name`` names, with its
    artifacts beside the store (``<store folder>/artifacts/``); Default holds no runs at the end, and the checkout
    gets no new ``mlruns/`` content, ``mlflow.db`` or ``.cache``."""
    from mlflow.tracking import MlflowClient
    from support import SHARED_DATA

    assert MLFLOW_RUNS, "the pages show no `mlflow run` line: the extractor or the pages changed"
    store = tmp_path / "mlruns"
    store.mkdir()
    data = tmp_path / "shared" / "data"
    data.parent.mkdir()
    if SHARED_DATA.is_dir():
        data.symlink_to(SHARED_DATA)
    else:  # the synthetic profile reads nothing from it
        data.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # `source activate`
               VIRTUAL_ENV=str(Path(sys.executable).parent.parent), OMP_NUM_THREADS="1",
               TRANSFER_CORE_DATA=str(data), TRANSFER_CORE_CACHE=str(tmp_path / ".cache"),
               MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    mlflow_bin = shutil.which("mlflow", path=env["PATH"])
    assert mlflow_bin, "no mlflow on the activated PATH"
    lines = sorted((mlflow_run_argv(args) + (where,) for where, args in MLFLOW_RUNS
                    if where not in SKIP_MLFLOW_RUNS), key=lambda line: STEP_ORDER.index(line[0]))
    before = checkout_files()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    beside = (store / "artifacts").resolve().as_uri()
    try:
        for name in sorted({experiment for _, experiment, _, _ in lines}):
            assert name and name != "Default", "an mlflow run line without --experiment-name lands in Default"
            made = subprocess.run(["transfer-core", "experiment", name], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert made.returncode == 0, made.stderr[-2000:]
        ran = []
        for entry, experiment, argv, where in lines:
            done = subprocess.run([mlflow_bin, "run", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=600)
            shown = f"{where} as `mlflow run {' '.join(argv)}`"
            assert done.returncode == 0, f"{shown} failed:\n{done.stderr[-4000:]}"
            run_id = re.findall(r"=== Run \(ID '([0-9a-f]+)'\) succeeded ===", done.stderr)
            assert len(run_id) == 1, f"{shown}: no run id in its output\n{done.stderr[-2000:]}"
            run = client.get_run(run_id[0])
            assert client.get_experiment(run.info.experiment_id).name == experiment, shown
            assert run.info.artifact_uri.startswith(beside), (shown, run.info.artifact_uri)
            assert run.data.tags.get("mlflow.project.entryPoint") == entry, shown
            ran.append(where)
        assert client.search_runs(["0"]) == [], "a line left a run in Default"
        every = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id],
                                                                                   max_results=1000)]
        assert every and all(r.info.artifact_uri.startswith(beside) for r in every)
        assert checkout_files() == before, f"the lines wrote into the checkout: {checkout_files() - before}"
    finally:
        for path in sorted(checkout_files() - before, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
