"""Settings of `python -m training report` (configs/report.toml), with a --quick variant.

Budget: `make train` must finish well inside an hour on 2 shared CPU cores, so the default
is 3 walk-forward folds × 3 seeds with short, early-stopped runs; `quick` shrinks
everything to a smoke test (a few hundred bars, one epoch, a handful of batches).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from training.config import DistillConfig
from training.experiment import FitSettings

ALL_METHODS = ("kd", "fitnet", "attention", "activation", "gram", "crd", "combined")


@dataclass(frozen=True)
class TransferSettings:
    """Which transfer experiments run and how much target data they get."""

    enabled: bool = True
    cross_timeframe: bool = True
    cross_asset: bool = True
    cross_domain: bool = True
    target_symbol: str = "SOLUSDT"
    reduced_fraction: float = 0.2  # share of the target's training period kept (the latest)
    teacher_stride: int = 2  # 1-minute teacher trains on every k-th window (budget)
    keep_fraction: float = 0.5  # cross-domain: share of teacher channels matched
    seeds: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class ReportConfig:
    """Everything the report run needs; written into the report and the model card."""

    name: str = "default"
    out_dir: str = "reports"
    models_dir: str = "models"
    symbol: str = "BTCUSDT"
    interval: str = "5"
    family: str = "tcn"
    last_bars: int = 0  # 0 = all bundled bars
    folds: int = 3
    test_fraction: float = 0.15
    val_fraction: float = 0.15
    embargo: int = 32  # bars: one input window
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ALL_METHODS
    export_method: str = "combined"
    export_name: str = "student_pooled_5m"
    export: bool = True
    threads: int = 2
    cka_rows: int = 1000
    bootstrap: int = 500
    backtest_band: float = 0.02  # flat inside 0.5 ± band in the second backtest
    teacher_fit: FitSettings = field(
        default_factory=lambda: FitSettings(epochs=6, lr=1e-3, weight_decay=1e-2, patience=1)
    )
    student_fit: FitSettings = field(default_factory=lambda: FitSettings(epochs=8, patience=2))
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(teacher="cached"))
    transfer: TransferSettings = field(default_factory=TransferSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict for the report and the model card."""
        import dataclasses
        import json

        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return out


def _build(cls: type, raw: dict[str, Any], base: Any) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} for {cls.__name__}; known {sorted(known)}"
        )
    vals = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    if "pairs" in vals:
        vals["pairs"] = tuple(tuple(p) for p in vals["pairs"])
    return replace(base, **vals)


def load_report_config(path: str | Path | None, quick: bool = False) -> ReportConfig:
    """Read configs/report.toml ([report], [teacher], [student], [distill], [transfer])."""
    cfg = ReportConfig()
    if path is not None:
        raw = tomllib.loads(Path(path).read_text())
        cfg = _build(ReportConfig, raw.get("report", {}), cfg)
        cfg = replace(
            cfg,
            teacher_fit=_build(FitSettings, raw.get("teacher", {}), cfg.teacher_fit),
            student_fit=_build(FitSettings, raw.get("student", {}), cfg.student_fit),
            distill=_build(DistillConfig, raw.get("distill", {}), cfg.distill),
            transfer=_build(TransferSettings, raw.get("transfer", {}), cfg.transfer),
        )
    bad = set(cfg.methods) - set(ALL_METHODS)
    if bad:
        raise ValueError(f"unknown method(s) {sorted(bad)}; use {ALL_METHODS}")
    if cfg.export_method not in (*cfg.methods, "scratch"):
        raise ValueError("report.export_method must be 'scratch' or one of report.methods")
    if cfg.folds < 3 and not quick:
        raise ValueError("the report needs at least 3 walk-forward folds")
    return quick_config(cfg) if quick else cfg


def quick_config(cfg: ReportConfig) -> ReportConfig:
    """A smoke-test version: tiny data slice, one epoch, few batches, 2 seeds."""
    tiny = FitSettings(epochs=1, batch_size=64, max_batches=3, patience=1)
    return replace(
        cfg,
        last_bars=min(cfg.last_bars or 1800, 1800),
        seeds=cfg.seeds[:2],
        teacher_seeds=cfg.teacher_seeds[:1],
        cka_rows=64,
        bootstrap=50,
        threads=1,
        teacher_fit=tiny,
        student_fit=tiny,
        distill=replace(cfg.distill, hint_epochs=0, two_stage=False),
        transfer=replace(cfg.transfer, seeds=cfg.transfer.seeds[:1], teacher_stride=8),
    )
