"""The command line: options generated from the settings (one home per setting), parameter types, help texts,
and the MLproject file generated from the commands."""
from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.cli import main
from transfer_core.cli.commands import RULE_SKIP
from transfer_core.cli.mlproject import ENTRY_POINTS, FROM_ENVIRONMENT, parameters, render
from transfer_core.cli.options import Bool, Choice, FloatRange, IntRange, Text, shown
from transfer_core.counterfactual.settings import CounterfactualPlan, EvidenceRule
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.settings import flat_specs
from transfer_core.sweep.settings import SweepSettings
from transfer_core.tune.settings import TuneSettings
from transfer_core.workflow.settings import PipelineSettings

REPO = Path(__file__).resolve().parents[2]
# Which settings each command's options come from: the one home of every default, help text and choice.
COMMAND_SETTINGS = {
    "tune": [TuneSettings()],
    "sweep": [SweepSettings(), ExecutorSettings()],
    "analyze": [AnalysisSettings()],
    "counterfactual": [CounterfactualPlan(), ExecutorSettings(), EvidenceRule()],
    "register": [EvidenceRule()],
    "main": [PipelineSettings()],
}


@pytest.mark.parametrize("kind, raw, expected", [
    (IntRange(min=1), "", None), (IntRange(min=1), "  ", None), (IntRange(min=1), " 3 ", 3),
    (FloatRange(0, 1), "", None), (FloatRange(0, 1), "0.25", 0.25), (Bool(), "", None), (Bool(), "false", False),
    (Choice(["a", "b"]), "", None), (Choice(["a", "b"]), "b", "b"), (Text(), "", None), (Text(), " x ", "x"),
])
def test_an_empty_string_means_not_given(kind, raw, expected):
    assert kind.convert(raw, None, None) == expected


@pytest.mark.parametrize("kind, raw", [(IntRange(min=1), "0"), (IntRange(min=1), "abc"), (IntRange(min=0), "1.5"),
                                       (FloatRange(0, 1), "2"), (Choice(["a", "b"]), "c"), (Bool(), "maybe")])
def test_bad_values_are_refused(kind, raw):
    with pytest.raises(click.BadParameter):
        kind.convert(raw, None, None)


def test_every_option_of_every_command_is_explained():
    for name, command in main.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and len(param.help) > 15, f"{name} {param.opts} has no help"


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_every_option_is_its_settings_field_name_default_and_choices(command):
    """Each settings field is an option of the same name whose shown default is the field's value and whose
    choices are the field's; and the command has no other option of a setting's name."""
    params = {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}
    for settings in COMMAND_SETTINGS[command]:
        skip = RULE_SKIP if isinstance(settings, EvidenceRule) else ()
        for _, spec, value in flat_specs(settings):
            if spec.name in skip:
                assert spec.name not in params
                continue
            param = params[spec.name]
            assert param.opts == [spec.option] and param.help.startswith(spec.help), spec.name
            assert param.show_default == shown(value), spec.name
            assert param.default is None, spec.name  # unset: the settings' own default applies
            if spec.choices is not None and not spec.is_list:
                assert list(param.type.choices) == [str(c) for c in spec.choices], spec.name


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_options_given_reach_the_settings_converted(command):
    """Every settings option, given on the command line, arrives in the settings as the field's type."""
    from transfer_core.cli.options import settings_from
    for settings in COMMAND_SETTINGS[command]:
        for _, spec, _ in flat_specs(settings):
            low = next((b for b in (spec.min, spec.above) if b is not None), 0)
            middle = (low + (spec.max if spec.max is not None else low + 40)) / 2  # inside the field's range
            if spec.choices is not None:
                raw = str(spec.choices[-1])
            elif spec.parse is not None:
                raw = "2"  # --pack 2
            else:
                raw = {"int": str(int(middle)), "float": str(middle), "bool": "true", "str": "x"}[spec.kind.__name__]
            given = {spec.name: (raw,) if spec.is_list else raw}
            try:
                built = settings_from(settings, dict(given))
            except Exception as exc:  # a value the field refuses: only where a rule between fields says so
                assert spec.name in ("seeds", "min_seeds", "space", "overrides", "profile"), (spec.name, exc)
                continue
            path = next(p for p, s, _ in flat_specs(built) if s.name == spec.name)
            value = built
            for part in path:
                value = getattr(value, part)
            assert not isinstance(value, str) or spec.kind is str or spec.parse is not None, (spec.name, value)


def test_the_committed_mlproject_is_generated_from_the_commands():
    """MLproject = `python -m transfer_core.cli.mlproject`: every parameter is an option of its command, by name."""
    assert (REPO / "MLproject").read_text() == render(), "regenerate: python -m transfer_core.cli.mlproject > MLproject"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_mlproject_parameters_are_the_commands_options_and_parse_when_unset(entry, tmp_path):
    """`mlflow run -e ENTRY` with no -P: every parameter is "" = unset, and the command line still parses; each
    parameter is the command's option of the same name, and each settings field of the command is one."""
    from mlflow.projects._project_spec import load_project

    spec = load_project(str(REPO)).get_entry_point(entry)
    command = main.commands[ENTRY_POINTS[entry]]
    assert list(spec.parameters) == [p.name for p in parameters(command)]
    for settings in COMMAND_SETTINGS.get(ENTRY_POINTS[entry], []):
        skip = RULE_SKIP if isinstance(settings, EvidenceRule) else ()
        assert {s.name for _, s, _ in flat_specs(settings) if s.name not in skip} <= set(spec.parameters)
    words = shlex.split(spec.compute_command({}, str(tmp_path)).split("transfer_core.cli ", 1)[1])
    ctx = command.make_context(words[0], words[1:])
    flags = ("progress", "index", "log_checkpoint", "recompute", "verify") + FROM_ENVIRONMENT  # own defaults
    given = {p: v for p, v in ctx.params.items()
             if p not in flags and v is not None and not (isinstance(v, tuple) and all(x in (None, "") for x in v))}
    assert given == {}


@pytest.mark.parametrize("command, args, message", [
    ("register", ["--min-seeds", "2"], "Invalid value for '--min-seeds': 2 is not in the range x>=3"),
    ("register", ["--stability-threshold", "1.5"], "Invalid value for '--stability-threshold': 1.5 is not in"),
    ("counterfactual", ["--min-seeds", "two"], "Invalid value for '--min-seeds': 'two' is not a valid integer range"),
    ("counterfactual", ["--stability-threshold", "-0.1"], "Invalid value for '--stability-threshold'"),
    ("counterfactual", ["--orders", "best"], "orders has an unknown value 'best'; choose from bottom, top, random"),
    ("analyze", ["--estimator", "magic"], "Invalid value for '--estimator': 'magic' is not one of 'dom', 'ridge'"),
    ("main", ["--ks", "0,five"], "ks must be a comma-separated list of integers, got '0,five'"),
])
def test_settings_options_refuse_nonsense_in_one_sentence(command, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output
