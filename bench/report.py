"""Results of a benchmark section and the BENCHMARKS.md writer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.timing import Summary


@dataclass(frozen=True)
class Target:
    """One gate of issue 8: what was asked, what was measured, and whether it holds."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured in this run
    note: str = ""

    @property
    def verdict(self) -> str:
        """met / MISSED / not measured."""
        return {True: "met", False: "**MISSED**", None: "not measured"}[self.met]


@dataclass
class Section:
    """A titled block of tables and notes, plus the targets it decides."""

    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *lines: str) -> None:
        """Append markdown lines."""
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Append a markdown table (floats printed with a sensible precision)."""
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "---|" * len(header))
        for row in rows:
            self.lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
        self.lines.append("")


def fmt(value: object) -> str:
    """Numbers to short text: 3 significant digits below 100, integers above."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def latency_rows(
    summaries: Sequence[Summary], ref: Summary | None, labels: dict[str, str]
) -> list[list[object]]:
    """Rows name | runs | p50 | p90 | p99 | p99.9 | p50 ratio to ``ref`` (µs)."""
    rows: list[list[object]] = []
    for s in summaries:
        ratio = f"{s.p50 / ref.p50:.2f}×" if ref is not None and ref.p50 > 0 else ""
        rows.append([labels.get(s.name, s.name), s.runs, s.p50, s.p90, s.p99, s.p999, ratio])
    return rows


LATENCY_HEADER = ("configuration", "runs", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "p50 ratio")


def write_markdown(
    path: Path, header: Sequence[str], sections: Sequence[Section], preamble: Sequence[str]
) -> None:
    """Write BENCHMARKS.md: header, target summary, then every section."""
    out = list(header)
    out += ["", "## Targets", ""]
    out.append("| section | target | goal | measured | verdict | why / note |")
    out.append("|---|---|---|---|---|---|")
    for sec in sections:
        for t in sec.targets:
            out.append(
                f"| {sec.title} | {t.name} | {t.goal} | {t.measured} | {t.verdict} | {t.note} |"
            )
    out.append("")
    out += list(preamble)
    for sec in sections:
        out += ["", f"## {sec.title}", "", f"_section wall time {sec.seconds:.0f} s_", ""]
        out += sec.lines
    path.write_text("\n".join(out).rstrip() + "\n")
