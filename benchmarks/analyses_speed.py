"""Analyses over a large ledger: wall seconds, rows/s and peak memory per analysis.

The ledger is a Chain run of random bidders under CCV (about 7 events an auction), made once
with the round kernel into --ledger (reused if it is there). Each analysis runs in a fresh
spawned process so that its peak memory (the process's maximum resident set, minus that of
the same process before the analysis) is its own, --repeat times; the table gives the
medians. CPU seconds (user + system, every thread) are given beside the wall seconds: on a
shared machine the wall time also counts what other processes take from the cores, and the
load average over the run says how much that was. Targets: every analysis at 20M
rows/s or more, and memory well under three times the ledger's size on disk.

    python benchmarks/analyses_speed.py [--events 10000000] [--ledger benchmarks/out/ledger-10m]
                                        [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

EVENTS_PER_AUCTION = 7


def analyses() -> dict[str, Callable[[Any], Any]]:
    """Each analysis of the package, as a function of the ledger's lazy frame."""
    from analyses import auctions, income, inequality, wealth

    return {
        "wealth": wealth.wealth,
        "wealth_over_time": lambda e: wealth.wealth_over_time(e, 200),
        "returns": wealth.returns,
        "inequality": inequality.inequality,
        "income": income.income,
        "prices": auctions.prices,
        "winners": auctions.winners,
        "bids": auctions.bids,
    }


def measure(path: str, name: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak memory added in MiB) of one analysis, in this (fresh)
    process."""
    from ledger.disk import DiskLedger

    events = DiskLedger.open_existing(Path(path)).scan()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    analyses()[name](events)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, cpu_seconds, (peak - before) / 1024


def medians(path: str, repeat: int) -> dict[str, tuple[float, float, float]]:
    """Per analysis, the medians of `measure` over `repeat` runs, each in a fresh spawned
    process; every analysis runs once per round, so a busy spell slows them alike."""
    spawn = multiprocessing.get_context("spawn")
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in analyses()}
    for _ in range(repeat):
        for name, found in runs.items():
            with spawn.Pool(1) as pool:
                found.append(pool.apply(measure, (path, name)))
    return {
        name: (
            statistics.median(r[0] for r in found),
            statistics.median(r[1] for r in found),
            statistics.median(r[2] for r in found),
        )
        for name, found in runs.items()
    }


def make_ledger(path: Path, events: int) -> None:
    """A Chain run of random bidders, `events` events or a few more, into `path`."""
    auctions = events // EVENTS_PER_AUCTION
    subprocess.run(
        [sys.executable, "-m", "cli", "simulate", "--task", "chain", "--bidder", "random",
         "--steps", str(auctions), "--concurrency", "256", "--out", str(path)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--ledger", type=Path, default=Path("benchmarks/out/ledger-10m"))
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs per analysis")
    args = parser.parse_args()
    if not (args.ledger / "ledger").is_dir():
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        make_ledger(args.ledger, args.events)
    from ledger.disk import DiskLedger

    ledger_dir = args.ledger / "ledger"
    rows = DiskLedger.open_existing(ledger_dir).next_seq
    on_disk = sum(p.stat().st_size for p in ledger_dir.iterdir()) / 2**20
    load = os.getloadavg()[0]
    results = medians(str(ledger_dir), args.repeat)
    table = Table(
        title=f"analyses over {rows:,} events ({on_disk:,.0f} MiB on disk), medians of "
        f"{args.repeat} fresh processes each; load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores "
        "(targets: 20M rows/s, memory well under 3x the size on disk)"
    )
    columns = ("analysis", "seconds", "CPU seconds", "rows/s", "peak memory added (MiB)")
    table.add_column(columns[0], no_wrap=True)
    for col in (*columns[1:], "x size on disk"):
        table.add_column(col, justify="right")
    for name, (seconds, cpu, mib) in results.items():
        table.add_row(
            name,
            f"{seconds:.2f}",
            f"{cpu:.2f}",
            f"{rows / seconds / 1e6:.1f}M",
            f"{mib:,.0f}",
            f"{mib / on_disk:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
