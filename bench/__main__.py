"""``python -m bench [--quick] [--only a,b] [--out FILE]``: run the benchmarks, write markdown."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench.env import header_lines
from bench.report import Section, Target, write_markdown

# name -> module with run(quick: bool) -> Section; in run order
SECTIONS = {
    "inference": "bench.inference",
    "features": "bench.feature_updates",
    "e2e": "bench.end_to_end",
    "http": "bench.http_load",
    "training": "bench.training_time",
    "profile": "bench.profile_path",
    "scale": "bench.scale",
    "shadow": "bench.shadow_cost",  # a challenger in shadow (issue 31)
}
QUICK_SKIPS = ("training",)
ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny run counts; skips training")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections; a failing section is reported, the others still run."""
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    if args.quick and not args.only:
        names = [n for n in names if n not in QUICK_SKIPS]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    command = "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    header = header_lines(command.strip())
    sections: list[Section] = []
    failed = 0
    t_all = time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            sec: Section = importlib.import_module(SECTIONS[name]).run(quick=args.quick)
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            sec = Section(f"{name} (FAILED)")
            sec.add(f"This section raised `{type(exc).__name__}: {exc}`; no figures.")
            sec.targets.append(Target(name, "run", "error", None, str(exc)[:120]))
        sec.seconds = time.perf_counter() - t0
        print(f"[bench] {name} done in {sec.seconds:.0f} s", flush=True)
        sections.append(sec)
    total = time.perf_counter() - t_all
    header.append(f"- total wall time: {total:.0f} s" + (" (quick mode)" if args.quick else ""))
    write_markdown(args.out, header, sections, _preamble(args.quick))
    print(f"[bench] wrote {args.out} ({total:.0f} s)")
    return 1 if failed else 0


def _preamble(quick: bool) -> list[str]:
    lines = [
        "Absolute times on this shared 2-core machine drift by ±30 % between runs (other "
        "processes run beside the benchmark); every comparison is therefore measured "
        "side by side in one run and the gates are ratios. Regenerate with `make bench`.",
    ]
    if quick:
        lines.append("**Quick mode: tiny run counts, figures are indicative only.**")
    return lines


if __name__ == "__main__":
    sys.exit(main())
