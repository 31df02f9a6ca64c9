"""Settings of `python -m training report` (configs/report.toml), with a --quick variant.

Every experiment is fixed here before the run (the pre-registration): which settings run,
their teachers, controls and student methods, the seeds, the comparison families that are
Holm-corrected, and the rule that picks the committed student. Nothing in the report is
chosen by test results. `quick` shrinks data and training to a smoke test of minutes.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from training.config import DistillConfig
from training.experiments.harness import FitSettings

ALL_METHODS = ("kd", "fitnet", "attention", "activation", "gram", "crd", "combined")
POOLED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")


@dataclass(frozen=True)
class PooledSettings:
    """A: the five 5-minute symbols of Apr–Jul pooled, walk-forward by calendar time."""

    enabled: bool = True
    symbols: tuple[str, ...] = POOLED_SYMBOLS
    folds: int = 3
    test_fraction: float = 0.1
    val_fraction: float = 0.15
    train_stride: int = 1  # keep every k-th training window (overlapping windows: budget)
    val_stride: int = 1  # keep every k-th validation window (early-stopping checks: budget)
    methods: tuple[str, ...] = ALL_METHODS
    last_bars: int = 0  # per symbol; 0 = all (quick mode uses a slice)


@dataclass(frozen=True)
class CrossAssetSettings:
    """B: a teacher on the pooled Apr–Jul symbols → alts of Nov–Jan with little data."""

    enabled: bool = True
    targets: tuple[str, ...] = ("XRPUSDT", "BNBUSDT")
    period: str = "20251101"  # the bundled Nov–Jan files
    fraction: float = 0.2  # the student's share of the alt's training history (the latest)
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    methods: tuple[str, ...] = ("kd", "fitnet")  # distilled from the pooled teacher
    seeds: tuple[int, ...] = (0, 1)
    union_stride: int = 2  # teacher's data + slice control: every k-th teacher window
    min_steps: int = 0  # every fit of this setting runs at least this many steps (slices)
    last_bars: int = 0
    # issue 29's feature-distillation test, pooled over the targets: each of these methods
    # (from the pooled teacher) against KD from it, volatility head, TOST at ±margin AUC
    feature_test: tuple[str, ...] = ("attention", "fitnet")
    margin: float = 0.002


@dataclass(frozen=True)
class CrossTimeframeSettings:
    """C: teachers reading 1-minute bars → a 5-minute student, a 5-minute teacher as control."""

    enabled: bool = True
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    members: tuple[int, ...] = (0, 1)  # seeds of each teacher's ensemble
    methods: tuple[str, ...] = ("kd", "fitnet")
    seeds: tuple[int, ...] = (0, 1)
    last_bars: int = 0


@dataclass(frozen=True)
class CrossDomainSettings:
    """D: FX / equity teachers (the `backtesting` package's data) → a crypto student."""

    enabled: bool = True
    sources: tuple[str, ...] = ("EURUSD", "GOOG")
    target: str = "XRPUSDT"  # on the cross-asset setting's slice and test rows
    methods: tuple[str, ...] = ("kd",)
    seeds: tuple[int, ...] = (0, 1)
    min_steps: int = 0  # the FX / equity teachers and the slice students (small data)


@dataclass(frozen=True)
class SelectSettings:
    """Item 7: the committed student, chosen on validation only, by a rule fixed here."""

    sizes: tuple[tuple[int, ...], ...] = ((16, 16), (8,), (4,))
    method: str = "kd"  # distilled from the pooled ensemble teacher on the last fold
    head: str = "volatility"
    tolerance: float = 0.005  # a size "holds" if its val AUC ≥ the teacher's − tolerance
    name: str = "student_pooled_5m"
    # the candidates train on every k-th training window of A's last fold and the rule reads
    # every k-th validation window (0: A's own strides); the test windows are A's
    train_stride: int = 0
    val_stride: int = 0
    # the selection's fits (its teacher's members and the candidates) run their whole
    # schedule and keep their best validation check, instead of stopping after `patience`
    # checks without improvement
    whole_schedule: bool = False


@dataclass(frozen=True)
class LockedSettings:
    """The locked evaluation (issue 29): the committed student, once, on bars no choice has
    seen (every window of these alts' bundled Nov–Jan files, zero-shot), beside the linear
    control; fixed before it is looked at."""

    symbols: tuple[str, ...] = ("XRPUSDT", "BNBUSDT", "ADAUSDT")
    period: str = "20251101"
    bootstrap: int = 2000
    margin: float = 0.002  # the target: student AUC ≥ linear AUC − margin


@dataclass(frozen=True)
class ReportConfig:
    """Everything the report run needs; written into the report and the model card."""

    name: str = "default"
    out_dir: str = "reports"
    models_dir: str = "models"
    teacher_dir: str = "runs/train/teacher"  # the ensemble's members (training.nets.ensemble)
    interval: str = "5"
    family: str = "tcn"
    embargo: int = 32  # bars: one input window, on top of the 1-bar label purge
    seeds: tuple[int, ...] = (0, 1)  # students
    members: tuple[int, ...] = (0, 1, 2)  # the ensemble teacher's member seeds
    feature_member: int = 0  # the member whose features are the feature targets
    teacher_dropout: float = 0.1
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected tests
    bootstrap: int = 500
    threads: int = 1
    cka_rows: int = 500
    # issue 29's standing controls: the logistic regression in every setting, the diverse
    # teacher (logistic regression + LightGBM + the TCN members) distilled by KD in A and B,
    # and the linear student in A's rows and among the selection's candidates
    diverse: bool = True
    linear_student: bool = True
    export: bool = True
    progress: bool = True
    teacher_fit: FitSettings = field(
        default_factory=lambda: FitSettings(epochs=4, lr=1e-3, weight_decay=1e-2, eval_every=40)
    )
    student_fit: FitSettings = field(default_factory=lambda: FitSettings(epochs=4, eval_every=40))
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(teacher="cached"))
    pooled: PooledSettings = field(default_factory=PooledSettings)
    cross_asset: CrossAssetSettings = field(default_factory=CrossAssetSettings)
    cross_timeframe: CrossTimeframeSettings = field(default_factory=CrossTimeframeSettings)
    cross_domain: CrossDomainSettings = field(default_factory=CrossDomainSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    locked: LockedSettings = field(default_factory=LockedSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict for the report and the model card."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return out


SECTIONS: dict[str, type] = {
    "teacher": FitSettings,
    "student": FitSettings,
    "distill": DistillConfig,
    "pooled": PooledSettings,
    "cross_asset": CrossAssetSettings,
    "cross_timeframe": CrossTimeframeSettings,
    "cross_domain": CrossDomainSettings,
    "select": SelectSettings,
    "locked": LockedSettings,
}
FIELD_OF = {"teacher": "teacher_fit", "student": "student_fit"}


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build(cls: type, raw: dict[str, Any], base: Any) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} for {cls.__name__}; known {sorted(known)}"
        )
    return replace(base, **{k: _tuples(v) for k, v in raw.items()})


def load_report_config(path: str | Path | None, quick: bool = False) -> ReportConfig:
    """Read configs/report.toml ([report] plus one table per section of SECTIONS)."""
    cfg = ReportConfig()
    if path is not None:
        raw = tomllib.loads(Path(path).read_text())
        unknown = set(raw) - {"report", *SECTIONS}
        if unknown:
            raise ValueError(f"unknown section(s) {sorted(unknown)} in {path}")
        cfg = _build(ReportConfig, raw.get("report", {}), cfg)
        for sec, cls in SECTIONS.items():
            attr = FIELD_OF.get(sec, sec)
            cfg = replace(cfg, **{attr: _build(cls, raw.get(sec, {}), getattr(cfg, attr))})
    validate(cfg)
    return quick_config(cfg) if quick else cfg


def validate(cfg: ReportConfig) -> None:
    """Reject settings the run cannot honour, before any training starts."""
    for where, methods in (
        ("pooled", cfg.pooled.methods),
        ("cross_asset", cfg.cross_asset.methods),
        ("cross_timeframe", cfg.cross_timeframe.methods),
        ("cross_domain", cfg.cross_domain.methods),
    ):
        bad = set(methods) - set(ALL_METHODS)
        if bad:
            raise ValueError(f"{where}.methods: unknown {sorted(bad)}; use {ALL_METHODS}")
    if cfg.select.method not in ("scratch", *ALL_METHODS):
        raise ValueError("select.method must be 'scratch' or a distillation method")
    if cfg.select.head not in ("direction", "volatility"):
        raise ValueError("select.head must be 'direction' or 'volatility'")
    if not cfg.select.sizes or any(not s for s in cfg.select.sizes):
        raise ValueError("select.sizes needs at least one non-empty channel list")
    if cfg.feature_member >= len(cfg.members):
        raise ValueError("report.feature_member must index report.members")
    if not 0.0 < cfg.cross_asset.fraction <= 1.0:
        raise ValueError("cross_asset.fraction must lie in (0, 1]")


def quick_config(cfg: ReportConfig) -> ReportConfig:
    """A smoke test of a few minutes: short slices, one epoch of a few batches, 1–2 seeds."""
    tiny = FitSettings(epochs=1, batch_size=64, max_batches=4, patience=1, eval_every=0)
    return replace(
        cfg,
        seeds=cfg.seeds[:1],
        members=cfg.members[:2],
        feature_member=0,
        bootstrap=50,
        cka_rows=64,
        teacher_fit=tiny,
        student_fit=tiny,
        distill=replace(cfg.distill, hint_epochs=0, two_stage=False),
        pooled=replace(cfg.pooled, last_bars=2500, train_stride=1),
        cross_asset=replace(
            cfg.cross_asset, seeds=cfg.cross_asset.seeds[:1], last_bars=2500, min_steps=0
        ),
        cross_timeframe=replace(
            cfg.cross_timeframe,
            symbols=cfg.cross_timeframe.symbols[:1],
            seeds=cfg.cross_timeframe.seeds[:1],
            members=cfg.cross_timeframe.members[:1],
            last_bars=2500,
        ),
        cross_domain=replace(cfg.cross_domain, seeds=cfg.cross_domain.seeds[:1], min_steps=0),
    )
