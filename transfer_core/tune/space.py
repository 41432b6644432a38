"""The search space of the transfer recipe: which hyperparameters Optuna tunes, and over what.

A space maps a dotted config field (``transfer.lr``) to a :class:`Range` (low, high, log)
or to :class:`Choices`. Short names (``lr``) are accepted everywhere and mean the
``transfer.`` field. Values Optuna suggests are plain numbers that become config
overrides, so every run that uses them logs them as ordinary params.

On the command line a space is written ``lr=0.001:1:log;epochs=2:30;batch_size=64,128``:
``LOW:HIGH`` is a range (``:log`` samples it on a log scale), a comma list is a choice.
"""
from __future__ import annotations


from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from transfer_core.config import ConfigError, RunConfig, TRANSFER_MODES, parse_value, with_overrides

# The transfer fields that may be tuned, and their types.
TUNABLE: dict[str, type] = {
    "transfer.lr": float,
    "transfer.weight_decay": float,
    "transfer.epochs": int,
    "transfer.label_smoothing": float,
    "transfer.batch_size": int,
}


@dataclass(frozen=True)
class Range:
    """A numeric interval; ``log`` samples it uniformly in log space (needs ``low > 0``)."""

    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"{'log' if self.log else ''}range({self.low!r}, {self.high!r})"


@dataclass(frozen=True)
class Choices:
    """A finite set of values, tried as categories."""

    values: tuple

    def describe(self) -> str:
        return f"choices({', '.join(repr(v) for v in self.values)})"


Domain = Union[Range, Choices]


@dataclass(frozen=True)
class SearchSpace:
    """Dotted field name -> domain. Build with :meth:`of` or :meth:`parse`, then :meth:`validate`."""

    params: Mapping[str, Domain] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> "SearchSpace":
        """From ``{"lr": (1e-3, 1.0, True), "batch_size": [64, 128]}``: tuple = range, list = choices."""
        params: dict[str, Domain] = {}
        for name, domain in spec.items():
            if isinstance(domain, (Range, Choices)):
                params[full_name(name)] = domain
            elif isinstance(domain, tuple) and len(domain) in (2, 3):
                params[full_name(name)] = Range(*domain)
            elif isinstance(domain, (list, set, frozenset)):
                params[full_name(name)] = Choices(tuple(domain))
            else:
                raise ConfigError(f"search domain of {name!r} must be (low, high[, log]) or a list of "
                                  f"choices, got {domain!r}")
        return cls(params)

    @classmethod
    def parse(cls, specs: str | list[str] | tuple[str, ...]) -> "SearchSpace":
        """Parse ``"lr=0.001:1:log;epochs=2:30;batch_size=64,128"`` (or several such strings)."""
        items = [specs] if isinstance(specs, str) else list(specs)
        entries = [e.strip() for item in items for e in item.split(";") if e.strip()]
        params: dict[str, Domain] = {}
        for entry in entries:
            if "=" not in entry:
                raise ConfigError(f"search-space entry {entry!r} is not NAME=LOW:HIGH[:log] or "
                                  "NAME=A,B,C; e.g. lr=0.001:1:log")
            name, text = (s.strip() for s in entry.split("=", 1))
            name = full_name(name)
            kind = TUNABLE[name]
            if ":" in text:
                parts = [p.strip() for p in text.split(":")]
                log = len(parts) == 3 and parts[2].lower() == "log"
                if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
                    raise ConfigError(f"range {text!r} of {name} is not LOW:HIGH or LOW:HIGH:log")
                params[name] = Range(parse_value(name, parts[0], kind), parse_value(name, parts[1], kind), log)
            else:
                values = [parse_value(name, v, kind) for v in text.split(",") if v.strip()]
                params[name] = Choices(tuple(values))
        return cls(params)

    @classmethod
    def default(cls, mode: str) -> "SearchSpace":
        """What ``tune`` searches unless told otherwise. Full fine-tuning also tunes batch size."""
        if mode not in TRANSFER_MODES:
            raise ConfigError(f"unknown transfer mode {mode!r}; choose one of {', '.join(TRANSFER_MODES)}")
        params: dict[str, Domain] = {
            # Fixed mode trains a linear head on standardised features: large steps are safe.
            "transfer.lr": Range(1e-3, 2.0, log=True) if mode == "fixed" else Range(1e-3, 0.5, log=True),
            "transfer.weight_decay": Range(1e-6, 1e-2, log=True),
            "transfer.epochs": Range(2, 40) if mode == "fixed" else Range(2, 20),
            "transfer.label_smoothing": Range(0.0, 0.3),
        }
        if mode == "full":
            params["transfer.batch_size"] = Choices((64, 128, 256, 512))
        return cls(params)

    def validate(self, base: RunConfig | None = None) -> "SearchSpace":
        """Check names, bounds and values once; returns the space with dotted names.

        Every bound and choice must give a valid config when applied to ``base``.
        """
        if not self.params:
            raise ConfigError("the search space is empty; give at least one hyperparameter to tune, "
                              "e.g. --space 'lr=0.001:1:log'")
        base = base or RunConfig()
        space = SearchSpace({full_name(name): domain for name, domain in self.params.items()})
        for name, domain in space.params.items():
            kind = TUNABLE[name]
            if isinstance(domain, Range):
                values = [domain.low, domain.high]
                if domain.low > domain.high:
                    raise ConfigError(f"the range of {name} has its lower bound {domain.low!r} above its "
                                      f"upper bound {domain.high!r}; swap them")
                if domain.log and domain.low <= 0:
                    raise ConfigError(f"the log range of {name} starts at {domain.low!r}; a log range needs "
                                      "a positive lower bound, e.g. 1e-6")
                if kind is int and not all(float(v).is_integer() for v in values):
                    raise ConfigError(f"{name} is an integer; give integer bounds, got "
                                      f"{domain.low!r}:{domain.high!r}")
            elif isinstance(domain, Choices):
                values = list(domain.values)
                if not values:
                    raise ConfigError(f"the choices of {name} are empty; list at least one value")
            else:
                raise ConfigError(f"search domain of {name} must be a Range or Choices, got {domain!r}")
            for value in values:
                try:
                    with_overrides(base, {name: value})
                except ConfigError as exc:
                    raise ConfigError(f"the search space of {name} includes {value!r}, which is invalid: "
                                      f"{exc}") from None
        return space

    def suggest(self, trial) -> dict[str, Any]:
        """Draw one value per hyperparameter from an Optuna trial; keys are dotted field names."""
        chosen: dict[str, Any] = {}
        for name, domain in self.params.items():
            if isinstance(domain, Choices):
                chosen[name] = trial.suggest_categorical(name, list(domain.values))
            elif TUNABLE[name] is int:
                chosen[name] = trial.suggest_int(name, int(domain.low), int(domain.high), log=domain.log)
            else:
                chosen[name] = trial.suggest_float(name, float(domain.low), float(domain.high), log=domain.log)
        return chosen

    def describe(self) -> dict[str, str]:
        """``{"space.transfer.lr": "logrange(0.001, 2.0)", ...}``: the space as MLflow params."""
        return {f"space.{name}": domain.describe() for name, domain in self.params.items()}


def full_name(name: str) -> str:
    """``lr`` or ``transfer.lr`` -> ``transfer.lr``; unknown names raise a ConfigError."""
    name = name.strip()
    dotted = name if name.startswith("transfer.") else f"transfer.{name}"
    if dotted not in TUNABLE:
        short = ", ".join(n.split(".", 1)[1] for n in TUNABLE)
        raise ConfigError(f"unknown hyperparameter {name!r}; tunable are: {short}")
    return dotted
