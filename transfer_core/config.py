"""Typed experiment configuration, validated once.

A run is fully described by a :class:`RunConfig`: which data, how the source model is
pretrained, how it is transferred, and how its class subset is drawn. Named profiles ship
with the package (``transfer_core/presets/profiles/<name>.toml``, also reachable as
``experiments/profiles`` in a checkout); any field can be overridden with a dotted
``section.field=value`` string (``pretrain.epochs=4``), which is how the CLI, MLflow
params and Optuna values all reach the config as plain strings.

Every command turns its inputs into a config the same way, :func:`resolve_config`: a base (a
profile, or the config a logged run was trained with), then overrides, then a tuned recipe;
it returns the config and a :class:`Provenance` record that the step logs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # package data: profiles and studies (TOML)
PROFILE_DIR = PRESETS_DIR / "profiles"
DEFAULT_PROFILE = "quick"
ARCHS = ("resnet_small", "resnet_small_grid", "resnet18")
SOURCE_STORES = ("memory", "jpeg", "raw")  # raw: a fixed-resolution uint8 memory map (64 px and below)
TRANSFER_MODES = ("fixed", "full")
TOP_LEVEL_SECTION = "subset"  # how alpha and sweep_seed are spelled as params: subset.alpha


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the problem and the fix."""


# Dataset specs by name: what kind of data each is. ``imagefolder:<path>`` names a tree on disk.
DATASETS = {
    "cifar10": "cifar", "cifar100": "cifar",  # an archive or tree under the data root, else torchvision downloads
    "synthetic-source": "synthetic", "synthetic-source-valleak": "synthetic",  # generated, with planted classes
    "synthetic-target": "synthetic",  # generated; ships its own validation split
}
IMAGEFOLDER = "imagefolder"


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec (``data.source`` / ``data.target``): the one parser of specs.

    ``kind`` is ``cifar``, ``synthetic`` or ``imagefolder``; ``name`` the spec as written for the
    named ones (``cifar100``), ``imagefolder`` for a tree; ``path`` that tree (``<path>/{train,test|val}/<class>/``).
    """

    kind: str
    name: str
    path: str = ""

    @classmethod
    def parse(cls, text: str, field_name: str = "data.source") -> "DataSpec":
        text = str(text).strip()
        if text.startswith(f"{IMAGEFOLDER}:"):
            path = text.split(":", 1)[1].strip()
            if not path:
                raise ConfigError(f"{field_name}={text!r} names no folder; write {IMAGEFOLDER}:/path/to/tree")
            return cls(IMAGEFOLDER, IMAGEFOLDER, path)
        if text in DATASETS:
            return cls(DATASETS[text], text)
        raise ConfigError(f"unknown dataset {text!r} in {field_name}; use {', '.join(DATASETS)} or "
                          f"{IMAGEFOLDER}:<path>")

    @property
    def has_own_validation(self) -> bool:
        """Whether the dataset ships a validation split (others carve one from train)."""
        return self.name == "synthetic-target"


@dataclass(frozen=True)
class DataConfig:
    source: str = "cifar100"  # dataset spec: cifar10 | cifar100 | imagefolder:<path> | synthetic
    target: str = "cifar10"
    resolution: int = 16  # images are resized once, at decode time, to this many pixels
    source_images_per_class: int = 100  # 0 keeps every source image
    target_train_images: int = 10000  # taken from the target train split (train + val); 0 = all
    val_fraction: float = 0.1  # share of those held out as the validation split (targets without their own)
    split_seed: int = 0  # fixes the target train/val split, the source image sample (and a streamed source's order)
    source_store: str = "memory"  # memory: decoded once into a tensor; jpeg | raw: streamed from a prepared copy
    target_resolution: int = 0  # the target's pixels; 0: data.resolution


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = "resnet_small"
    width: int = 16  # channels of the first stage; stages are width, 2*width, 4*width
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.2  # peak learning rate of the triangular schedule
    peak_epoch: float = 2.0  # the schedule rises linearly to lr here, then falls to zero
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class TransferConfig:
    mode: str = "fixed"  # fixed: frozen backbone (BatchNorm in eval mode) + linear head; full: all weights train
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    alpha: float = 0.5  # share of the source classes each model keeps
    sweep_seed: int = 0  # masks are a pure function of (sweep_seed, index)

    def __post_init__(self):
        """Validate once, at construction: every RunConfig that exists is a valid one."""
        d, p, t = self.data, self.pretrain, self.transfer
        _check(0 < self.alpha <= 1, f"alpha must be in (0, 1], got {self.alpha}; use e.g. alpha=0.5")
        _check(d.resolution >= 8, f"data.resolution must be at least 8 pixels, got {d.resolution}")
        _check(d.source_images_per_class >= 0, "data.source_images_per_class must be >= 0 (0 keeps all)")
        _check(d.target_train_images >= 0, "data.target_train_images must be >= 0 (0 keeps all)")
        _check(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
        _check(d.source_store in SOURCE_STORES,
               f"unknown data.source_store {d.source_store!r}; choose one of {', '.join(SOURCE_STORES)}")
        source = DataSpec.parse(d.source, "data.source")
        DataSpec.parse(d.target, "data.target")
        _check(d.source_store == "memory" or source.kind == IMAGEFOLDER,
               f"data.source_store={d.source_store} streams an image folder from disk, but data.source is "
               f"{d.source!r}; set data.source=imagefolder:/path or data.source_store=memory")
        _check(d.source_store != "raw" or d.resolution <= 64,
               f"data.source_store=raw keeps pixels at data.resolution, at most 64 px, got {d.resolution}; "
               "use data.source_store=jpeg above 64 px")
        _check(d.target_resolution == 0 or d.target_resolution >= 8,
               f"data.target_resolution must be 0 (= data.resolution) or at least 8 pixels, got {d.target_resolution}")
        _check(p.arch in ARCHS, f"unknown pretrain.arch {p.arch!r}; choose one of {', '.join(ARCHS)}")
        _check(t.mode in TRANSFER_MODES,
               f"unknown transfer mode {t.mode!r}; choose one of {', '.join(TRANSFER_MODES)}")
        for name, section in (("pretrain", p), ("transfer", t)):
            _check(section.epochs >= 1, f"{name}.epochs must be a positive integer, got {section.epochs}")
            _check(section.batch_size >= 1, f"{name}.batch_size must be a positive integer")
            _check(section.lr > 0, f"{name}.lr must be positive, got {section.lr}")
            _check(section.weight_decay >= 0, f"{name}.weight_decay must be >= 0")
            _check(0 <= section.label_smoothing < 1, f"{name}.label_smoothing must be in [0, 1)")
        _check(p.width >= 1, "pretrain.width must be a positive integer")
        _check(0 <= p.peak_epoch <= p.epochs, "pretrain.peak_epoch must lie between 0 and pretrain.epochs")

    def to_params(self) -> dict[str, str]:
        """Flat ``{"section.field": str(value)}``: the one place values become MLflow params."""
        return {key: _to_str(value) for key, value in flatten(self).items()}

    def config_hash(self, *exclude: str) -> str:
        """Short, stable hash of every field except the dotted names in ``exclude``."""
        flat = {k: v for k, v in self.to_params().items() if k not in exclude}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _to_str(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def flatten(config: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for sub in fields(value):
                flat[f"{f.name}.{sub.name}"] = getattr(value, sub.name)
        else:  # top-level fields are params "subset.<name>": `mlflow run -P alpha=` owns "alpha"
            flat[f"{TOP_LEVEL_SECTION}.{f.name}"] = value
    return flat


def _field_types(config: RunConfig) -> dict[str, type]:
    return {key: type(value) for key, value in flatten(config).items()}


def parse_value(key: str, raw: Any, kind: type) -> Any:
    """Convert ``raw`` (often a string from the CLI or MLflow) to ``kind``, or explain why not."""
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a ' + kind.__name__}, "
                          f"got {text!r}") from None
    return text


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``config`` with dotted overrides applied, e.g. ``{"pretrain.epochs": "4"}``."""
    types = _field_types(config)
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, raw in overrides.items():
        if "." not in key:  # "alpha" is short for "subset.alpha"
            key = f"{TOP_LEVEL_SECTION}.{key}"
        if key not in types:
            raise ConfigError(f"unknown config field {key!r}; valid fields are: {', '.join(sorted(types))}")
        value = parse_value(key, raw, types[key])
        section, name = key.split(".", 1)
        if section == TOP_LEVEL_SECTION:
            top[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    for section, values in sections.items():
        top[section] = replace(getattr(config, section), **values)
    return replace(config, **top)


def parse_overrides(items: list[str] | tuple[str, ...] | str) -> dict[str, str]:
    """Parse ``["a.b=1", "c=2"]`` or ``"a.b=1,c=2"`` into a dict."""
    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    parsed = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value, "
                              "e.g. pretrain.epochs=4")
        key, value = item.split("=", 1)
        parsed[key.strip()] = value.strip()
    return parsed


def named_or_path(name: str, folder: Path, what: str) -> Path:
    """``folder/<name>.toml`` for a name, or ``name`` itself when it is a path to a .toml file."""
    path = Path(name) if name.endswith(".toml") else folder / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
        raise ConfigError(f"unknown {what} {name!r}; choose one of {known} or give a path to a .toml file")
    return path


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name: str) -> RunConfig:
    """Load a named profile (``presets/profiles/<name>.toml``) or a path to a .toml file into a RunConfig."""
    path = named_or_path(name, PROFILE_DIR, "profile")
    with open(path, "rb") as fh:
        table = tomllib.load(fh)
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            overrides.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            overrides[key] = value
    return with_overrides(RunConfig(), overrides)


def build_config(profile: str = DEFAULT_PROFILE, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Profile + overrides (validated, as every RunConfig): :func:`resolve_config` without the provenance."""
    return resolve_config(profile, overrides)[0]


@dataclass(frozen=True)
class Provenance:
    """Where a resolved config came from; every step logs it (tag ``config_provenance``).

    ``base``: ``profile:<name or path>`` or ``run:<run id>`` (the config a logged run was trained
    with); ``overrides``: the dotted fields given on top (``--set`` and options such as
    ``--transfer-mode``); ``tune_run_id`` and ``recipe``: the tuned transfer recipe applied last.
    """

    base: str
    overrides: dict = field(default_factory=dict)
    tune_run_id: str = ""
    recipe: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def resolve_config(profile: str | None = None, overrides: dict[str, Any] | None = None, *,
                   base: RunConfig | None = None, base_run_id: str | None = None,
                   recipe: dict[str, Any] | None = None,
                   tune_run_id: str | None = None) -> tuple[RunConfig, "Provenance"]:
    """The one way a command builds its config: base, then ``overrides``, then the tuned ``recipe``.

    The base is ``base`` (the config of run ``base_run_id``, e.g. the analysed sweep's) when
    given, else ``profile`` (default :data:`DEFAULT_PROFILE`). The recipe (a tune run's best
    values, dotted fields) is applied last, so it wins over overrides of the same transfer field.
    Validated once, as every RunConfig; returns the config and its :class:`Provenance`.
    """
    overrides = {k: str(v) for k, v in (overrides or {}).items()}
    recipe = {k: str(v) for k, v in (recipe or {}).items()}
    if base is not None:
        config, origin = base, f"run:{base_run_id or '?'}"
    else:
        config, origin = load_profile(profile or DEFAULT_PROFILE), f"profile:{profile or DEFAULT_PROFILE}"
    config = with_overrides(with_overrides(config, overrides), recipe)
    return config, Provenance(origin, overrides, tune_run_id or "", recipe)


def from_params(params: dict[str, str]) -> RunConfig:
    """Rebuild a RunConfig from the params an MLflow run logged (unknown keys ignored)."""
    known = _field_types(RunConfig())
    return with_overrides(RunConfig(), {k: v for k, v in params.items() if k in known})
