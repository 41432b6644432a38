"""The command line's parameter types, help texts, and MLproject's rendering of every entry point."""
from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest

from transfer_core.analysis import AnalysisOptions
from transfer_core.cli import main
from transfer_core.cli.options import Choice, FloatRange, IntRange, Text
from transfer_core.counterfactual import CounterfactualPlan
from transfer_core.counterfactual.summary import STABILITY_THRESHOLD, EvidenceRule
from transfer_core.execute import ExecutorSettings
from transfer_core.tune import TuneSettings
from transfer_core.workflow import PipelineSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind, raw, expected", [
    (IntRange(min=1), "", None), (IntRange(min=1), "  ", None), (IntRange(min=1), " 3 ", 3),
    (FloatRange(0, 1), "", None), (FloatRange(0, 1), "0.25", 0.25),
    (Choice(["a", "b"]), "", None), (Choice(["a", "b"]), "b", "b"), (Text(), "", None), (Text(), " x ", "x"),
])
def test_an_empty_string_means_not_given(kind, raw, expected):
    assert kind.convert(raw, None, None) == expected


@pytest.mark.parametrize("kind, raw", [(IntRange(min=1), "0"), (IntRange(min=1), "abc"), (IntRange(min=0), "1.5"),
                                       (FloatRange(0, 1), "2"), (Choice(["a", "b"]), "c")])
def test_bad_values_are_refused(kind, raw):
    with pytest.raises(click.BadParameter):
        kind.convert(raw, None, None)


def test_every_option_of_every_command_is_explained():
    for name, command in main.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and len(param.help) > 15, f"{name} {param.opts} has no help"


def shown_default(command: str, option: str) -> str:
    param = next(p for p in main.commands[command].params if p.name == option)
    return str(param.show_default)


@pytest.mark.parametrize("command, option, settings, field", [
    *[("main", name, PipelineSettings, name) for name in ("tune_trials", "n_models", "workers", "orders", "ks", "seeds",
                                                           "output", "bootstrap", "min_runs", "profile")],
    ("tune", "n_trials", TuneSettings, "n_trials"),
    *[("analyze", name, AnalysisOptions, name) for name in ("output", "bootstrap", "min_runs", "confidence", "seed")],
    ("counterfactual", "seeds", CounterfactualPlan, "n_seeds"),
    ("counterfactual", "min_seeds", EvidenceRule, "min_seeds"), ("register", "min_seeds", EvidenceRule, "min_seeds"),
    *[(cmd, name, ExecutorSettings, name) for cmd in ("sweep", "counterfactual")
      for name in ("executor", "workers", "ray_cpus_per_run", "ray_gpus_per_run")],
])
def test_help_shows_the_librarys_defaults(command, option, settings, field):
    """The CLI passes None for an option not given; --help must show what the library then uses."""
    value = getattr(settings.__dataclass_fields__[field], "default")
    assert shown_default(command, option) == (",".join(map(str, value)) if isinstance(value, tuple) else str(value))


def test_stability_threshold_default_matches_the_library():
    for command in ("counterfactual", "register"):
        assert shown_default(command, "stability_threshold") == str(STABILITY_THRESHOLD)


def test_counterfactual_list_defaults_match_the_plan():
    plan = CounterfactualPlan()
    assert shown_default("counterfactual", "orders") == ",".join(plan.orders)
    assert shown_default("counterfactual", "ks") == ",".join(map(str, plan.ks))


@pytest.mark.parametrize("entry", ["subset_run", "tune", "sweep", "analyze", "counterfactual", "register", "main"])
def test_mlproject_entry_points_render_commands_that_parse(entry, tmp_path):
    """`mlflow run -e ENTRY` with no -P: every parameter is unset and the command line still parses."""
    from mlflow.projects._project_spec import load_project

    spec = load_project(str(REPO)).get_entry_point(entry)
    params = {"n_models": "3"} if entry == "sweep" else {}
    command = spec.compute_command(params, str(tmp_path))
    words = shlex.split(command.split("transfer_core.cli ", 1)[1])
    ctx = main.commands[words[0]].make_context(words[0], words[1:])
    unset = [k for k, v in ctx.params.items() if v is None]
    assert "profile" in unset or entry in ("analyze", "counterfactual", "register")
    assert "experiment" in unset


@pytest.mark.parametrize("command, args, message", [
    ("register", ["--min-seeds", "2"], "Invalid value for '--min-seeds': 2 is not in the range x>=3"),
    ("register", ["--stability-threshold", "1.5"], "Invalid value for '--stability-threshold': 1.5 is not in"),
    ("counterfactual", ["--min-seeds", "two"], "Invalid value for '--min-seeds': 'two' is not a valid integer range"),
    ("counterfactual", ["--stability-threshold", "-0.1"], "Invalid value for '--stability-threshold'"),
])
def test_evidence_options_refuse_nonsense_in_one_sentence(command, args, message):
    from click.testing import CliRunner
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
