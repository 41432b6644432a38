"""Settings: each stage's options as the fields of one frozen dataclass, validated once.

A field is declared once, with its default, its help text and its checks::

    @dataclass(frozen=True)
    class SweepSettings(Settings):
        n_models: int = setting(40, "Models (subset runs) the sweep should have.", min=2)

and everything else is read from it: the ``transfer-core`` options (``--n-models``, its type,
range, choices, help and shown default), the MLproject parameters (generated from the
commands), and the tables of a study file (TOML). A pipeline's settings are a composition of
the stages' (:func:`component`), not a second declaration.

Values may arrive as strings (the command line, MLproject, a study file): lists are parsed
by :func:`parse_list`, the one parser of comma-separated lists, and scalars by their type.
A bad value is a :class:`~transfer_core.config.ConfigError` naming the setting and the fix.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable

from transfer_core.config import ConfigError, parse_value


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            above: float | None = None, choices: tuple | Callable[[], tuple] | None = None,
            parse: Callable[[Any], Any] | None = None, flag: str | None = None, metavar: str | None = None) -> Any:
    """A settings field: ``default``, its ``help`` text, and its checks.

    ``min``/``max`` bound numbers (inclusive; ``above`` is an exclusive lower bound); ``choices``
    lists the allowed values (or a function returning them, for a registry filled later);
    ``parse`` converts a given value (a string from the command line) instead of the field's type;
    ``flag`` spells the command-line option when it is not ``--<field-name>``, ``metavar`` its value.
    """
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices, "parse": parse, "flag": flag,
            "metavar": metavar}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def component(default: "Settings", help: str, *, skip: tuple[str, ...] = ()) -> Any:
    """A field holding another stage's settings (a nested table in a study file). Its fields become
    the composing command's options, but for ``skip`` (settings that mean nothing there)."""
    return field(default_factory=lambda: default, metadata={"help": help, "component": True, "skip": skip})


@dataclass(frozen=True)
class Spec:
    """One settings field as the command line and study files see it."""

    name: str
    kind: type  # int, float, str or bool; for a list, the type of its items
    is_list: bool
    optional: bool  # None allowed (= unset)
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    above: float | None = None
    allowed: tuple | Callable[[], tuple] | None = None  # the choices, or a function of a registry that returns them
    parse: Callable[[Any], Any] | None = None
    flag: str | None = None
    metavar: str | None = None

    @property
    def choices(self) -> tuple | None:
        """The allowed values now (a registry's names are read when asked: entries added later count)."""
        return tuple(self.allowed()) if callable(self.allowed) else self.allowed

    @property
    def option(self) -> str:
        return "--" + (self.flag or self.name.replace("_", "-"))


@lru_cache(maxsize=None)
def specs(cls: type) -> tuple[Spec, ...]:
    """The :class:`Spec` of every (non-component) field of settings class ``cls``, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.metadata.get("component"):
            continue
        kind, is_list, optional = _unpack(hints[f.name])
        out.append(Spec(f.name, kind, is_list, optional, _default(f), f.metadata.get("help", ""),
                        f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("above"),
                        f.metadata.get("choices"), f.metadata.get("parse"), f.metadata.get("flag"),
                        f.metadata.get("metavar")))
    return tuple(out)


def components(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in fields(cls) if f.metadata.get("component"))


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _unpack(hint) -> tuple[type, bool, bool]:
    """``int`` -> (int, False, False); ``tuple[str, ...]`` -> (str, True, False); ``int | None`` -> (int, False, True);
    ``int | str`` (a number or a keyword, parsed by the field's ``parse``) -> (str, False, False)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) == 1:
            kind, is_list, _ = _unpack(rest[0])
            return kind, is_list, optional
        return str, False, optional
    if typing.get_origin(hint) in (tuple, list):
        return args[0], True, False
    return hint, False, False


def parse_list(value: Any, kind: type, name: str) -> tuple:
    """The one parser of lists: ``"0,5,10"``, ``[0, 5, 10]`` or ``(0, 5, 10)`` -> ``(0, 5, 10)``.

    Items are converted to ``kind``; a bad item is a ConfigError naming ``name``.
    """
    items = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(parse_value(name, item, kind) for item in items)
    except ConfigError:
        raise ConfigError(f"{name} must be a comma-separated list of {_kind_name(kind)}s, got {value!r}") from None


def _kind_name(kind: type) -> str:
    return {int: "integer", float: "number", str: "word", bool: "true/false value"}.get(kind, kind.__name__)


def coerce(spec: Spec, value: Any) -> Any:
    """``value`` (possibly a string) as the field's type, checked against its bounds and choices."""
    if value is None and spec.optional:
        return None
    if spec.parse is not None:
        value = spec.parse(value)
    elif spec.is_list:
        value = parse_list(value, spec.kind, spec.name)
    elif value is None:
        raise ConfigError(f"{spec.name} must be set (no default); e.g. {spec.option} {spec.default!r}")
    else:
        value = parse_value(spec.name, value, spec.kind)
    for item in value if spec.is_list else (value,):
        _check_one(spec, item)
    return value


def _check_one(spec: Spec, value: Any) -> None:
    allowed = spec.choices
    if allowed is not None and value not in allowed:
        choices = ", ".join(map(str, allowed))
        if spec.is_list:
            raise ConfigError(f"{spec.name} has an unknown value {value!r}; choose from {choices}")
        raise ConfigError(f"unknown {spec.name} {value!r}; choose one of {choices}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if spec.min is not None and value < spec.min:
        raise ConfigError(f"{spec.name} must be at least {spec.min}, got {value}")
    if spec.max is not None and value > spec.max:
        raise ConfigError(f"{spec.name} must be at most {spec.max}, got {value}")
    if spec.above is not None and value <= spec.above:
        raise ConfigError(f"{spec.name} must be above {spec.above}, got {value}")


class Settings:
    """Base of every settings dataclass: converts and checks each field at construction.

    Subclasses are ``@dataclass(frozen=True)`` with :func:`setting` fields and may add a
    :meth:`check` for rules that involve several fields.
    """

    def __post_init__(self):
        for spec in specs(type(self)):
            object.__setattr__(self, spec.name, coerce(spec, getattr(self, spec.name)))
        for f in components(type(self)):
            value = getattr(self, f.name)
            cls = typing.get_type_hints(type(self))[f.name]
            if isinstance(value, dict):  # a nested table of a study file: on top of the field's own default
                object.__setattr__(self, f.name, from_table(cls, value, f.name, base=f.default_factory()))
            elif not isinstance(value, cls):
                raise ConfigError(f"{f.name} must be a {cls.__name__} or a table of its fields, got {value!r}")
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ConfigError with the fix."""

    def replace(self, **values) -> "Settings":
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        """Every field (components as nested dicts): what a run records and a study file holds."""
        return dataclasses.asdict(self)


def from_table(cls: type, table: dict[str, Any], where: str = "settings", base: Any = None) -> Any:
    """Settings ``cls`` from a (nested) table, e.g. a study file's, on top of ``base`` (default: the class's
    defaults); an unknown key is refused, naming the valid ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}; valid fields are "
                          f"{', '.join(sorted(known))}")
    return cls(**table) if base is None else _merge(base, table)


def flat_specs(settings: Settings) -> list[tuple[tuple[str, ...], Spec, Any]]:
    """Every option of ``settings`` and its components, flattened: ``(path, spec, current value)``.

    ``path`` is the component chain (``("sweep", "n_models")``); components' ``skip`` fields are
    left out. Names must be unique across the whole composition (the command line is flat).
    """
    out, seen = [], {}
    for spec in specs(type(settings)):
        out.append(((spec.name,), spec, getattr(settings, spec.name)))
    for f in components(type(settings)):
        for path, spec, value in flat_specs(getattr(settings, f.name)):
            if spec.name not in f.metadata.get("skip", ()):
                out.append(((f.name, *path), spec, value))
    for path, spec, _ in out:
        if spec.name in seen:
            raise TypeError(f"setting {spec.name!r} appears twice ({'.'.join(seen[spec.name])} and {'.'.join(path)}); "
                            "rename one")
        seen[spec.name] = path
    return out


def with_flat(settings: Settings, values: dict[str, Any]) -> Any:
    """``settings`` with flat ``{name: value}`` (as the command line gives them) routed into their components."""
    by_name = {spec.name: path for path, spec, _ in flat_specs(settings)}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        *parents, leaf = by_name[name]
        nested_at = nested
        for p in parents:
            nested_at = nested_at.setdefault(p, {})
        nested_at[leaf] = value
    return _merge(settings, nested)


def _merge(settings: Settings, nested: dict[str, Any]) -> Any:
    """``settings`` with ``nested`` values on top; a nested dict updates that component (checked the same way)."""
    changes = {k: (from_table(type(getattr(settings, k)), v, k, base=getattr(settings, k)) if isinstance(v, dict)
                   else v) for k, v in nested.items()}
    return dataclasses.replace(settings, **changes)
