"""Experiment configuration: frozen dataclasses loaded from TOML (nanoGPT/timm style).

A config file may name a ``base = "other.toml"`` (relative to itself) whose tables it
overrides key by key, so each method file only states what differs. ``--set key=value``
overrides from the command line use dotted keys (``train.epochs=3``). The resolved config is
written into every checkpoint (``to_dict``) and can be written back as TOML (``to_toml``).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

METHODS = ("scratch", "kd", "fitnet", "attention", "activation", "gram", "crd", "combined")
FEATURE_METHODS = ("fitnet", "attention", "activation", "gram", "crd", "combined")
PROJECTIONS = ("auto", "linear", "mlp", "conv1x1", "pool_linear")
SCHEDULES = ("constant", "linear", "cosine")
LR_SCHEDULES = ("cosine", "constant")
SELECT_HEADS = ("sum", "direction", "volatility")  # what early stopping reads on validation


class ConfigError(ValueError):
    """A config value that cannot work; the message says which key and what to use."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    threads: int = 1  # torch intra-op threads per process


@dataclass(frozen=True)
class DataConfig:
    symbol: str = "BTCUSDT"
    # several symbols pooled (one set of time boundaries, balanced per symbol); when set, it
    # replaces `symbol` and `path` (bundled files of `interval` only)
    symbols: tuple[str, ...] = ()
    interval: str = "5"
    path: str = ""  # a kline CSV; empty = the bundled file for symbol/interval
    window: int = 32
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    purge: int = -1  # windows dropped at each split boundary; -1 = one window (T)
    last_bars: int = 0  # keep only the most recent N bars (0 = all): small test slices


@dataclass(frozen=True)
class ModelConfig:
    family: str = "tcn"  # "tcn" | "mlp"
    channels: tuple[int, ...] = ()  # empty = the family's default for the role
    kernel_size: int = 3
    dropout: float = -1.0  # -1 = the family's default for the role


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 5  # validation checks without improvement before stopping
    max_batches: int = 0  # per epoch, 0 = all (tests)
    eval_every: int = 0  # batches between validation checks; 0 = once per epoch
    warmup: float = 0.05  # share of all steps with a linear learning-rate warm-up
    lr_schedule: str = "cosine"  # per step, after warm-up: "cosine" (to 5 %) or "constant"
    select_head: str = "sum"  # early stopping on val log loss: "sum" (head-weighted) or a head
    balance: bool = True  # pooled data: equal windows per symbol in every epoch
    progress: bool = True
    dump_rank_weights: bool = False  # DDP check: every rank writes its final weights


@dataclass(frozen=True)
class DistillConfig:
    method: str = "scratch"
    teacher: str = ""  # teacher checkpoint, or an ensemble directory (training.nets.ensemble)
    alpha: float = 0.3
    beta: float = 0.3
    temperature: float = 4.0
    gammas: tuple[float, ...] = (0.2, 0.2)  # one per layer pair (a single value is broadcast)
    head_weights: tuple[float, ...] = (1.0, 1.0)  # task loss per head (direction, volatility)
    kd_head_weights: tuple[float, ...] = ()  # KD per head; () = head_weights
    pairs: tuple[tuple[int, int], ...] = ()  # (teacher layer, student layer); () = heuristic
    projection: str = "auto"  # head for every pair ...
    projections: tuple[str, ...] = ()  # ... or one per pair
    gamma_schedule: str = "constant"
    gamma_final: float = 0.0  # annealed γ at the last epoch, as a fraction of γ
    progressive: bool = False  # deepest pair first, shallower pairs added over epochs
    progressive_every: int = 0  # epochs between additions; 0 = spread over the run
    two_stage: bool = False  # FitNets: hint stage on the guided layers, then task + KD
    hint_epochs: int = 3
    at_p: int = 2
    crd_dim: int = 32
    crd_tau: float = 0.1
    crd_bank: int = 0  # memory-bank size (0 = in-batch negatives only)


@dataclass(frozen=True)
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists instead of tuples): JSON- and TOML-ready."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return out

    def to_toml(self) -> str:
        """TOML text that :func:`load_config` reads back to an equal config."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
            lines.append("")
        return "\n".join(lines)

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """Copy with dotted-key overrides, e.g. ``replace(**{"train.epochs": 2})``."""
        return from_dict(_merge(self.to_dict(), _nest(overrides)))


_SECTIONS = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
}


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested tables; unknown keys are errors."""
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config table(s) {sorted(unknown)}; use {sorted(_SECTIONS)}")
    parts = {name: _build(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()}
    cfg = ExperimentConfig(**parts)
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML experiment (following ``base`` chains), apply dotted overrides, validate."""
    raw = _read_with_base(Path(path), seen=())
    if overrides:
        raw = _merge(raw, _nest(overrides))
    return from_dict(raw)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` → ("train.epochs", 3); the value is parsed as a TOML value."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # bare words are strings: model.family=mlp
    return key.strip(), parsed


def validate(cfg: ExperimentConfig) -> None:
    """Fail fast with a message that says what to fix."""
    d, m, t, x = cfg.distill, cfg.model, cfg.train, cfg.data
    if d.method not in METHODS:
        raise ConfigError(f"distill.method {d.method!r} is unknown; use one of {METHODS}")
    if m.family not in ("tcn", "mlp"):
        raise ConfigError(f"model.family {m.family!r} is unknown; use 'tcn' or 'mlp'")
    for p in (d.projection, *d.projections):
        if p not in PROJECTIONS:
            raise ConfigError(f"projection {p!r} is unknown; use one of {PROJECTIONS}")
    if d.gamma_schedule not in SCHEDULES:
        raise ConfigError(f"distill.gamma_schedule {d.gamma_schedule!r}; use one of {SCHEDULES}")
    if d.method != "scratch" and not d.teacher:
        raise ConfigError(f"distill.method {d.method!r} needs distill.teacher (a checkpoint path)")
    if not 0 < x.val_fraction < 1 or not 0 < x.test_fraction < 1:
        raise ConfigError("data.val_fraction and data.test_fraction must lie in (0, 1)")
    if x.val_fraction + x.test_fraction >= 0.9:
        raise ConfigError("data.val_fraction + data.test_fraction leave too little training data")
    if t.epochs < 1 or t.batch_size < 2:
        raise ConfigError("train.epochs must be ≥ 1 and train.batch_size ≥ 2")
    if d.two_stage and d.hint_epochs >= t.epochs:
        raise ConfigError("distill.hint_epochs must be smaller than train.epochs")
    if len(d.head_weights) != 2 or (d.kd_head_weights and len(d.kd_head_weights) != 2):
        raise ConfigError(
            "distill.head_weights / kd_head_weights need 2 values (direction, volatility)"
        )
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule {t.lr_schedule!r}; use one of {LR_SCHEDULES}")
    if t.select_head not in SELECT_HEADS:
        raise ConfigError(f"train.select_head {t.select_head!r}; use one of {SELECT_HEADS}")
    if not 0.0 <= t.warmup < 1.0:
        raise ConfigError("train.warmup is a share of all steps in [0, 1)")
    if any(len(p) != 2 for p in d.pairs):
        raise ConfigError("distill.pairs must be [[teacher_layer, student_layer], ...]")


# ----------------------------------------------------------------------------- helpers


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config base cycle: {' -> '.join(map(str, (*seen, path)))}")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_with_base(path.parent / base, (*seen, path)), raw)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in [{section}]; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        kwargs[name] = _coerce(value, default, f"{section}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Match the default's type: lists become tuples (nested too), ints widen to floats."""
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(tuple(v) if isinstance(v, list | tuple) else v for v in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, str) and isinstance(value, str | int):
        return str(value)  # interval = 5 is as good as "5"
    raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
