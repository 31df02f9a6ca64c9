"""The locked evaluation's pure parts: verdicts, comparison rows, the report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.report.locked import (
    BEGIN,
    END,
    answer_line,
    compare,
    put_section,
    render,
    verdict,
)
from training.scoring.stats import DAY_MS


def test_verdict_reads_the_interval() -> None:
    assert verdict(0.001, 0.004) == "beats"
    assert verdict(-0.004, -0.001) == "loses"
    assert verdict(-0.001, 0.002) == "ties"


def _locked() -> dict:
    rng = np.random.default_rng(0)
    n = 3000
    y = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], axis=1)
    times = (np.arange(n) // 100) * DAY_MS
    good = {h: y[:, i] + rng.normal(0, 1.0, n) for i, h in enumerate(("direction", "volatility"))}
    weak = {h: y[:, i] + rng.normal(0, 3.0, n) for i, h in enumerate(("direction", "volatility"))}
    rows = compare("test bars", y, times, good, weak, 200, 0.002)
    rows += compare("XRPUSDT", y, times, weak, good, 200, 0.002)
    from dataclasses import asdict

    return {
        "sha256": "ab" * 32,
        "margin": 0.002,
        "method": "m",
        "linear": {"params": 770, "C": {"volatility": 0.01, "direction": 0.0001}},
        "rows": [asdict(r) for r in rows],
    }


def test_compare_rows_and_render() -> None:
    locked = _locked()
    vol = [r for r in locked["rows"] if r["head"] == "volatility"]
    assert [r["where"] for r in vol] == ["test bars", "XRPUSDT"]
    assert vol[0]["verdict"] == "beats" and vol[0]["target_met"]
    assert vol[1]["verdict"] == "loses" and not vol[1]["target_met"]
    assert vol[0]["days"] == 30
    lo, d, hi = vol[0]["diff"][1], vol[0]["diff"][0], vol[0]["diff"][2]
    assert lo < d < hi
    md = render(locked)
    assert md.startswith(BEGIN) and md.rstrip().endswith(END)
    assert "XRPUSDT loses the linear baseline" in md and "met on 0 of 1 alts" in md
    line = answer_line(locked)
    assert line.startswith("- **Locked evaluation") and "On the test bars" in line


def test_put_section_inserts_once_and_replaces(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    report.write_text(
        "# r\n\n## Answers\n\n- a\n- b\n\n## Method\n\nm\n\n## The committed student\n\nc\n"
    )
    put_section(report, f"{BEGIN}\nold\n{END}\n", "- **Locked evaluation old")
    put_section(report, f"{BEGIN}\nnew\n{END}\n", "- **Locked evaluation new")
    text = report.read_text()
    assert text.count(BEGIN) == 1 and "\nnew\n" in text and "\nold\n" not in text
    assert text.startswith("# r")
    assert "- b\n- **Locked evaluation new\n\n## Method" in text
    assert "Locked evaluation old" not in text
    assert text.index(END) < text.index("## The committed student")
