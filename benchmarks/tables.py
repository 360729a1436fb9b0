"""What the benchmark scripts share: Markdown tables, the machine's CPU name, the timing clock."""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # raw measurements kept for later checks

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + [f"- {n}" for n in self.notes] if self.notes else []))


def cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def add_clock_options(parser: argparse.ArgumentParser, clock_help: str, threads_help: str) -> None:
    """``--clock wall|cpu`` and ``--threads N``: process CPU time with one thread keeps ratios
    meaningful on a machine busy with other work."""
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help=clock_help)
    parser.add_argument("--threads", type=int, default=None, help=threads_help)


def chosen_clock(args: argparse.Namespace) -> Callable[[], float]:
    return time.process_time if args.clock == "cpu" else time.perf_counter
