"""``python -m training <command>``: the offline pipeline's entry point.

Commands: ``teacher`` and ``distill`` (this package's loop), ``sweep`` (several experiment
files in a row, then a table), and ``fetch``, ``evaluate``, ``backtest``, ``policy``, ``report``,
``export`` (their modules are imported only when called, so ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the train extra's modules (pyproject): without them a training command says which make
# target installs them, in one line, instead of a traceback (issue 28)
TRAIN_EXTRA = frozenset({"torch", "onnx", "onnxscript", "matplotlib", "tqdm", "backtesting"})
DELEGATED = {
    "fetch": ("training.data.fetch", "download Bybit klines into data/ (REST, paginated)"),
    "evaluate": (
        "training.scoring.evaluate",
        "score an exported student with onnxruntime on held-out bars",
    ),
    "backtest": (
        "training.scoring.backtest_cli",
        "a period through the served path (features, ONNX, policy, paper account), every "
        "policy beside buy and hold and flat",
    ),
    "policy": (
        "training.scoring.choose_policy",
        "choose the default trading policy on validation bars (configs/policy.toml) and "
        "record it in the model card",
    ),
    "report": ("training.report.study", "the evaluation report (tables + figures)"),
    "export": ("training.export", "export a student checkpoint to ONNX + model card"),
    "journal": (
        "training.data.journal",
        "export the service's journaled klines (STATE_DIR/signals.sqlite3) as kline CSVs",
    ),
    "refresh": (
        "training.refresh",
        "re-distil on bundled + journaled klines, compare with the champion, hand it over",
    ),
    "audit": (
        "training.scoring.audit",
        "re-score the journaled live signals with the offline teacher ensemble",
    ),
}


def _add_train_args(p: argparse.ArgumentParser, *, teacher: bool) -> None:
    p.add_argument("--config", required=True, type=Path, help="experiment TOML (configs/...)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--out", help="output directory (overrides run.out_dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if teacher:
        p.add_argument("--teacher", help="teacher checkpoint (overrides distill.teacher)")


def build_parser() -> argparse.ArgumentParser:
    """The CLI; delegated commands pass their remaining arguments through."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Apprentice offline pipeline: train a teacher, distill a student, "
        "evaluate, report, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_args(sub.add_parser("teacher", help="train a teacher network"), teacher=False)
    _add_train_args(
        sub.add_parser("distill", help="distil a student from a teacher (or train from scratch)"),
        teacher=True,
    )
    sweep = sub.add_parser("sweep", help="run several distill configs and print a table")
    sweep.add_argument("configs", nargs="+", type=Path, help="experiment TOML files")
    sweep.add_argument("--set", dest="overrides", action="append", default=[])
    sweep.add_argument("--teacher", help="teacher checkpoint for every run")
    sweep.add_argument("--out", help="output directory")
    sweep.add_argument("--no-progress", action="store_true")
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _config(path: Path, args: argparse.Namespace) -> Any:
    from training.config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    if getattr(args, "teacher", None):
        overrides["distill.teacher"] = args.teacher
    if args.out:
        overrides["run.out_dir"] = args.out
    if args.no_progress:
        overrides["train.progress"] = False
    return load_config(path, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA:
            raise
        print(
            f"python -m training {argv[0] if argv else ''}: needs {exc.name} (the train extra), "
            "which make demo does not install: run `make test` once (torch CPU and the dev "
            "tools), or `make train` for the whole study",
            file=sys.stderr,
        )
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)

    from training.config import ConfigError
    from training.distill import ddp
    from training.distill.train import run

    try:
        if args.command in ("teacher", "distill"):
            cfg = _config(args.config, args)
            result = run(cfg, role="teacher" if args.command == "teacher" else "student")
            print(f"checkpoint: {result.checkpoint}")
            print(_table([(cfg.run.name, cfg.distill.method, result.metrics)]))
        else:
            rows = []
            for path in args.configs:
                cfg = _config(path, args)
                result = run(cfg, role="student")
                rows.append((cfg.run.name, cfg.distill.method, result.metrics))
            print(_table(rows))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ddp.teardown_if_initialized()
    return 0


def _table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """Per run and head: validation and test log loss and accuracy."""
    lines = [
        "| run | method | head | val loss | val acc | test loss | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, method, m in rows:
        for head in ("direction", "volatility"):
            v, t = m["val"][head], m["test"][head]
            lines.append(
                f"| {name} | {method} | {head} | {v['loss']:.4f} | {v['accuracy']:.4f} | "
                f"{t['loss']:.4f} | {t['accuracy']:.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
