"""Shared benchmark helpers: a registry of speed ratios printed as one table at the end of the run.

Any suite records a row with ``ratio_table.record(group, name, baseline, mean)`` (seconds per
operation of the baseline and of the measured code, same run) or, from a pytest-benchmark
fixture, ``ratio_table.record_benchmark(group, name, benchmark, baseline_name)``; the session
prints every group with ``baseline / this`` ratios.  No thresholds: ratios are reported, not
asserted (the machine is shared and noisy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class RatioTable:
    """Rows ``(group, name, baseline seconds, measured seconds)`` in recording order."""

    rows: list[tuple[str, str, float, float]] = field(default_factory=list)
    timings: dict[tuple[str, str], float] = field(default_factory=dict)

    def record(self, group: str, name: str, baseline: float, mean: float) -> None:
        self.rows.append((group, name, baseline, mean))

    def record_benchmark(
        self, group: str, name: str, benchmark: Any, baseline_name: str, stat: str = "min"
    ) -> None:
        """Remember ``benchmark``'s ``stat`` (``min`` by default: on a shared machine load only
        ever adds time, so the minimum is the steadiest estimate); add a row once
        ``baseline_name`` of ``group`` is known."""
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was measured
            return
        value = getattr(stats.stats, stat)
        self.timings[(group, name)] = value
        base = self.timings.get((group, baseline_name))
        if base is not None and name != baseline_name:
            self.record(group, name, base, value)

    def lines(self) -> list[str]:
        out: list[str] = []
        last = None
        for group, name, base, mean in self.rows:
            if group != last:
                out.append(f"{group}")
                last = group
            ratio = base / mean if mean else float("inf")
            out.append(f"    {name:34s} {mean * 1e6:10.2f} us  baseline {base * 1e6:10.2f} us  {ratio:7.1f}x")
        return out


RATIOS = RatioTable()


@pytest.fixture(scope="session")
def ratio_table() -> RatioTable:
    return RATIOS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RATIOS.rows:
        terminalreporter.write_sep("=", "speed ratios (ratio = baseline / this, same run)")
        for line in RATIOS.lines():
            terminalreporter.write_line(line)
