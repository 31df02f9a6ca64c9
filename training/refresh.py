"""``python -m training refresh``: re-distil the student on new data and hand it over as a
challenger (DESIGN section 12).

Reads top to bottom: the committed config (``configs/report.toml``; ``--quick`` its smoke
variant) → data: the bundled 5-minute files of the pooled symbols, each extended by the
klines the service journaled (``--state-dir``: ``signals.sqlite3``; a bar already bundled is
kept as bundled), keeping the symbols whose data reach the newest bar → one calendar fold
whose test block is the newest bars (``test_fraction`` of the period, purge + embargo before
it), never trained on → the committed recipe: the ensemble teacher's members, then the
champion's student architecture distilled from their targets with the selection's method,
strides and schedule (``training.experiments``'s own functions) → export (ONNX + card,
version ``refresh-<UTC time>``) → paired evaluation against the champion on the test block:
per head, log loss and AUC of both, the difference challenger − champion with a day-block
bootstrap interval (``training.scoring.stats``) → registered in the model registry
(``service.model.registry``, ``--models-dir``) → with ``--url``, ``POST /admin/challenger``
on the running service (token: ``--token`` or ``APPRENTICE_ADMIN_TOKEN``), which scores it
in shadow; promotion is the service's decision on live evidence, not this command's.

The teacher stays here: only the student's ONNX file and card leave this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service import features as fx
from service.market.kline_io import load_klines
from service.market.klines import KlineTable, interval_ms
from service.model.card import HEAD_OUTPUTS, HEADS, ModelCard, NetworkSpec
from service.model.registry import Registry, Version

DAY_MS = 86_400_000
DEFAULT_CHAMPION = Path("models/student_pooled_5m.onnx")


# ---------------------------------------------------------------------- data (pure)
def merge_tables(bundled: KlineTable, extra: KlineTable | None) -> tuple[KlineTable, int]:
    """``bundled`` extended by the rows of ``extra`` whose start it lacks, sorted by start;
    returns the table and how many rows ``extra`` added."""
    if extra is None or len(extra) == 0:
        return bundled, 0
    new = ~np.isin(extra.start, bundled.start)
    cols = ("start", "open", "high", "low", "close", "volume", "turnover")
    merged = {c: np.concatenate([getattr(bundled, c), getattr(extra, c)[new]]) for c in cols}
    order = np.argsort(merged["start"], kind="stable")
    table = KlineTable(bundled.symbol, bundled.interval, *(merged[c][order] for c in cols))
    return table, int(new.sum())


def reaching(tables: Sequence[KlineTable], tolerance_ms: int = DAY_MS) -> list[KlineTable]:
    """The tables whose last bar is within ``tolerance_ms`` of the newest bar of all: a
    pooled fold keeps equal windows per symbol, so a symbol without the newest bars would
    empty the test block."""
    newest = max(int(t.start[-1]) for t in tables)
    return [t for t in tables if int(t.start[-1]) >= newest - tolerance_ms]


# ---------------------------------------------------------------------- evaluation
def onnx_heads(path: Path, x: NDArray[np.float32]) -> dict[str, NDArray[np.float64]]:
    """Both heads' probabilities of an exported student on windows (M, F, T)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [HEAD_OUTPUTS[h] for h in HEADS]
    name_in = sess.get_inputs()[0].name
    outs = sess.run(names, {name_in: np.ascontiguousarray(x, np.float32)})
    return {h: np.asarray(o, np.float64).reshape(-1) for h, o in zip(HEADS, outs, strict=True)}


@dataclass(frozen=True)
class HeadComparison:
    """One head on the test block: both models' figures and the paired difference."""

    head: str
    champion_log_loss: float
    challenger_log_loss: float
    champion_auc: float
    challenger_auc: float
    diff: float  # challenger − champion log loss, nats
    ci_low: float
    ci_high: float
    p_value: float
    days: int


def compare(
    y: NDArray[np.int64],
    champion: dict[str, NDArray[np.float64]],
    challenger: dict[str, NDArray[np.float64]],
    start_ms: NDArray[np.int64],
    n_boot: int,
) -> list[HeadComparison]:
    """Per head, challenger vs champion on the same rows, day-block bootstrap (paired)."""
    from training.scoring.metrics import log_loss, roc_auc
    from training.scoring.stats import block_bootstrap, day_blocks

    blocks = day_blocks(start_ms)
    out = []
    for i, head in enumerate(HEADS):
        yh = y[:, i]
        b = block_bootstrap(yh, challenger[head], champion[head], blocks, "log_loss", n_boot)
        out.append(
            HeadComparison(
                head,
                log_loss(yh, champion[head]),
                log_loss(yh, challenger[head]),
                roc_auc(yh, champion[head]),
                roc_auc(yh, challenger[head]),
                b.diff,
                b.ci_low,
                b.ci_high,
                b.p_value,
                b.n_blocks,
            )
        )
    return out


def comparison_table(rows: Sequence[HeadComparison], n: int, span: str, in_sample: bool) -> str:
    """The paired evaluation as printed (markdown)."""
    lines = [
        f"paired evaluation on the newest {n} windows ({span}), not trained on"
        + ("; the champion trained on some of them (in-sample for it)" if in_sample else ""),
        "| head | champion log loss | challenger log loss | diff (chall − champ) | 95 % CI "
        "(day blocks) | p | champion AUC | challenger AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.head} | {r.champion_log_loss:.4f} | {r.challenger_log_loss:.4f} | "
            f"{r.diff:+.4f} | [{r.ci_low:+.4f}, {r.ci_high:+.4f}] ({r.days} d) | "
            f"{r.p_value:.3f} | {r.champion_auc:.4f} | {r.challenger_auc:.4f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the service
def hand_over(url: str, token: str, path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """``POST {url}/admin/challenger {"path"}``; returns the service's answer."""
    req = urllib.request.Request(
        url.rstrip("/") + "/admin/challenger",
        data=json.dumps({"path": str(path)}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise RuntimeError(f"the service refused the challenger ({exc.code}): {detail}") from None


# ---------------------------------------------------------------------- the run
@dataclass
class RefreshResult:
    version: Version
    comparison: list[HeadComparison]
    table: str
    seconds: float
    handed_over: dict[str, Any] | None


def journal_klines(state_dir: Path | None, interval: str) -> dict[str, KlineTable]:
    """The service's journaled klines per symbol ({} without a journal)."""
    if state_dir is None:
        return {}
    from training.data.journal import journal_tables

    try:
        return {t.symbol: t for t in journal_tables(state_dir, interval=interval)}
    except FileNotFoundError:
        return {}


def current_champion(models_dir: Path, state_dir: Path | None) -> Path:
    """The service's champion as its state directory records it, else the committed one."""
    if state_dir is not None:
        try:
            champ = Registry(models_dir, state_dir).load_roles().champion
        except ValueError:
            champ = None
        if champ is not None and Path(champ.path).is_file():
            return Path(champ.path)
    return DEFAULT_CHAMPION


def refresh(args: argparse.Namespace) -> RefreshResult:
    """The whole run (see the module docstring)."""
    import torch

    from training.data.series import bundled_file, calendar_folds, pooled_fold, series_from_table
    from training.experiments.common import Env, teacher_targets, train_members, with_fits
    from training.experiments.config import load_report_config
    from training.experiments.harness import fit
    from training.export import export_student, teacher_network_spec
    from training.nets.ensemble import Ensemble
    from training.nets.networks import NetSpec, count_parameters
    from training.progress import Progress
    from training.report.export import feature_reference

    t0 = time.perf_counter()
    cfg = load_report_config(args.config if args.config.exists() else None, quick=args.quick)
    torch.set_num_threads(max(1, cfg.threads))
    args.champion = args.champion or current_champion(args.models_dir, args.state_dir)
    champion_card = ModelCard.load(args.champion.with_suffix(".json"))
    spec = NetSpec.from_dict(champion_card.student.arch or {})
    out_dir = Path(args.out) / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    total = len(cfg.members) + 1
    with Progress(total, out_dir / "run.log", not args.no_progress) as prog:
        env = Env.make(cfg, prog)
        if cfg.select.whole_schedule:  # the selection's schedule: no early stop
            env = with_fits(env, patience=0)
            cfg = env.cfg
        journaled = journal_klines(args.state_dir, cfg.interval)
        tables = []
        for sym in cfg.pooled.symbols:
            bundled = load_klines(bundled_file(sym, cfg.interval), drop_last_unconfirmed=True)
            table, added = merge_tables(bundled, journaled.get(sym))
            prog.log(f"{sym}: {len(bundled)} bundled bars + {added} journaled")
            tables.append(table)
        kept = reaching(tables)
        if len(kept) < len(tables):
            dropped = sorted({t.symbol for t in tables} - {t.symbol for t in kept})
            prog.log(f"dropped (no bars near the newest): {', '.join(dropped)}")
        if cfg.pooled.last_bars:
            kept = [t.slice(max(0, len(t) - cfg.pooled.last_bars), None) for t in kept]
        series = [series_from_table(t) for t in kept]
        pc, sel = cfg.pooled, cfg.select
        cf = calendar_folds(
            series[0].times,
            interval_ms(cfg.interval),
            1,
            cfg.embargo,
            pc.test_fraction,
            pc.val_fraction,
        )[-1]
        data = pooled_fold(
            series,
            cf,
            sel.train_stride or pc.train_stride,
            val_stride=sel.val_stride or pc.val_stride,
        )
        prog.log(
            f"fold: train {len(data.train)} val {len(data.val)} test {len(data.test)} windows "
            f"over {', '.join(t.symbol for t in kept)}"
        )
        members = train_members(env, data, "refresh", cfg.members)
        targets = teacher_targets(env, members, data.train.x)
        res = fit(
            spec,
            data,
            replace(cfg.distill, method=sel.method),
            cfg.student_fit,
            cfg.seeds[0],
            targets,
        )
        prog.step(f"refresh student {list(spec.channels)}", res.seconds)
        teacher = Ensemble(
            members,
            feature_member=min(cfg.feature_member, len(members) - 1),
            seeds=cfg.members,
            info={"trained_on": [t.symbol for t in kept], "by": "python -m training refresh"},
        )
        test = data.test
        version = "refresh-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        onnx_path = out_dir / f"{champion_card.name}.onnx"
        rng = np.random.default_rng(0)
        parity_x = test.x[np.sort(rng.choice(len(test), size=min(64, len(test)), replace=False))]
        span = {
            "symbols": [t.symbol for t in kept],
            "interval": cfg.interval,
            "train_first_ms": int(data.train.start_ms.min()),
            "train_last_ms": int(data.train.start_ms.max()),
            "val_first_ms": int(data.val.start_ms.min()),
            "val_last_ms": int(data.val.start_ms.max()),
            "test_first_ms": int(test.start_ms.min()),
            "test_last_ms": int(test.start_ms.max()),
            "test_windows": len(test),
        }
        card, _ = export_student(
            res.net,
            onnx_path,
            parity_x,
            {
                "name": champion_card.name,
                "version": version,
                "symbols": [t.symbol for t in kept],
                "interval": cfg.interval,
                "window": fx.WINDOW,
                "teacher": teacher_network_spec(teacher),
                "student": NetworkSpec(
                    family=spec.family, arch=spec.to_dict(), params=count_parameters(res.net)
                ),
                "distillation": {
                    "method": sel.method,
                    "seed": cfg.seeds[0],
                    "by": "python -m training refresh" + (" --quick" if args.quick else ""),
                    "refreshed_from": {
                        "name": champion_card.name,
                        "version": champion_card.version,
                    },
                    "config": cfg.distill.__dict__ | {"method": sel.method},
                    "fit": cfg.student_fit.__dict__,
                },
                "metrics": {},
                "data_span": span,
                "feature_reference": feature_reference(data.train),
            },
        )
        challenger = onnx_heads(onnx_path, test.x)
        champion = onnx_heads(args.champion, test.x)
        rows = compare(test.y, champion, challenger, test.start_ms, cfg.bootstrap)
        champ_last = int(champion_card.data_span.get("val_last_ms", 0) or 0)
        first, last = int(test.start_ms.min()), int(test.start_ms.max())
        when = f"{_day(first)} .. {_day(last)}, {len(np.unique(test.start_ms // DAY_MS))} days"
        printed = comparison_table(rows, len(test), when, in_sample=first <= champ_last)
        card.metrics["refresh_vs_champion"] = [r.__dict__ for r in rows]
        card.save(onnx_path.with_suffix(".json"))  # the sha256 is the ONNX file's, unchanged
        for line in printed.splitlines():
            prog.log(line)
        registered = Registry(args.models_dir, args.state_dir or out_dir).register(onnx_path)
        prog.log(f"registered {registered.label} at {registered.path}")
        handed = None
        if args.url:
            token = args.token or os.environ.get("APPRENTICE_ADMIN_TOKEN", "")
            handed = hand_over(args.url, token, Path(registered.path))
            prog.log(f"handed to {args.url} as challenger: {registered.label}")
    return RefreshResult(registered, rows, printed, time.perf_counter() - t0, handed)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see ``--help``)."""
    ap = argparse.ArgumentParser(
        prog="python -m training refresh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--state-dir", type=Path, help="the service's APPRENTICE_STATE_DIR")
    ap.add_argument("--url", help="the running service, e.g. http://127.0.0.1:8000")
    ap.add_argument("--token", help="admin token (default: $APPRENTICE_ADMIN_TOKEN)")
    ap.add_argument("--quick", action="store_true", help="smoke test: short slices, tiny fits")
    ap.add_argument("--config", type=Path, default=Path("configs/report.toml"))
    ap.add_argument(
        "--champion",
        type=Path,
        help="the champion's ONNX file (default: the one STATE_DIR/models.json records, "
        "else models/student_pooled_5m.onnx)",
    )
    ap.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="the registry folder (the service's APPRENTICE_MODEL_DIR)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/refresh"), help="work directory")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log only)")
    args = ap.parse_args(argv)
    try:
        result = refresh(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table)
    print(f"registered {result.version.label}: {result.version.path}")
    if result.handed_over is not None:
        print(f"challenger on {args.url}: {result.version.label}")
    print(f"wall time {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
